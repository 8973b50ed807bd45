//! The stock `etcdctl` (3.4) against a three-member cluster.
//!
//! Every expected output below is what etcd 3.4.23 printed for the same commands. Each test
//! starts its own cluster, so revisions are exact: a fresh store is at revision 1 and the test's
//! first write gets revision 2. In `-w json` output only `cluster_id`, `member_id` and
//! `raft_term` differ between implementations; [`strip_ids`] checks they are present and removes
//! them, and the rest is compared whole.

use std::time::Duration;

use raftkv_tests::{Cluster, CtlOutput, Etcdctl};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Standard base64 (what etcdctl's JSON uses for bytes).
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A KeyValue as etcdctl prints it in JSON (zero fields omitted).
fn kv(key: &str, create: i64, modr: i64, version: i64, value: &str) -> Value {
    let mut v = json!({"key": b64(key), "create_revision": create, "mod_revision": modr, "version": version});
    if !value.is_empty() {
        v["value"] = json!(b64(value));
    }
    v
}

/// Checks that `obj` carries non-zero `cluster_id` and `member_id` and a `raft_term`, and
/// removes those three fields.
#[track_caller]
fn strip_obj(obj: &mut Value) {
    let m = obj.as_object_mut().expect("header object");
    for f in ["cluster_id", "member_id"] {
        let v = m
            .remove(f)
            .unwrap_or_else(|| panic!("no {f} in {obj_s}", obj_s = "header"));
        assert!(v.as_u64().is_some_and(|x| x != 0), "{f} = {v}");
    }
    let term = m.remove("raft_term").expect("raft_term");
    assert!(term.as_u64().is_some_and(|t| t >= 1), "raft_term = {term}");
}

/// Removes the implementation-specific ids from the top-level `header` of a JSON response.
#[track_caller]
fn strip_ids(mut v: Value) -> Value {
    let key = if v.get("header").is_some() {
        "header"
    } else {
        "Header"
    };
    strip_obj(v.get_mut(key).unwrap_or_else(|| panic!("no header")));
    v
}

/// Like [`strip_ids`] for the lease commands, whose JSON puts the header fields at top level.
#[track_caller]
fn strip_flat(mut v: Value) -> Value {
    strip_obj(&mut v);
    v
}

/// The header etcd prints after stripping ids: only the revision.
fn hdr(rev: i64) -> Value {
    json!({ "revision": rev })
}

#[track_caller]
fn assert_error(out: &CtlOutput, expected: &str) {
    assert!(!out.success(), "expected failure:\n{out}");
    assert_eq!(out.error(), Some(expected), "\n{out}");
}

/// Puts a=1 b=2 c=3 ab=4 a=11 at revisions 2..=6.
fn load_abc(ctl: &Etcdctl) {
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("ab", "4"), ("a", "11")] {
        assert_eq!(ctl.ok(&["put", k, v]), "OK\n");
    }
}

#[test]
fn get_ranges_limits_sorting_revisions() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    load_abc(&ctl);

    assert_eq!(ctl.ok(&["get", "a"]), "a\n11\n");
    assert_eq!(ctl.ok(&["get", "a", "c"]), "a\n11\nab\n4\nb\n2\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "a"]), "a\n11\nab\n4\n");
    assert_eq!(ctl.ok(&["get", "--from-key", "b"]), "b\n2\nc\n3\n");
    assert_eq!(
        ctl.ok(&["get", "--prefix", "", "--limit", "2"]),
        "a\n11\nab\n4\n"
    );
    assert_eq!(
        ctl.ok(&[
            "get",
            "--from-key",
            "",
            "--sort-by=MODIFY",
            "--order=DESCEND"
        ]),
        "a\n11\nab\n4\nc\n3\nb\n2\n"
    );
    assert_eq!(
        ctl.ok(&["get", "--prefix", "", "--sort-by=VALUE", "--order=ASCEND"]),
        "a\n11\nb\n2\nc\n3\nab\n4\n"
    );
    assert_eq!(
        ctl.ok(&[
            "get",
            "--prefix",
            "",
            "--sort-by=CREATE",
            "--order=DESCEND",
            "--limit=3"
        ]),
        "ab\n4\nc\n3\nb\n2\n"
    );
    assert_eq!(
        ctl.ok(&[
            "get",
            "--prefix",
            "",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "--limit=1"
        ]),
        "a\n11\n"
    );
    assert_eq!(
        ctl.ok(&["get", "--prefix", "", "--order=DESCEND"]),
        "c\n3\nb\n2\nab\n4\na\n11\n"
    );
    assert_eq!(ctl.ok(&["get", "a", "--rev=2"]), "a\n1\n");
    assert_eq!(ctl.ok(&["get", "a", "--rev=5"]), "a\n1\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "", "--rev=3"]), "a\n1\nb\n2\n");
    assert_eq!(
        ctl.ok(&["get", "--prefix", "a", "--keys-only"]),
        "a\n\nab\n\n"
    );
    assert_eq!(ctl.ok(&["get", "a", "--print-value-only"]), "11\n");
    assert_eq!(ctl.ok(&["get", "nothing"]), "");
    assert_eq!(ctl.ok(&["get", "b", "--consistency=s"]), "b\n2\n");
    for i in 0..c.len() {
        assert_eq!(
            c.etcdctl_for(i)
                .ok(&["get", "--prefix", "", "--consistency=s", "--keys-only"]),
            "a\n\nab\n\nb\n\nc\n\n",
            "serializable read on member {i}"
        );
    }

    // JSON, field by field.
    assert_eq!(
        strip_ids(ctl.json(&["get", "a"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 6, 2, "11")], "count": 1})
    );
    assert_eq!(
        strip_ids(ctl.json(&["get", "--prefix", "", "--limit", "2"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 6, 2, "11"), kv("ab", 5, 5, 1, "4")],
               "more": true, "count": 4})
    );
    assert_eq!(
        strip_ids(ctl.json(&["get", "--prefix", "a", "--keys-only"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 6, 2, ""), kv("ab", 5, 5, 1, "")], "count": 2})
    );
    assert_eq!(
        strip_ids(ctl.json(&["get", "a", "c", "--rev=3"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 2, 1, "1"), kv("b", 3, 3, 1, "2")], "count": 2})
    );
    assert_eq!(
        strip_ids(ctl.json(&[
            "get",
            "--from-key",
            "b",
            "--sort-by=VALUE",
            "--order=DESCEND"
        ])),
        json!({"header": hdr(6), "kvs": [kv("c", 4, 4, 1, "3"), kv("b", 3, 3, 1, "2")], "count": 2})
    );
    // A miss: no kvs, count 0 (omitted), more false (omitted).
    assert_eq!(
        strip_ids(ctl.json(&["get", "nothing"])),
        json!({"header": hdr(6)})
    );
    // Limit larger than the range: more is false.
    assert_eq!(
        strip_ids(ctl.json(&["get", "--prefix", "a", "--limit", "5", "--keys-only"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 6, 2, ""), kv("ab", 5, 5, 1, "")], "count": 2})
    );
}

#[test]
fn put_overwrites_bump_version_and_revision() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    assert_eq!(ctl.ok(&["put", "k", "v"]), "OK\n");
    assert_eq!(ctl.ok(&["put", "k", "v"]), "OK\n");
    assert_eq!(
        strip_ids(ctl.json(&["get", "k"])),
        json!({"header": hdr(3), "kvs": [kv("k", 2, 3, 2, "v")], "count": 1})
    );
    // put --prev-kv prints the previous pair after OK.
    assert_eq!(ctl.ok(&["put", "k", "w", "--prev-kv"]), "OK\nk\nv\n");
    assert_eq!(
        strip_ids(ctl.json(&["put", "k", "x", "--prev-kv"])),
        json!({"header": hdr(5), "prev_kv": kv("k", 2, 4, 3, "w")})
    );
    assert_eq!(
        strip_ids(ctl.json(&["put", "k2", "x"])),
        json!({"header": hdr(6)})
    );
    // Value from stdin when omitted; an empty value is allowed.
    assert_eq!(
        ctl.run_with_input(&["put", "k3"], "from-stdin").stdout,
        "OK\n"
    );
    assert_eq!(ctl.ok(&["get", "k3"]), "k3\nfrom-stdin\n");
    assert_eq!(ctl.ok(&["put", "k4", ""]), "OK\n");
    assert_eq!(
        strip_ids(ctl.json(&["get", "k4"])),
        json!({"header": hdr(8), "kvs": [kv("k4", 8, 8, 1, "")], "count": 1})
    );
    assert_eq!(ctl.ok(&["get", "k4"]), "k4\n\n");
    // Delete resets version; re-create gets a new create_revision.
    assert_eq!(ctl.ok(&["del", "k"]), "1\n");
    assert_eq!(ctl.ok(&["put", "k", "again"]), "OK\n");
    assert_eq!(
        strip_ids(ctl.json(&["get", "k"])),
        json!({"header": hdr(10), "kvs": [kv("k", 10, 10, 1, "again")], "count": 1})
    );
    // --ignore-value keeps the value, bumps version.
    assert_eq!(ctl.ok(&["put", "k", "--ignore-value"]), "OK\n");
    assert_eq!(
        strip_ids(ctl.json(&["get", "k"])),
        json!({"header": hdr(11), "kvs": [kv("k", 10, 11, 2, "again")], "count": 1})
    );
}

#[test]
fn delete_single_range_prefix_prev_kv() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    load_abc(&ctl);
    // Deleting nothing does not bump the revision.
    assert_eq!(ctl.ok(&["del", "zz"]), "0\n");
    assert_eq!(
        strip_ids(ctl.json(&["del", "zz"])),
        json!({"header": hdr(6)})
    );
    assert_eq!(ctl.ok(&["del", "b"]), "1\n");
    assert_eq!(ctl.ok(&["del", "--prev-kv", "ab"]), "1\nab\n4\n");
    for (k, v) in [("p/1", "x"), ("p/2", "y"), ("q", "z")] {
        ctl.ok(&["put", k, v]);
    }
    assert_eq!(
        strip_ids(ctl.json(&["del", "--prefix", "p/"])),
        json!({"header": hdr(12), "deleted": 2})
    );
    assert_eq!(
        strip_ids(ctl.json(&["del", "a", "--prev-kv"])),
        json!({"header": hdr(13), "deleted": 1, "prev_kvs": [kv("a", 2, 6, 2, "11")]})
    );
    // Range delete [c, q): deletes c only; --from-key deletes the rest.
    assert_eq!(ctl.ok(&["del", "c", "q"]), "1\n");
    ctl.ok(&["put", "r", "1"]);
    assert_eq!(
        ctl.ok(&["del", "--from-key", "q", "--prev-kv"]),
        "2\nq\nz\nr\n1\n"
    );
    assert_eq!(ctl.ok(&["get", "--from-key", ""]), "");
    assert_eq!(
        strip_ids(ctl.json(&["get", "--from-key", ""])),
        json!({"header": hdr(16)})
    );
}

#[test]
fn txn_interactive() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    assert_eq!(ctl.ok(&["put", "k1", "v1"]), "OK\n");
    const PROMPTS: &str =
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

    // Success branch: put then get.
    let out = ctl.run_with_input(
        &["txn", "-i"],
        "value(\"k1\") = \"v1\"\n\nput k2 \"ok\"\nget k1\n\nput k2 \"fail\"\n\n",
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, format!("{PROMPTS}SUCCESS\n\nOK\n\nk1\nv1\n"));

    // Failure branch, JSON: succeeded false is omitted; nested headers carry only the revision.
    let out = ctl.run_with_input(
        &["txn", "-i", "-w", "json"],
        "value(\"k1\") = \"zz\"\n\nput k2 \"ok\"\n\nput k2 \"fail\"\ndel k1\n\n",
    );
    assert!(out.success(), "{out}");
    let body = out.stdout.strip_prefix(PROMPTS).expect("prompts first");
    let v: Value = serde_json::from_str(body.trim()).expect("json");
    assert_eq!(
        strip_ids(v),
        json!({"header": hdr(4), "responses": [
            {"Response": {"ResponsePut": {"header": hdr(4)}}},
            {"Response": {"ResponseDeleteRange": {"header": hdr(4), "deleted": 1}}},
        ]})
    );

    // Failure again, simple output: the delete now finds nothing.
    let out = ctl.run_with_input(
        &["txn", "-i"],
        "value(\"k1\") = \"zz\"\n\nput k2 \"ok\"\n\nput k2 \"fail\"\ndel k1\n\n",
    );
    assert_eq!(
        out.stdout,
        format!("{PROMPTS}FAILURE\n\nOK\n\n0\n"),
        "{out}"
    );
    // Nothing was deleted, but the txn still wrote k2: revision 5.

    // Several compares ANDed: version, mod and create (create of a missing key is 0).
    let out = ctl.run_with_input(
        &["txn", "-i", "-w", "json"],
        "version(\"k2\") > \"0\"\nmod(\"k2\") < \"100\"\ncreate(\"nokey\") = \"0\"\n\nget k2\n\n\n",
    );
    let body = out.stdout.strip_prefix(PROMPTS).expect("prompts first");
    let v: Value = serde_json::from_str(body.trim()).expect("json");
    assert_eq!(
        strip_ids(v),
        json!({"header": hdr(5), "succeeded": true, "responses": [
            {"Response": {"ResponseRange": {"header": hdr(5),
                "kvs": [kv("k2", 3, 5, 3, "fail")], "count": 1}}},
        ]})
    );
    // A read-only txn does not bump the revision; an empty failure branch prints just FAILURE.
    let out = ctl.run_with_input(&["txn", "-i"], "c(\"k2\") = \"1\"\n\n\n\n");
    assert_eq!(out.stdout, format!("{PROMPTS}FAILURE\n"), "{out}");
    // VALUE compare on a missing key is false, even for NOT_EQUAL... and != is spelled "!=".
    let out = ctl.run_with_input(
        &["txn", "-i"],
        "value(\"missing\") != \"x\"\n\n\nput f 1\n\n",
    );
    assert_eq!(out.stdout, format!("{PROMPTS}FAILURE\n\nOK\n"), "{out}");
    assert_eq!(
        strip_ids(ctl.json(&["get", "nokey"])),
        json!({"header": hdr(6)})
    );
}

#[test]
fn bad_requests_return_etcd_errors() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    assert_error(
        &ctl.run(&["put", "", "v"]),
        "etcdserver: key is not provided",
    );
    assert_error(&ctl.run(&["get", ""]), "etcdserver: key is not provided");
    assert_error(
        &ctl.run(&["put", "--lease=1234", "x", "y"]),
        "etcdserver: requested lease not found",
    );
    // 129 operations in one branch.
    let mut input = String::from("\n");
    for i in 0..129 {
        input.push_str(&format!("put t{i} v\n"));
    }
    input.push_str("\n\n");
    assert_error(
        &ctl.run_with_input(&["txn", "-i"], &input),
        "etcdserver: too many operations in txn request",
    );
    // Duplicate keys in a branch: two puts, or a put and a delete of the same key.
    for input in [
        "\nput d 1\nput d 2\n\n\n",
        "\nput d 1\ndel d\n\n\n",
        "\n\nput d 1\nput d 3\n\n",
    ] {
        assert_error(
            &ctl.run_with_input(&["txn", "-i"], input),
            "etcdserver: duplicate key given in txn request",
        );
    }
    // Two gets of one key and a put of another are fine; 128 ops are fine.
    let out = ctl.run_with_input(&["txn", "-i"], "\nget d\nget d\nput e 1\n\n\n");
    assert!(out.success(), "{out}");
    let mut input = String::from("\n");
    for i in 0..128 {
        input.push_str(&format!("put t{i} v\n"));
    }
    input.push_str("\n\n");
    assert!(ctl.run_with_input(&["txn", "-i"], &input).success());
    // A value over 1.5 MiB (read from stdin: one argv string is capped at 128 KiB).
    let big = "x".repeat(1_600_000);
    assert_error(
        &ctl.run_with_input(&["put", "big"], &big),
        "etcdserver: request is too large",
    );
    let ok = "x".repeat(1_400_000);
    assert_eq!(ctl.run_with_input(&["put", "big"], &ok).stdout, "OK\n");
    // Nothing refused changed the store: e (rev 2), the 128-op txn (rev 3), big (rev 4).
    assert_eq!(
        strip_ids(ctl.json(&["get", "d", "--prefix"])),
        json!({"header": hdr(4)})
    );
    assert_eq!(
        ctl.ok(&["get", "--from-key", "", "--keys-only", "--limit=2"]),
        "big\n\ne\n\n"
    );
}

#[test]
fn compaction_and_compacted_revisions() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    load_abc(&ctl);
    assert_eq!(ctl.ok(&["compaction", "5"]), "compacted revision 5\n");
    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
    let out = ctl.run(&["get", "a", "--rev=4"]);
    assert_error(&out, COMPACTED);
    assert_eq!(out.code(), 1);
    // The compact revision itself is still readable.
    assert_eq!(ctl.ok(&["get", "a", "--rev=5"]), "a\n1\n");
    assert_eq!(
        ctl.ok(&["get", "--prefix", "", "--rev=5", "--keys-only"]),
        "a\n\nab\n\nb\n\nc\n\n"
    );
    assert_error(&ctl.run(&["compaction", "3"]), COMPACTED);
    assert_error(&ctl.run(&["compaction", "5"]), COMPACTED);
    assert_error(&ctl.run(&["compaction", "500"]), FUTURE);
    assert_error(&ctl.run(&["get", "a", "--rev=500"]), FUTURE);
    assert_error(&ctl.run(&["get", "a", "--rev=7"]), FUTURE);
    assert_eq!(ctl.ok(&["get", "a", "--rev=6"]), "a\n11\n");
    // `-w json` does not apply to compaction; compaction writes nothing: still revision 6.
    assert_eq!(
        ctl.ok(&["compaction", "--physical", "6", "-w", "json"]),
        "compacted revision 6\n"
    );
    assert_eq!(
        strip_ids(ctl.json(&["get", "a"])),
        json!({"header": hdr(6), "kvs": [kv("a", 2, 6, 2, "11")], "count": 1})
    );
    assert_error(&ctl.run(&["get", "a", "--rev=5"]), COMPACTED);
    // The current revision is always readable.
    assert_eq!(ctl.ok(&["get", "a"]), "a\n11\n");

    // A watch from a compacted revision is cancelled with the reason.
    let w = ctl.spawn(&["watch", "--rev=2", "a"]);
    let (status, stdout, stderr) = w.wait_exit(WAIT);
    assert_eq!(status.code(), Some(5), "stdout {stdout:?} stderr {stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(
        lines,
        [
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
            "Error: watch is canceled by the server"
        ]
    );
}

#[test]
fn watch_history_live_and_prev_kv() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    for (k, v) in [("k1", "v1"), ("k2", "ok"), ("other", "x"), ("k2", "fail")] {
        ctl.ok(&["put", k, v]);
    }
    ctl.ok(&["del", "k1"]);
    // Revisions: k1=2, k2=3, other=4, k2=5, del k1=6.

    // History replay from revision 1 with prev_kv: prev pair first, then the new pair.
    let mut w = ctl.spawn(&["watch", "--rev=1", "--prefix", "k", "--prev-kv"]);
    let expected_history = [
        "PUT", "k1", "v1", //
        "PUT", "k2", "ok", //
        "PUT", "k2", "ok", "k2", "fail", //
        "DELETE", "k1", "v1", "k1", "",
    ];
    assert_eq!(
        w.wait_for_lines(expected_history.len(), WAIT),
        expected_history
    );

    // Live events continue on the same watch, with no duplicate.
    // (Each write waits for the JSON watcher's previous line, so its header revision is
    // deterministic whether the watch was created before the write or replays it.)
    let mut live = ctl.spawn(&["watch", "--rev=7", "k2", "-w", "json"]);
    ctl.ok(&["put", "k2", "live"]);
    live.wait_for_lines(1, WAIT);
    ctl.ok(&["put", "unrelated", "x"]);
    ctl.ok(&["del", "k2"]);
    let lines = w.wait_for_lines(expected_history.len() + 10, WAIT);
    assert_eq!(
        lines[expected_history.len()..],
        ["PUT", "k2", "fail", "k2", "live", "DELETE", "k2", "live", "k2", ""]
    );
    assert_eq!(
        w.drain_for(Duration::from_millis(300)).len(),
        expected_history.len() + 10,
        "no further events"
    );

    // JSON: header revision is the event's, DELETE is type 1 with only key and mod_revision.
    let json_lines = live.wait_for_lines(2, WAIT);
    let events: Vec<Value> = json_lines
        .iter()
        .map(|l| strip_ids(serde_json::from_str(l).expect("json line")))
        .collect();
    assert_eq!(
        events,
        [
            json!({"Header": hdr(7), "Events": [{"kv": kv("k2", 3, 7, 3, "live")}],
                   "CompactRevision": 0, "Canceled": false, "Created": false}),
            json!({"Header": hdr(9), "Events": [{"type": 1, "kv": {"key": b64("k2"), "mod_revision": 9}}],
                   "CompactRevision": 0, "Canceled": false, "Created": false}),
        ]
    );

    // A replay of a whole range from the start, in JSON: events ordered by revision, none
    // missing or repeated. (etcd sends them in one response whose header is the current
    // revision, 9; splitting the replay is allowed, so only order and headers are checked.)
    let mut all = ctl.spawn(&["watch", "--rev=2", "--prefix", "", "-w", "json"]);
    let mut revs = Vec::new();
    let mut n = 0;
    while revs.len() < 8 {
        n += 1;
        let line = all.wait_for_lines(n, WAIT)[n - 1].clone();
        let v = strip_ids(serde_json::from_str(&line).expect("json"));
        let header = v["Header"]["revision"].as_i64().expect("header revision");
        for e in v["Events"].as_array().expect("events") {
            let rev = e["kv"]["mod_revision"].as_i64().expect("mod_revision");
            assert!(rev <= header && header <= 9, "{v}");
            revs.push(rev);
        }
    }
    assert_eq!(revs, (2..=9).collect::<Vec<_>>());
}

/// Parses "lease <16 hex> granted with TTL(<n>s)" into the id.
fn granted_id(line: &str, ttl: i64) -> String {
    let rest = line.strip_prefix("lease ").expect(line);
    let (id, tail) = rest.split_once(' ').expect(line);
    assert_eq!(id.len(), 16, "lease ids print as %016x: {line}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(tail, format!("granted with TTL({ttl}s)\n"));
    id.to_string()
}

#[test]
fn lease_lifecycle() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    let long = granted_id(&ctl.ok(&["lease", "grant", "100"]), 100);
    // TTL 1 is raised to the minimum, ceil(1.5 x election timeout) = 2 s.
    let short = strip_flat(ctl.json(&["lease", "grant", "1"]));
    let short_id = short["ID"].as_i64().expect("ID");
    assert_eq!(
        short,
        json!({"revision": 1, "ID": short_id, "TTL": 2, "Error": ""})
    );

    let id = granted_id(&ctl.ok(&["lease", "grant", "60"]), 60);
    let list = ctl.ok(&["lease", "list"]);
    let mut lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.remove(0), "found 3 leases");
    lines.sort();
    let mut want = vec![long.as_str(), id.as_str()];
    let short_hex = format!("{short_id:016x}");
    want.push(&short_hex);
    want.sort();
    assert_eq!(lines, want);

    assert_eq!(
        ctl.ok(&["put", &format!("--lease={id}"), "lk1", "v"]),
        "OK\n"
    );
    assert_eq!(
        ctl.ok(&["put", &format!("--lease={id}"), "lk2", "v"]),
        "OK\n"
    );
    let ttl = ctl.ok(&["lease", "timetolive", &id]);
    let remaining = |s: &str| -> i64 {
        let r = s.split("remaining(").nth(1).expect(s);
        r[..r.find('s').expect(s)].parse().expect(s)
    };
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!((55..=60).contains(&remaining(&ttl)), "{ttl}");
    let ttl = ctl.ok(&["lease", "timetolive", "--keys", &id]);
    assert!(
        ttl.ends_with("s), attached keys([lk1 lk2])\n")
            || ttl.ends_with("s), attached keys([lk2 lk1])\n"),
        "{ttl}"
    );
    let mut v = strip_flat(ctl.json(&["lease", "timetolive", "--keys", &id]));
    let o = v.as_object_mut().expect("object");
    let mut keys: Vec<String> = o
        .remove("keys")
        .and_then(|k| serde_json::from_value(k).ok())
        .expect("keys");
    keys.sort();
    assert_eq!(keys, [b64("lk1"), b64("lk2")]);
    let left = o.remove("ttl").and_then(|t| t.as_i64()).expect("ttl");
    assert!((55..=60).contains(&left), "ttl {left}");
    let id_dec = i64::from_str_radix(&id, 16).expect("hex id");
    assert_eq!(
        Value::Object(o.clone()),
        json!({"revision": 3, "id": id_dec, "granted-ttl": 60})
    );

    assert_eq!(
        ctl.ok(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        strip_flat(ctl.json(&["lease", "keep-alive", "--once", &id])),
        json!({"revision": 3, "ID": id_dec, "TTL": 60})
    );

    // A streaming keep-alive prints a line per renewal.
    let mut ka = ctl.spawn(&["lease", "keep-alive", &long]);
    let lines = ka.wait_for_lines(1, WAIT);
    assert_eq!(lines[0], format!("lease {long} keepalived with TTL(100)"));
    drop(ka);

    // Revoke deletes the attached keys in one revision.
    assert_eq!(
        ctl.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        strip_ids(ctl.json(&["get", "--prefix", "lk"])),
        json!({"header": hdr(4)})
    );
    assert_eq!(
        ctl.ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        strip_flat(ctl.json(&["lease", "timetolive", &id])),
        json!({"revision": 4, "id": id_dec, "ttl": -1, "granted-ttl": 0, "keys": null})
    );
    let out = ctl.run(&["lease", "keep-alive", "--once", &id]);
    assert_error(&out, "etcdserver: requested lease not found");
    assert_eq!(out.code(), 2, "{out}");
    assert_error(
        &ctl.run(&["lease", "revoke", &id]),
        "failed to revoke lease (etcdserver: requested lease not found)",
    );
    assert_error(
        &ctl.run(&["put", &format!("--lease={id}"), "x", "y"]),
        "etcdserver: requested lease not found",
    );

    // The 2 s lease expires on its own (no keep-alive).
    raftkv_tests::wait_until("the 2 s lease to expire", WAIT, || {
        let list = ctl.ok(&["lease", "list"]);
        (!list.contains(&short_hex)).then_some(())
    });
    assert!(ctl.ok(&["lease", "list"]).starts_with("found 1 leases\n"));
}

#[test]
fn member_list() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    // member list: sorted by id, "%x, started, name, peer, client, false".
    let out = ctl.ok(&["member", "list"]);
    let mut ids: Vec<(u64, usize)> = (0..3).map(|i| (c.member_id(i), i)).collect();
    ids.sort();
    let v = ctl.json(&["member", "list"]);
    let mut expected = String::new();
    let mut members = Vec::new();
    for (id, i) in &ids {
        let peer = v["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["ID"].as_u64() == Some(*id))
            .expect("member in json")["peerURLs"][0]
            .as_str()
            .expect("peer url")
            .to_string();
        expected.push_str(&format!(
            "{id:x}, started, {}, {peer}, {}, false\n",
            c.name(*i),
            c.endpoint(*i)
        ));
        members.push(json!({"ID": id, "name": c.name(*i), "peerURLs": [peer], "clientURLs": [c.endpoint(*i)]}));
    }
    assert_eq!(out, expected);
    // MemberList's header has no revision (etcd 3.4 leaves it 0, so JSON omits it).
    assert_eq!(strip_ids(v), json!({"header": {}, "members": members}));
}

/// `endpoint status` through `ctl`, whose endpoints print as `shown(i)`.
#[track_caller]
fn check_endpoint_status(c: &Cluster, ctl: &Etcdctl, shown: impl Fn(usize) -> String) {
    let out = ctl.ok(&["endpoint", "status"]);
    let leader = c.leader_index();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines {
        let f: Vec<&str> = line.split(", ").collect();
        assert_eq!(f.len(), 10, "{line}");
        let i = (0..3).find(|&i| f[0] == shown(i)).expect(line);
        assert_eq!(f[1], format!("{:x}", c.member_id(i)));
        assert!(f[2].starts_with("3."), "version {line}");
        assert_eq!(f[4], (i == leader).to_string(), "{line}");
        assert_eq!(f[5], "false");
        assert_eq!(f[9], "");
    }
    let v = ctl.json(&["endpoint", "status"]);
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    for e in arr {
        let i = (0..3)
            .find(|&i| e["Endpoint"] == json!(shown(i)))
            .expect("endpoint");
        let s = &e["Status"];
        assert_eq!(s["header"]["member_id"].as_u64(), Some(c.member_id(i)));
        assert_eq!(s["header"]["revision"], json!(1));
        assert_eq!(s["leader"].as_u64(), Some(c.member_id(leader)));
        let term = s["raftTerm"].as_u64().expect("raftTerm");
        assert!(term >= 1);
        assert_eq!(s["header"]["raft_term"].as_u64(), Some(term));
        let index = s["raftIndex"].as_u64().expect("raftIndex");
        let applied = s["raftAppliedIndex"].as_u64().expect("raftAppliedIndex");
        assert!(index >= 1 && applied >= 1 && applied <= index, "{s}");
        assert!(s["dbSize"].as_u64().expect("dbSize") > 0);
        assert!(s["dbSizeInUse"].as_u64().expect("dbSizeInUse") > 0);
        assert!(s["version"].as_str().expect("version").starts_with("3."));
    }
}

#[test]
fn endpoint_status() {
    let c = Cluster::start(3);
    // Endpoints given as host:port.
    let addrs: Vec<String> = c
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    let plain = Etcdctl::new(&addrs);
    check_endpoint_status(&c, &plain, |i| addrs[i].clone());
    // Endpoints given as URLs, the usual form. etcdctl 3.4 then dials each endpoint for Status
    // with the whole URL as the HTTP/2 :authority ("http://127.0.0.1:port", etcd issue #13192).
    // Go's HTTP/2 server accepts that; the Rust `h2` crate under tonic would reset the stream
    // (PROTOCOL_ERROR), so raftkv's client listener cuts it to host:port first
    // (raftkv_server::authority).
    check_endpoint_status(&c, &c.etcdctl(), |i| c.endpoint(i));
}

/// The other per-endpoint Maintenance calls etcdctl 3.4 dials with the URL as `:authority`
/// (etcd #13192): `defrag` and `endpoint hashkv`, with `http://` endpoints.
#[test]
fn url_endpoints_defrag_and_hashkv() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    assert!(
        ctl.endpoints().starts_with("http://"),
        "{}",
        ctl.endpoints()
    );
    assert_eq!(ctl.ok(&["put", "k", "v"]), "OK\n");
    raftkv_tests::wait_until("every member to apply revision 2", WAIT, || {
        (0..3)
            .all(|i| c.serializable_revision(i) == Some(2))
            .then_some(())
    });

    let out = ctl.run(&["defrag"]);
    assert!(out.success(), "{out}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    let mut want: Vec<String> = c
        .endpoints()
        .iter()
        .map(|e| format!("Finished defragmenting etcd member[{e}]"))
        .collect();
    want.sort();
    assert_eq!(lines, want, "{out}");

    // Every member's hash at revision 2, as the host:port form (which never had the problem)
    // reports it.
    let v = ctl.json(&["endpoint", "hashkv", "--rev=2"]);
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 3, "{v}");
    let expected = c.hash_kv(0, 2);
    for e in arr {
        let i = (0..3)
            .find(|&i| e["Endpoint"] == json!(c.endpoint(i)))
            .expect("endpoint");
        assert_eq!(c.hash_kv(i, 2), expected, "members agree");
        let h = &e["HashKV"];
        assert_eq!(h["hash"].as_u64(), Some(expected.hash), "{e}");
        assert_eq!(
            h["header"]["member_id"].as_u64(),
            Some(c.member_id(i)),
            "{e}"
        );
        assert_eq!(h["header"]["revision"], json!(2), "{e}");
    }
    let out = ctl.ok(&["endpoint", "hashkv", "--rev=2"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want: Vec<String> = c
        .endpoints()
        .iter()
        .map(|e| format!("{e}, {}", expected.hash))
        .collect();
    want.sort();
    assert_eq!(lines, want);
}

#[test]
fn endpoint_health() {
    let c = Cluster::start(3);
    let ctl = c.etcdctl();
    // Prints on stderr, one line per endpoint (a linearizable get of the key "health").
    let out = ctl.run(&["endpoint", "health"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "");
    let mut healthy: Vec<&str> = out.stderr.lines().filter(|l| !l.starts_with('{')).collect();
    healthy.sort();
    let mut eps = c.endpoints();
    eps.sort();
    assert_eq!(healthy.len(), 3, "{out}");
    for (ep, line) in eps.iter().zip(&healthy) {
        let prefix = format!("{ep} is healthy: successfully committed proposal: took = ");
        assert!(line.starts_with(&prefix), "{line}");
    }
    let v = ctl.json(&["endpoint", "health"]);
    let mut eps: Vec<(String, bool)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().expect("endpoint").to_string(),
                e["health"] == json!(true),
            )
        })
        .collect();
    eps.sort();
    let mut want: Vec<(String, bool)> = c.endpoints().into_iter().map(|e| (e, true)).collect();
    want.sort();
    assert_eq!(eps, want);
}
