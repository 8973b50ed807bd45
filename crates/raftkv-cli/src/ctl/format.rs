//! Output as etcdctl 3.4 prints it: `-w simple` (its plain text), `-w json` (Go's
//! `encoding/json` of etcd's gogo-protobuf structs: snake-case field names from the proto,
//! zero values omitted, bytes base64, 64-bit integers as JSON numbers) and `-w table`
//! (olekukonko/tablewriter's ASCII grid with centered headers and right-aligned cells).
//!
//! Everything is rendered to a `String` first and written at once, so a failure half-way
//! prints nothing.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use raftkv_proto::etcdserverpb::{self as pb, ResponseHeader};
use raftkv_proto::mvccpb::{Event, KeyValue};

use super::{CtlError, EXIT_BAD_FEATURE};

/// The `-w` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// etcdctl's default plain text.
    Simple,
    /// One JSON document per response.
    Json,
    /// An ASCII table (only where etcdctl has one).
    Table,
}

impl Format {
    /// Parses a `-w` value.
    pub(crate) fn parse(s: &str) -> Result<Format, CtlError> {
        match s {
            "simple" => Ok(Format::Simple),
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            "fields" | "protobuf" => Err(unsupported(s)),
            other => Err(CtlError::new(
                EXIT_BAD_FEATURE,
                format!("unknown output format {other:?}"),
            )),
        }
    }

    /// Fails with etcdctl's error when the command has no table form.
    pub(crate) fn no_table(self) -> Result<Format, CtlError> {
        if self == Format::Table {
            return Err(unsupported("table"));
        }
        Ok(self)
    }
}

fn unsupported(name: &str) -> CtlError {
    CtlError::new(
        EXIT_BAD_FEATURE,
        format!("{name} not supported as output format"),
    )
}

/// Writes `s` to stdout (a closed pipe is not an error worth reporting).
pub(crate) fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Writes `s` to stderr.
pub(crate) fn emit_err(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes());
}

// ---------------------------------------------------------------------------------------
// Simple format.

/// Bytes as text: lossy UTF-8, or `\x..` per byte with `--hex`.
pub(crate) fn text(b: &[u8], hex: bool) -> String {
    if hex {
        b.iter().map(|c| format!("\\x{c:02x}")).collect()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// etcdctl's `printKV`: the key then the value on their own lines, or only the value.
pub(crate) fn simple_kv(out: &mut String, kv: &KeyValue, hex: bool, value_only: bool) {
    if !value_only {
        out.push_str(&text(&kv.key, hex));
        out.push('\n');
    }
    out.push_str(&text(&kv.value, hex));
    out.push('\n');
}

/// Simple output of a Range response (`get`).
pub(crate) fn simple_range(out: &mut String, r: &pb::RangeResponse, hex: bool, value_only: bool) {
    for kv in &r.kvs {
        simple_kv(out, kv, hex, value_only);
    }
}

/// Simple output of a Put response.
pub(crate) fn simple_put(out: &mut String, r: &pb::PutResponse, hex: bool) {
    out.push_str("OK\n");
    if let Some(kv) = &r.prev_kv {
        simple_kv(out, kv, hex, false);
    }
}

/// Simple output of a DeleteRange response.
pub(crate) fn simple_del(out: &mut String, r: &pb::DeleteRangeResponse, hex: bool) {
    out.push_str(&format!("{}\n", r.deleted));
    for kv in &r.prev_kvs {
        simple_kv(out, kv, hex, false);
    }
}

/// Simple output of watch events.
pub(crate) fn simple_events(out: &mut String, events: &[Event], hex: bool) {
    for e in events {
        out.push_str(if e.r#type == 1 { "DELETE\n" } else { "PUT\n" });
        if let Some(prev) = &e.prev_kv {
            simple_kv(out, prev, hex, false);
        }
        simple_kv(
            out,
            e.kv.as_ref().unwrap_or(&KeyValue::default()),
            hex,
            false,
        );
    }
}

// ---------------------------------------------------------------------------------------
// JSON, written by hand: field order and omission rules must be Go's, not serde's.

/// A JSON object under construction, fields in insertion order.
#[derive(Default)]
pub(crate) struct Obj {
    fields: Vec<(String, String)>,
}

impl Obj {
    /// An empty object.
    pub(crate) fn new() -> Obj {
        Obj::default()
    }

    /// Adds a field with an already-encoded JSON value.
    pub(crate) fn raw(mut self, name: &str, json: String) -> Obj {
        self.fields.push((name.to_string(), json));
        self
    }

    /// Adds a number field, omitted when zero (`omitempty`).
    pub(crate) fn num<N: std::fmt::Display + Default + PartialEq>(self, name: &str, v: N) -> Obj {
        if v == N::default() {
            return self;
        }
        self.raw(name, v.to_string())
    }

    /// Adds a number field even when zero.
    pub(crate) fn num_always<N: std::fmt::Display>(self, name: &str, v: N) -> Obj {
        self.raw(name, v.to_string())
    }

    /// Adds a boolean field, omitted when false.
    pub(crate) fn flag(self, name: &str, v: bool) -> Obj {
        if !v {
            return self;
        }
        self.raw(name, "true".into())
    }

    /// Adds a boolean field even when false.
    pub(crate) fn bool_always(self, name: &str, v: bool) -> Obj {
        self.raw(name, v.to_string())
    }

    /// Adds a string field, omitted when empty.
    pub(crate) fn string(self, name: &str, v: &str) -> Obj {
        if v.is_empty() {
            return self;
        }
        self.raw(name, quote(v))
    }

    /// Adds a string field even when empty.
    pub(crate) fn string_always(self, name: &str, v: &str) -> Obj {
        self.raw(name, quote(v))
    }

    /// Adds a bytes field (base64), omitted when empty.
    pub(crate) fn bytes(self, name: &str, v: &[u8]) -> Obj {
        if v.is_empty() {
            return self;
        }
        self.raw(name, b64(v))
    }

    /// Adds an array field, omitted when empty.
    pub(crate) fn list(self, name: &str, items: Vec<String>) -> Obj {
        if items.is_empty() {
            return self;
        }
        self.raw(name, array(items))
    }

    /// Adds an optional nested object, omitted when absent.
    pub(crate) fn opt(self, name: &str, v: Option<String>) -> Obj {
        match v {
            Some(v) => self.raw(name, v),
            None => self,
        }
    }

    /// The encoded object.
    pub(crate) fn end(self) -> String {
        let body: Vec<String> = self
            .fields
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", quote(&k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// A JSON array of encoded values.
pub(crate) fn array(items: Vec<String>) -> String {
    format!("[{}]", items.join(","))
}

/// Bytes as a base64 JSON string.
pub(crate) fn b64(v: &[u8]) -> String {
    quote(&base64::engine::general_purpose::STANDARD.encode(v))
}

/// A JSON string literal escaped as Go's `encoding/json` does (HTML-safe).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The fields of a response header (also embedded flat in some clientv3 responses).
pub(crate) fn header_fields(h: Option<&ResponseHeader>) -> Obj {
    let h = h.cloned().unwrap_or_default();
    Obj::new()
        .num("cluster_id", h.cluster_id)
        .num("member_id", h.member_id)
        .num("revision", h.revision)
        .num("raft_term", h.raft_term)
}

/// `"header":{...}` as a nested object (omitted when absent).
fn header(o: Obj, h: Option<&ResponseHeader>) -> Obj {
    o.opt("header", h.map(|h| header_fields(Some(h)).end()))
}

/// A `mvccpb.KeyValue`.
pub(crate) fn json_kv(kv: &KeyValue) -> String {
    Obj::new()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
        .end()
}

fn kvs(list: &[KeyValue]) -> Vec<String> {
    list.iter().map(json_kv).collect()
}

/// A Range response.
pub(crate) fn json_range(r: &pb::RangeResponse) -> String {
    header(Obj::new(), r.header.as_ref())
        .list("kvs", kvs(&r.kvs))
        .flag("more", r.more)
        .num("count", r.count)
        .end()
}

/// A Put response.
pub(crate) fn json_put(r: &pb::PutResponse) -> String {
    header(Obj::new(), r.header.as_ref())
        .opt("prev_kv", r.prev_kv.as_ref().map(json_kv))
        .end()
}

/// A DeleteRange response.
pub(crate) fn json_del(r: &pb::DeleteRangeResponse) -> String {
    header(Obj::new(), r.header.as_ref())
        .num("deleted", r.deleted)
        .list("prev_kvs", kvs(&r.prev_kvs))
        .end()
}

/// A Txn response; each response op is wrapped as Go marshals a oneof.
pub(crate) fn json_txn(r: &pb::TxnResponse) -> String {
    use pb::response_op::Response;
    let ops = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(Response::ResponseRange(r)) => Obj::new().raw("ResponseRange", json_range(r)),
                Some(Response::ResponsePut(r)) => Obj::new().raw("ResponsePut", json_put(r)),
                Some(Response::ResponseDeleteRange(r)) => {
                    Obj::new().raw("ResponseDeleteRange", json_del(r))
                }
                Some(Response::ResponseTxn(r)) => Obj::new().raw("ResponseTxn", json_txn(r)),
                None => return Obj::new().end(),
            };
            Obj::new().raw("Response", inner.end()).end()
        })
        .collect();
    header(Obj::new(), r.header.as_ref())
        .flag("succeeded", r.succeeded)
        .list("responses", ops)
        .end()
}

/// A watch event.
pub(crate) fn json_event(e: &Event) -> String {
    Obj::new()
        .num("type", e.r#type)
        .opt("kv", e.kv.as_ref().map(json_kv))
        .opt("prev_kv", e.prev_kv.as_ref().map(json_kv))
        .end()
}

/// clientv3's `WatchResponse` (exported Go fields without JSON tags).
pub(crate) fn json_watch(r: &pb::WatchResponse) -> String {
    Obj::new()
        .raw("Header", header_fields(r.header.as_ref()).end())
        .raw("Events", array(r.events.iter().map(json_event).collect()))
        .num_always("CompactRevision", r.compact_revision)
        .bool_always("Canceled", r.canceled)
        .bool_always("Created", false)
        .end()
}

/// An `etcdserverpb.Member`.
pub(crate) fn json_member(m: &pb::Member) -> String {
    let strings = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>();
    Obj::new()
        .num("ID", m.id)
        .string("name", &m.name)
        .list("peerURLs", strings(&m.peer_ur_ls))
        .list("clientURLs", strings(&m.client_ur_ls))
        .flag("isLearner", m.is_learner)
        .end()
}

/// A member list (and the member lists of add/remove/promote responses).
pub(crate) fn json_members(
    h: Option<&ResponseHeader>,
    member: Option<&pb::Member>,
    members: &[pb::Member],
) -> String {
    header(Obj::new(), h)
        .opt("member", member.map(json_member))
        .list("members", members.iter().map(json_member).collect())
        .end()
}

/// A Status response.
pub(crate) fn json_status(s: &pb::StatusResponse) -> String {
    header(Obj::new(), s.header.as_ref())
        .string("version", &s.version)
        .num("dbSize", s.db_size)
        .num("leader", s.leader)
        .num("raftIndex", s.raft_index)
        .num("raftTerm", s.raft_term)
        .num("raftAppliedIndex", s.raft_applied_index)
        .list("errors", s.errors.iter().map(|e| quote(e)).collect())
        .num("dbSizeInUse", s.db_size_in_use)
        .flag("isLearner", s.is_learner)
        .end()
}

// ---------------------------------------------------------------------------------------
// Tables.

/// An ASCII table as etcdctl draws it (tablewriter with `SetAlignment(ALIGN_RIGHT)`):
/// `+---+` borders, headers centered, cells right-aligned, one space of padding.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line: String = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = line.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{h}{} |",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&line);
    for row in rows {
        out.push('|');
        for (cell, w) in row.iter().zip(&widths) {
            out.push_str(&format!(" {cell:>w$} |"));
        }
        out.push('\n');
    }
    out.push_str(&line);
    out
}

// ---------------------------------------------------------------------------------------
// Go's number and duration formatting.

/// go-humanize's `Bytes`: SI units, one decimal below 10 ("25 kB", "1.2 MB").
pub(crate) fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(SIZES.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[e])
    } else {
        format!("{val:.0} {}", SIZES[e])
    }
}

/// Go's `time.Duration.String()`: "1.32217ms", "850µs", "2.5s", "1m3s".
pub(crate) fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |v: u128, unit: u128, suffix: &str| {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", f.trim_end_matches('0'))
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return frac(ns, 1_000, "µs");
    }
    if ns < 1_000_000_000 {
        return frac(ns, 1_000_000, "ms");
    }
    let total_s = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let h = total_s / 3600;
    let m = (total_s % 3600) / 60;
    let s = frac((total_s % 60) * 1_000_000_000 + sub, 1_000_000_000, "s");
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// Parses a Go duration flag value ("2s", "500ms", "1m30s", "1.5s").
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_etcdctl() {
        let t = table(
            &["ENDPOINT", "HEALTH", "TOOK", "ERROR"],
            &[vec![
                "127.0.0.1:23791".into(),
                "true".into(),
                "1.229212ms".into(),
                String::new(),
            ]],
        );
        assert_eq!(
            t,
            "+-----------------+--------+------------+-------+\n\
             |    ENDPOINT     | HEALTH |    TOOK    | ERROR |\n\
             +-----------------+--------+------------+-------+\n\
             | 127.0.0.1:23791 |   true | 1.229212ms |       |\n\
             +-----------------+--------+------------+-------+\n"
        );
    }

    #[test]
    fn go_formats() {
        assert_eq!(humanize_bytes(24576), "25 kB");
        assert_eq!(humanize_bytes(1_234_567), "1.2 MB");
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(go_duration(Duration::from_nanos(1_322_170)), "1.32217ms");
        assert_eq!(go_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(63)), "1m3s");
        assert_eq!(parse_go_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_go_duration("2x").is_err());
    }

    #[test]
    fn json_is_go_shaped() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 7,
            version: 6,
            value: b"bar5".to_vec(),
            lease: 0,
        };
        assert_eq!(
            json_kv(&kv),
            r#"{"key":"Zm9v","create_revision":2,"mod_revision":7,"version":6,"value":"YmFyNQ=="}"#
        );
        assert_eq!(quote("a<b>\"\n"), r#""a\u003cb\u003e\"\n""#);
    }
}
