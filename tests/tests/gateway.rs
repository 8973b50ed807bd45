//! The etcd HTTP/JSON gateway (`POST /v3/...` on the client port) driven with the `curl` binary
//! against a three-member cluster: unary calls with their bodies and status codes, error
//! bodies, and the streaming calls (watch, keep-alive) read line by line with deadlines. Every
//! expectation was first observed on etcd 3.4.23 (`RAFTKV_TEST_TARGET=etcd`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use raftkv_tests::{wait_until, Cluster};
use serde_json::{json, Value};

/// How long one curl call, or one streamed line, may take.
const WAIT: Duration = Duration::from_secs(15);

/// Checks once that `curl` is installed; panics with the fix otherwise.
fn ensure_curl() {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let ok = *CHECKED.get_or_init(|| {
        Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        ok,
        "the gateway tests need the `curl` binary; run scripts/setup.sh (it installs curl)"
    );
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a base64 string: {v}"));
    String::from_utf8(B64.decode(s).expect("base64")).expect("utf-8")
}

/// One HTTP reply: its status code and its body (parsed as JSON when it is JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", self.text))
    }

    /// The JSON body without its response header (whose ids differ per cluster).
    fn body(&self) -> Value {
        let mut v = self.json();
        if let Some(o) = v.as_object_mut() {
            o.remove("header");
        }
        v
    }

    fn revision(&self) -> i64 {
        header_revision(&self.json())
    }
}

fn header_revision(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("no header revision in {v}"))
        .parse()
        .expect("revision")
}

/// `curl -X <method>` of `body` to `path` on `endpoint`.
fn request(method: &str, endpoint: &str, path: &str, body: &str) -> Reply {
    ensure_curl();
    let url = format!("{endpoint}{path}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(["-d", body, &url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = String::from_utf8(out.stdout).expect("utf-8 reply");
    let (text, code) = all.rsplit_once('\n').expect("status line");
    Reply {
        status: code.parse().expect("status code"),
        text: text.to_string(),
    }
}

fn post(endpoint: &str, path: &str, body: Value) -> Reply {
    request("POST", endpoint, path, &body.to_string())
}

/// A POST that must succeed (200).
fn ok(endpoint: &str, path: &str, body: Value) -> Reply {
    let r = post(endpoint, path, body);
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r
}

/// etcd's error body for a refused request.
fn error_body(message: &str, code: i64) -> Value {
    json!({"error": message, "message": message, "code": code})
}

/// A streaming call (`curl -N`) whose response lines are read as they arrive.
struct CurlStream {
    child: Child,
    lines: Receiver<String>,
}

impl CurlStream {
    fn start(endpoint: &str, path: &str, body: &str) -> CurlStream {
        ensure_curl();
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-X", "POST", "-d", body])
            .arg(format!("{endpoint}{path}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn curl");
        let stdout = child.stdout.take().expect("curl stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CurlStream { child, lines }
    }

    /// The next streamed message, within [`WAIT`].
    fn next(&self) -> Value {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("streamed line is not JSON ({e}): {line:?}")),
            Err(RecvTimeoutError::Timeout) => panic!("no streamed line within {WAIT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the stream ended"),
        }
    }

    /// The next message's `result`.
    fn result(&self) -> Value {
        let v = self.next();
        assert!(v.get("error").is_none(), "stream error: {v}");
        v["result"].clone()
    }

    /// Waits (within [`WAIT`]) for the response to end, and returns what was left unread.
    fn finish(mut self) -> Vec<String> {
        let status = wait_until("curl to exit", WAIT, || {
            self.child.try_wait().ok().flatten()
        });
        assert!(status.success(), "curl exited with {status}");
        self.lines.iter().collect()
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kv_requests_and_their_errors() {
    let c = Cluster::start(3);
    let (e0, e1) = (c.endpoint(0), c.endpoint(1));

    let put = ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
    );
    assert_eq!(put.body(), json!({}));
    assert_eq!(put.revision(), 2);
    let h = put.json()["header"].clone();
    for field in ["cluster_id", "member_id", "raft_term"] {
        assert!(h[field].is_string(), "header.{field} is a string: {h}");
    }

    // Read on another member, lowerCamelCase input, int64 as a number or a string.
    let foo_v1 = json!({"key": b64("foo"), "create_revision": "2", "mod_revision": "2",
                        "version": "1", "value": b64("bar")});
    let got = ok(&e1, "/v3/kv/range", json!({"key": b64("foo")}));
    assert_eq!(got.body(), json!({"kvs": [foo_v1], "count": "1"}));
    let got = ok(
        &e1,
        "/v3/kv/range",
        json!({"key": b64("foo"), "countOnly": true}),
    );
    assert_eq!(got.body(), json!({"count": "1"}));
    let got = ok(
        &e1,
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": "1"}),
    );
    assert_eq!(got.body(), json!({}));
    let got = ok(
        &e1,
        "/v3beta/kv/range",
        json!({"key": b64("foo"), "limit": 1}),
    );
    assert_eq!(got.body(), json!({"kvs": [foo_v1], "count": "1"}));

    let put = ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("baz"), "prev_kv": true}),
    );
    assert_eq!(put.body(), json!({"prev_kv": foo_v1}));
    assert_eq!(put.revision(), 3);

    // Txn: the success branch, then the failure branch (camelCase op names).
    let txn = |put_as: &str, range_as: &str| {
        json!({
            "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE",
                         "value": b64("baz")}],
            "success": [{put_as: {"key": b64("foo"), "value": b64("qux")}}],
            "failure": [{range_as: {"key": b64("foo")}}],
        })
    };
    let t = ok(&e0, "/v3/kv/txn", txn("request_put", "request_range"));
    assert_eq!(
        t.body(),
        json!({"succeeded": true, "responses": [{"response_put": {"header": {"revision": "4"}}}]})
    );
    let t = ok(&e0, "/v3/kv/txn", txn("requestPut", "requestRange"));
    let foo_v3 = json!({"key": b64("foo"), "create_revision": "2", "mod_revision": "4",
                        "version": "3", "value": b64("qux")});
    assert_eq!(
        t.body(),
        json!({"responses": [{"response_range": {"header": {"revision": "4"},
                                                 "kvs": [foo_v3], "count": "1"}}]})
    );

    let del = ok(
        &e1,
        "/v3/kv/deleterange",
        json!({"key": b64("foo"), "prev_kv": true}),
    );
    assert_eq!(del.body(), json!({"deleted": "1", "prev_kvs": [foo_v3]}));
    assert_eq!(del.revision(), 5);

    // Compaction, then reads below and above the store's range.
    let comp = ok(&e0, "/v3/kv/compaction", json!({"revision": "3"}));
    assert_eq!(comp.body(), json!({}));
    let r = post(
        &e0,
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": "2"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        error_body("etcdserver: mvcc: required revision has been compacted", 11)
    );
    let r = post(
        &e0,
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": 200}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        error_body(
            "etcdserver: mvcc: required revision is a future revision",
            11
        )
    );

    // Refusals: an empty key (also an empty body), bad JSON, bad base64, a bad enum name.
    let r = post(&e0, "/v3/kv/put", json!({"key": "", "value": b64("v")}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), error_body("etcdserver: key is not provided", 3));
    let r = request("POST", &e0, "/v3/kv/range", "");
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), error_body("etcdserver: key is not provided", 3));
    for bad in [
        "{bad json",
        r#"{"key":"not base64!"}"#,
        r#"{"key":"Zm9v","sort_order":"NOPE"}"#,
        r#"{"key":12}"#,
    ] {
        let r = request("POST", &e0, "/v3/kv/range", bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        let v = r.json();
        assert_eq!(v["code"], 3, "{bad}: {v}");
        assert!(
            v["error"].is_string() && v["error"] == v["message"],
            "{bad}: {v}"
        );
    }
    // Unknown fields are ignored, as grpc-gateway ignores them.
    let r = ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("v"), "no_such_field": 1}),
    );
    assert_eq!(r.revision(), 6);

    // Paths and methods the gateway does not serve.
    let r = post(&e0, "/v3/kv/nope", json!({}));
    assert_eq!((r.status, r.text.as_str()), (404, "Not Found\n"));
    let r = request("GET", &e0, "/v3/kv/range", "");
    assert_eq!((r.status, r.text.as_str()), (405, "Method Not Allowed\n"));
}

#[test]
fn leases_over_json() {
    let c = Cluster::start(3);
    let (e0, e2) = (c.endpoint(0), c.endpoint(2));

    let g = ok(&e0, "/v3/lease/grant", json!({"TTL": 60}));
    let id: i64 = g.json()["ID"]
        .as_str()
        .expect("ID is a string")
        .parse()
        .expect("ID");
    assert!(id > 0);
    assert_eq!(g.body(), json!({"ID": id.to_string(), "TTL": "60"}));
    let g = ok(&e2, "/v3/lease/grant", json!({"TTL": "60", "ID": "4242"}));
    assert_eq!(g.body(), json!({"ID": "4242", "TTL": "60"}));
    let r = post(&e0, "/v3/lease/grant", json!({"TTL": 60, "ID": 4242}));
    assert_eq!(r.status, 412);
    assert_eq!(r.json(), error_body("etcdserver: lease already exists", 9));

    ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": "4242"}),
    );
    let r = post(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("v"), "lease": 999}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        error_body("etcdserver: requested lease not found", 5)
    );

    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let t = ok(&e2, path, json!({"ID": 4242, "keys": true})).body();
        assert_eq!(t["ID"], "4242");
        assert_eq!(t["grantedTTL"], "60");
        let ttl: i64 = t["TTL"].as_str().expect("TTL").parse().expect("TTL");
        assert!((1..=60).contains(&ttl), "{t}");
        assert_eq!(t["keys"].as_array().map(|k| k.len()), Some(1), "{t}");
        assert_eq!(unb64(&t["keys"][0]), "leased");
    }
    let t = ok(&e0, "/v3/lease/timetolive", json!({"ID": "99"}));
    assert_eq!(t.body(), json!({"ID": "99", "TTL": "-1"}));

    for path in ["/v3/lease/leases", "/v3/kv/lease/leases"] {
        let l = ok(&e0, path, json!({})).body();
        let mut ids: Vec<String> = l["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .map(|s| s["ID"].as_str().expect("ID").to_string())
            .collect();
        ids.sort();
        let mut want = vec![id.to_string(), "4242".to_string()];
        want.sort();
        assert_eq!(ids, want);
    }

    // Keep-alive: one result line per request, and the response ends with the body.
    let ka = CurlStream::start(&e2, "/v3/lease/keepalive", r#"{"ID":4242}{"ID":"4242"}"#);
    for _ in 0..2 {
        let r = ka.result();
        assert_eq!((&r["ID"], &r["TTL"]), (&json!("4242"), &json!("60")), "{r}");
        assert!(r["header"]["revision"].is_string(), "{r}");
    }
    assert!(ka.finish().is_empty());
    // An unknown lease: TTL 0 (omitted), not an error.
    let ka = CurlStream::start(&e0, "/v3/lease/keepalive", r#"{"ID":777}"#);
    let r = ka.result();
    assert_eq!((&r["ID"], r.get("TTL")), (&json!("777"), None), "{r}");
    assert!(ka.finish().is_empty());

    let r = ok(&e2, "/v3/kv/lease/revoke", json!({"ID": "4242"}));
    assert_eq!(r.body(), json!({}));
    let gone = ok(&e0, "/v3/kv/range", json!({"key": b64("leased")}));
    assert_eq!(gone.body(), json!({}));
    let r = post(&e0, "/v3/lease/revoke", json!({"ID": 4242}));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        error_body("etcdserver: requested lease not found", 5)
    );
    ok(&e0, "/v3/lease/revoke", json!({"ID": id}));
}

#[test]
fn watch_streams_over_json() {
    let c = Cluster::start(3);
    let (e0, e1) = (c.endpoint(0), c.endpoint(1));

    let w = CurlStream::start(
        &e1,
        "/v3/watch",
        &json!({"create_request": {"key": b64("wa"), "range_end": b64("wb"), "prev_kv": true}})
            .to_string(),
    );
    let created = w.result();
    assert_eq!(created["created"], true, "{created}");
    assert!(created.get("watch_id").is_none(), "watch id 0 is omitted");
    assert_eq!(header_revision(&created), 1);

    ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("wa1"), "value": b64("1")}),
    );
    ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("wa1"), "value": b64("2")}),
    );
    ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("other"), "value": b64("x")}),
    );
    ok(&e0, "/v3/kv/deleterange", json!({"key": b64("wa1")}));

    let v1 = json!({"key": b64("wa1"), "create_revision": "2", "mod_revision": "2",
                    "version": "1", "value": b64("1")});
    let v2 = json!({"key": b64("wa1"), "create_revision": "2", "mod_revision": "3",
                    "version": "2", "value": b64("2")});
    let mut events = Vec::new();
    while events.len() < 3 {
        let r = w.result();
        assert!(r.get("created").is_none(), "{r}");
        events.extend(r["events"].as_array().expect("events").iter().cloned());
    }
    assert_eq!(
        events,
        vec![
            json!({"kv": v1}),
            json!({"kv": v2, "prev_kv": v1}),
            json!({"type": "DELETE", "kv": {"key": b64("wa1"), "mod_revision": "5"},
                   "prev_kv": v2}),
        ]
    );

    // Several requests in one body: two watchers and a progress request.
    ok(&e0, "/v3/kv/compaction", json!({"revision": 3}));
    let w2 = CurlStream::start(
        &e0,
        "/v3/watch",
        &format!(
            "{}{}",
            json!({"create_request": {"key": b64("wa"), "start_revision": "2"}}),
            json!({"create_request": {"key": b64("wb"), "watch_id": 7}}),
        ),
    );
    let first = w2.result();
    assert_eq!(first["created"], true, "{first}");
    // The compacted start: created, then canceled with the compact revision.
    let mut rest = [w2.result(), w2.result()];
    rest.sort_by_key(|r| r["watch_id"].as_str().map(str::to_string));
    let (canceled, second) = (rest[0].clone(), rest[1].clone());
    assert_eq!(
        (&canceled["canceled"], &canceled["compact_revision"]),
        (&json!(true), &json!("3")),
        "{canceled}"
    );
    assert_eq!(
        (&second["watch_id"], &second["created"]),
        (&json!("7"), &json!(true)),
        "{second}"
    );
    drop(w2);

    // The stream stays open while the client keeps it: one more event arrives on the first.
    ok(
        &e1,
        "/v3/kv/put",
        json!({"key": b64("wa2"), "value": b64("3")}),
    );
    let r = w.result();
    assert_eq!(unb64(&r["events"][0]["kv"]["key"]), "wa2", "{r}");
}

#[test]
fn cluster_and_maintenance_over_json() {
    let c = Cluster::start(3);
    let e0 = c.endpoint(0);

    let list = ok(&e0, "/v3/cluster/member/list", json!({}));
    let list = list.json();
    let mut names: Vec<&str> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, [c.name(0), c.name(1), c.name(2)]);
    for m in list["members"].as_array().expect("members") {
        let id: u64 = m["ID"].as_str().expect("ID").parse().expect("ID");
        let i = (0..3).find(|&i| c.member_id(i) == id).expect("known id");
        assert_eq!(m["peerURLs"], json!([c.peer_url(i)]), "{m}");
        assert_eq!(m["clientURLs"], json!([c.endpoint(i)]), "{m}");
        assert!(m.get("isLearner").is_none(), "{m}");
    }
    assert_eq!(
        list["header"]["member_id"],
        json!(c.member_id(0).to_string())
    );

    let r = post(&e0, "/v3/cluster/member/remove", json!({"ID": "12345"}));
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), error_body("etcdserver: member not found", 5));

    let leader = c.leader_index();
    let s = ok(&c.endpoint(leader), "/v3/maintenance/status", json!({})).json();
    assert_eq!(s["leader"], json!(c.member_id(leader).to_string()), "{s}");
    for field in ["version", "dbSize", "raftIndex", "raftTerm"] {
        assert!(s[field].is_string(), "status.{field}: {s}");
    }
    ok(
        &e0,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("v")}),
    );
    let h = ok(&e0, "/v3/maintenance/hash", json!({})).json();
    assert!(h["hash"].is_u64(), "{h}");
    let a = ok(&e0, "/v3/maintenance/alarm", json!({})).json();
    assert!(a.get("alarms").is_none(), "{a}");

    let r = post(
        &c.endpoint(leader),
        "/v3/maintenance/transfer-leadership",
        json!({"targetID": "12345"}),
    );
    assert_eq!(r.status, 412);
    assert_eq!(r.json(), error_body("etcdserver: bad leader transferee", 9));
}
