//! `txn`: etcdctl's transaction grammar, read from stdin (with prompts under `-i`).
//!
//! Three sections, each ended by an empty line: compares (`value("k") = "v"`,
//! `mod("k") > "3"`, `create(..)`, `version(..)`/`ver(..)`, `lease(..)` with a hex lease id;
//! operators `=`, `==`, `!=`, `<`, `>`), then the success operations, then the failure
//! operations, each written as a `put`, `get` or `del` command line. Input that ends before
//! the third empty line fails with `Error: EOF`, as in etcdctl.

use std::io::BufRead;

use clap::{Args, Parser, Subcommand};
use raftkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::request_op::Request;
use raftkv_proto::etcdserverpb::response_op::Response;
use raftkv_proto::etcdserverpb::{Compare, RequestOp, TxnRequest, TxnResponse};

use super::conn::{Conn, Retry};
use super::format::{self, emit, Format};
use super::kv::{self, DelArgs, GetArgs, PutArgs};
use super::{CtlError, CtlResult, GlobalArgs, EXIT_INVALID_INPUT};

/// Flags of `txn`.
#[derive(Args, Debug, Clone)]
pub(crate) struct TxnArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Input transaction in interactive mode.
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
}

/// One operation line, parsed with the commands' own flags.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
struct OpLine {
    #[command(subcommand)]
    op: OpCommand,
}

#[derive(Subcommand, Debug)]
enum OpCommand {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

fn invalid(message: String) -> CtlError {
    CtlError::new(EXIT_INVALID_INPUT, message)
}

/// Reads one line including its newline; EOF before a newline is etcdctl's `EOF` error.
fn read_line(input: &mut dyn BufRead) -> Result<String, CtlError> {
    let mut line = String::new();
    match input.read_line(&mut line) {
        Ok(_) if line.ends_with('\n') => Ok(line.trim().to_string()),
        Ok(_) => Err(invalid("EOF".into())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Reads a whole transaction: compares, success ops, failure ops. `prompt` prints the
/// section headers of interactive mode.
pub(crate) fn read_txn(
    input: &mut dyn BufRead,
    prompt: &mut dyn FnMut(&str),
) -> Result<TxnRequest, CtlError> {
    let mut req = TxnRequest::default();
    prompt("compares:");
    loop {
        let line = read_line(input)?;
        if line.is_empty() {
            break;
        }
        req.compare.push(parse_compare(&line)?);
    }
    prompt("success requests (get, put, del):");
    loop {
        let line = read_line(input)?;
        if line.is_empty() {
            break;
        }
        req.success.push(parse_op(&line)?);
    }
    prompt("failure requests (get, put, del):");
    loop {
        let line = read_line(input)?;
        if line.is_empty() {
            break;
        }
        req.failure.push(parse_op(&line)?);
    }
    Ok(req)
}

/// A tiny scanner over a compare line, modeled on Go's `fmt.Sscanf("%q) %s %q")`.
struct Scan<'a> {
    rest: &'a str,
}

impl Scan<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// A Go quoted string: `"..."` with escapes or a raw `` `...` ``.
    fn quoted(&mut self) -> Option<String> {
        self.skip_space();
        let mut chars = self.rest.char_indices();
        let (_, open) = chars.next()?;
        if open == '`' {
            let end = self.rest[1..].find('`')? + 1;
            let s = self.rest[1..end].to_string();
            self.rest = &self.rest[end + 1..];
            return Some(s);
        }
        if open != '"' {
            return None;
        }
        let mut out = String::new();
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                out.push(match c {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                self.rest = &self.rest[i + 1..];
                return Some(out);
            } else {
                out.push(c);
            }
        }
        None
    }

    fn literal(&mut self, lit: &str) -> bool {
        match self.rest.strip_prefix(lit) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn word(&mut self) -> Option<String> {
        self.skip_space();
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let w = self.rest[..end].to_string();
        self.rest = &self.rest[end..];
        Some(w)
    }
}

/// Parses one compare line (`value("k") = "v"`).
pub(crate) fn parse_compare(line: &str) -> Result<Compare, CtlError> {
    let Some((target, rest)) = line.split_once('(') else {
        return Err(invalid(format!("malformed comparison: {line}")));
    };
    let mut scan = Scan { rest };
    let key = scan.quoted();
    let op = key
        .as_ref()
        .filter(|_| scan.literal(")"))
        .and_then(|_| scan.word());
    let val = op.as_ref().and_then(|_| scan.quoted());
    let (Some(key), Some(op), Some(val)) = (key.clone(), op.clone(), val) else {
        return Err(invalid(format!(
            "malformed comparison: {line}; got {target}({:?}) {} {:?}",
            key.unwrap_or_default(),
            op.unwrap_or_default(),
            ""
        )));
    };
    let bad = || invalid(format!("invalid txn compare request: {line}"));
    let int = |v: &str| v.parse::<i64>().map_err(|_| bad());
    let (target, value) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(int(&val)?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int(&val)?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(int(&val)?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(val.clone().into_bytes()),
        ),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(i64::from_str_radix(&val, 16).map_err(|_| bad())?),
        ),
        other => {
            return Err(invalid(format!(
                "malformed comparison: {line} (unknown target {other})"
            )))
        }
    };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        _ => return Err(bad()),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(value),
    })
}

/// Splits an operation line into arguments: whitespace-separated, with `"..."` (Go escapes)
/// and `'...'` quoting.
pub(crate) fn argify(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut scan = Scan { rest: line };
    loop {
        scan.skip_space();
        if scan.rest.is_empty() {
            return args;
        }
        if scan.rest.starts_with('"') {
            if let Some(s) = scan.quoted() {
                args.push(s);
                continue;
            }
        }
        if let Some(r) = scan.rest.strip_prefix('\'') {
            if let Some(end) = r.find('\'') {
                args.push(r[..end].to_string());
                scan.rest = &r[end + 1..];
                continue;
            }
        }
        if let Some(w) = scan.word() {
            args.push(w);
        }
    }
}

/// Parses one operation line (`put k v`, `get k --prefix`, `del k`).
pub(crate) fn parse_op(line: &str) -> Result<RequestOp, CtlError> {
    let args = argify(line);
    if args.len() < 2 {
        return Err(invalid(format!("invalid txn compare request: {line}")));
    }
    let parsed = OpLine::try_parse_from(&args)
        .map_err(|_| invalid(format!("invalid txn request: {line}")))?;
    let request = match parsed.op {
        OpCommand::Put(a) => Request::RequestPut(kv::put_request(&a, false)?),
        OpCommand::Get(a) => Request::RequestRange(kv::get_request(&a)?),
        OpCommand::Del(a) => Request::RequestDeleteRange(kv::del_request(&a)?),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// etcdctl's simple output of a Txn response.
pub(crate) fn simple_txn(out: &mut String, r: &TxnResponse, hex: bool) {
    out.push_str(if r.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for op in &r.responses {
        out.push('\n');
        match &op.response {
            Some(Response::ResponseDeleteRange(d)) => format::simple_del(out, d, hex),
            Some(Response::ResponsePut(p)) => format::simple_put(out, p, hex),
            Some(Response::ResponseRange(g)) => format::simple_range(out, g, hex, false),
            other => out.push_str(&format!("unexpected response {other:?}\n")),
        }
    }
}

/// `txn`.
pub(crate) async fn run(a: TxnArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    let mut conn = Conn::connect(&a.global).await?;
    let interactive = a.interactive;
    let req = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        read_txn(&mut input, &mut |p| {
            if interactive {
                emit(&format!("{p}\n"));
            }
        })
    })
    .await
    .map_err(|e| invalid(e.to_string()))??;
    let resp = conn
        .call(Retry::Never, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).txn(req).await }
        })
        .await?;
    let mut out = String::new();
    match fmt {
        Format::Json => out = format::json_txn(&resp) + "\n",
        _ => simple_txn(&mut out, &resp, a.global.hex),
    }
    emit(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<TxnRequest, CtlError> {
        read_txn(&mut input.as_bytes(), &mut |_| {})
    }

    #[test]
    fn grammar() {
        let t = parse(
            "mod(\"t1\") > \"3\"\nvalue(\"t1\") = \"v 1\"\n\nput t3 \"a b\"\nget t1 --prefix\n\ndel t2\n\n",
        )
        .unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.compare[0].target_union, Some(TargetUnion::ModRevision(3)));
        assert_eq!(t.compare[0].result, CompareResult::Greater as i32);
        assert_eq!(
            t.compare[1].target_union,
            Some(TargetUnion::Value(b"v 1".to_vec()))
        );
        assert_eq!(t.success.len(), 2);
        match &t.success[0].request {
            Some(Request::RequestPut(p)) => assert_eq!(p.value, b"a b"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.failure.len(), 1);
    }

    #[test]
    fn errors_match_etcdctl() {
        let msg = |i: &str| parse(i).unwrap_err().message;
        assert_eq!(msg("value(\"t1\") = \"v1\"\n"), "EOF");
        assert_eq!(msg("bogus\n"), "malformed comparison: bogus");
        assert_eq!(
            msg("value(\"t1\" = \"v1\"\n"),
            "malformed comparison: value(\"t1\" = \"v1\"; got value(\"t1\")  \"\""
        );
        assert_eq!(
            msg("foo(\"t1\") = \"abc\"\n\n"),
            "malformed comparison: foo(\"t1\") = \"abc\" (unknown target foo)"
        );
        assert_eq!(
            msg("ver(\"t1\") = \"abc\"\n\n"),
            "invalid txn compare request: ver(\"t1\") = \"abc\""
        );
        assert_eq!(msg("\nbad t1\n\n"), "invalid txn request: bad t1");
        assert_eq!(msg("\nput\n\n"), "invalid txn compare request: put");
    }
}
