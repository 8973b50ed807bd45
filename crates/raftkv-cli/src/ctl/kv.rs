//! `put`, `get`, `del` and `compaction`: the KV service, with etcdctl's flags, argument
//! checks and output. The request builders are shared with `txn`, whose operations are
//! written as these commands.

use std::io::Read as _;

use clap::Args;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use raftkv_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};

use super::conn::{Conn, Retry};
use super::format::{self, emit, Format};
use super::{CtlError, CtlResult, GlobalArgs, EXIT_BAD_FEATURE, EXIT_ERROR};

/// Flags of `put`.
#[derive(Args, Debug, Clone)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Lease ID (in hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    pub(crate) lease: String,
    /// Return the previous key-value pair before modification.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// Updates the key using its current value.
    #[arg(long)]
    pub(crate) ignore_value: bool,
    /// Updates the key using its current lease.
    #[arg(long)]
    pub(crate) ignore_lease: bool,
    /// The key, then the value (read from stdin when omitted).
    #[arg(value_name = "KEY> <VALUE")]
    pub(crate) args: Vec<String>,
}

/// Flags of `get`.
#[derive(Args, Debug, Clone)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l")]
    pub(crate) consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default).
    #[arg(long, default_value = "")]
    pub(crate) order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long, default_value = "")]
    pub(crate) sort_by: String,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0)]
    pub(crate) limit: i64,
    /// Get keys with matching prefix.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare.
    #[arg(long)]
    pub(crate) from_key: bool,
    /// Specify the kv revision.
    #[arg(long, default_value_t = 0)]
    pub(crate) rev: i64,
    /// Get only the keys.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    pub(crate) count_only: bool,
    /// Only write values when using the "simple" output format.
    #[arg(long)]
    pub(crate) print_value_only: bool,
    /// The key and an optional range end.
    #[arg(value_name = "KEY> <RANGE_END")]
    pub(crate) args: Vec<String>,
}

/// Flags of `del`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DelArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Delete keys with matching prefix.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Return deleted key-value pairs.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// Delete keys that are greater than or equal to the given key using byte compare.
    #[arg(long)]
    pub(crate) from_key: bool,
    /// The key and an optional range end.
    #[arg(value_name = "KEY> <RANGE_END")]
    pub(crate) args: Vec<String>,
}

/// Flags of `compaction`.
#[derive(Args, Debug, Clone)]
pub(crate) struct CompactionArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Wait for the compaction to physically remove all old revisions.
    #[arg(long)]
    pub(crate) physical: bool,
    /// The revision to compact up to.
    #[arg(value_name = "REVISION")]
    pub(crate) args: Vec<String>,
}

pub(crate) use raftkv_client::prefix_range_end as prefix_end;

/// The key and range end of `get`/`del` with `--prefix` / `--from-key`.
fn key_range(
    args: &[String],
    prefix: bool,
    from_key: bool,
    cmd: &str,
) -> Result<(Vec<u8>, Vec<u8>), CtlError> {
    if args.is_empty() {
        return Err(CtlError::args(format!(
            "{cmd} command needs one argument as key and an optional argument as range_end"
        )));
    }
    if prefix && from_key {
        return Err(CtlError::args(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    if args.len() > 2 {
        return Err(CtlError::args(format!(
            "{cmd} command needs one argument as key and an optional argument as range_end"
        )));
    }
    let mut key = args[0].as_bytes().to_vec();
    let mut end = Vec::new();
    if args.len() == 2 {
        if prefix || from_key {
            return Err(CtlError::args(
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set.",
            ));
        }
        end = args[1].as_bytes().to_vec();
    }
    if prefix {
        if key.is_empty() {
            key = vec![0];
            end = vec![0];
        } else {
            end = prefix_end(&key);
        }
    }
    if from_key {
        if key.is_empty() {
            key = vec![0];
        }
        end = vec![0];
    }
    Ok((key, end))
}

/// The Put request of `put` (`stdin` supplies a missing value when allowed).
pub(crate) fn put_request(a: &PutArgs, stdin: bool) -> Result<PutRequest, CtlError> {
    let usage = "put command needs 1 argument and input from stdin or 2 arguments";
    let Some(key) = a.args.first() else {
        return Err(CtlError::args(usage));
    };
    if a.ignore_value && a.args.len() > 1 {
        return Err(CtlError::args(
            "put command needs only 1 argument when 'ignore-value' is set",
        ));
    }
    let mut value = Vec::new();
    if !a.ignore_value {
        if let Some(v) = a.args.get(1) {
            value = v.as_bytes().to_vec();
        } else if stdin {
            std::io::stdin()
                .read_to_end(&mut value)
                .map_err(|_| CtlError::args(usage))?;
            if value.is_empty() {
                return Err(CtlError::args(usage));
            }
        } else {
            return Err(CtlError::args(usage));
        }
    }
    let lease = i64::from_str_radix(&a.lease, 16).map_err(|e| {
        CtlError::args(format!(
            "bad lease ID ({}), expecting ID in Hex",
            go_parse_error(&a.lease, &e)
        ))
    })?;
    Ok(PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        lease,
        prev_kv: a.prev_kv,
        ignore_value: a.ignore_value,
        ignore_lease: a.ignore_lease,
    })
}

/// Go's `strconv.ParseInt` error text, for messages etcdctl prints.
pub(crate) fn go_parse_error(input: &str, e: &std::num::ParseIntError) -> String {
    use std::num::IntErrorKind;
    let what = match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range",
        _ => "invalid syntax",
    };
    format!("strconv.ParseInt: parsing {input:?}: {what}")
}

/// The Range request of `get`.
pub(crate) fn get_request(a: &GetArgs) -> Result<RangeRequest, CtlError> {
    let (key, range_end) = key_range(&a.args, a.prefix, a.from_key, "get")?;
    let serializable = match a.consistency.as_str() {
        "s" => true,
        "l" => false,
        other => {
            return Err(CtlError::new(
                EXIT_BAD_FEATURE,
                format!("unknown consistency flag {other:?}"),
            ))
        }
    };
    let mut order = match a.order.to_uppercase().as_str() {
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        "" => SortOrder::None,
        _ => {
            return Err(CtlError::new(
                EXIT_BAD_FEATURE,
                format!("bad sort order {}", a.order),
            ))
        }
    };
    let target = match a.sort_by.to_uppercase().as_str() {
        "CREATE" => SortTarget::Create,
        "KEY" | "" => SortTarget::Key,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => {
            return Err(CtlError::new(
                EXIT_BAD_FEATURE,
                format!("bad sort target {}", a.sort_by),
            ))
        }
    };
    // clientv3's WithSort: ascending by key is the server's natural order.
    if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    Ok(RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev.max(0),
        sort_order: order as i32,
        sort_target: target as i32,
        serializable,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    })
}

/// The DeleteRange request of `del`.
pub(crate) fn del_request(a: &DelArgs) -> Result<DeleteRangeRequest, CtlError> {
    let (key, range_end) = key_range(&a.args, a.prefix, a.from_key, "del")?;
    Ok(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: a.prev_kv,
    })
}

/// `put`.
pub(crate) async fn put(a: PutArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    let req = put_request(&a, true)?;
    let mut conn = Conn::connect(&a.global).await?;
    let resp = conn
        .call(Retry::Never, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).put(req).await }
        })
        .await?;
    let mut out = String::new();
    match fmt {
        Format::Json => out = format::json_put(&resp) + "\n",
        _ => format::simple_put(&mut out, &resp, a.global.hex),
    }
    emit(&out);
    Ok(())
}

/// `get`.
pub(crate) async fn get(a: GetArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    let req = get_request(&a)?;
    if a.print_value_only && fmt != Format::Simple {
        return Err(CtlError::args(
            "print-value-only is only for `--write-out=simple`",
        ));
    }
    let mut conn = Conn::connect(&a.global).await?;
    let resp = conn
        .call(Retry::Safe, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).range(req).await }
        })
        .await?;
    let mut out = String::new();
    match fmt {
        Format::Json => out = format::json_range(&resp) + "\n",
        _ if a.count_only => out = format!("{}\n", resp.count),
        _ => format::simple_range(&mut out, &resp, a.global.hex, a.print_value_only),
    }
    emit(&out);
    Ok(())
}

/// `del`.
pub(crate) async fn del(a: DelArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    let req = del_request(&a)?;
    let mut conn = Conn::connect(&a.global).await?;
    let resp = conn
        .call(Retry::Never, |ch| {
            let req = req.clone();
            async move { KvClient::new(ch).delete_range(req).await }
        })
        .await?;
    let mut out = String::new();
    match fmt {
        Format::Json => out = format::json_del(&resp) + "\n",
        _ => format::simple_del(&mut out, &resp, a.global.hex),
    }
    emit(&out);
    Ok(())
}

/// `compaction` (prints the same line whatever `-w` says, as etcdctl does).
pub(crate) async fn compaction(a: CompactionArgs) -> CtlResult {
    if a.args.len() != 1 {
        return Err(CtlError::args("compaction command needs 1 argument"));
    }
    let revision: i64 = a.args[0]
        .parse()
        .map_err(|e| CtlError::new(EXIT_ERROR, go_parse_error(&a.args[0], &e)))?;
    let mut conn = Conn::connect(&a.global).await?;
    let req = CompactionRequest {
        revision,
        physical: a.physical,
    };
    conn.call(Retry::Never, |ch| async move {
        KvClient::new(ch).compact(req).await
    })
    .await?;
    emit(&format!("compacted revision {revision}\n"));
    Ok(())
}
