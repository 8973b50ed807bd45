//! `watch`: one Watch stream, events printed as they arrive, until Ctrl-C (exit 0) or a
//! cancel from the server (`watch was canceled (...)` on stderr, exit 5, as etcdctl).

use clap::Args;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::watch_request::RequestUnion;
use raftkv_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use tokio_stream::wrappers::ReceiverStream;

use super::conn::Conn;
use super::format::{self, emit, emit_err, Format};
use super::kv::prefix_end;
use super::{CtlError, CtlResult, GlobalArgs, EXIT_INTERRUPTED};

/// Flags of `watch`.
#[derive(Args, Debug, Clone)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Watch on a prefix if prefix is set.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Revision to start watching.
    #[arg(long, default_value_t = 0)]
    pub(crate) rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// The key and an optional range end.
    #[arg(value_name = "KEY> <RANGE_END")]
    pub(crate) args: Vec<String>,
}

/// `watch`.
pub(crate) async fn run(a: WatchArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(CtlError::args("bad number of arguments"));
    }
    if a.prefix && a.args.len() == 2 {
        return Err(CtlError::args(
            "`range_end` and `--prefix` are mutually exclusive",
        ));
    }
    let mut key = a.args[0].as_bytes().to_vec();
    let mut range_end = a
        .args
        .get(1)
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default();
    if a.prefix {
        if key.is_empty() {
            key = vec![0];
            range_end = vec![0];
        } else {
            range_end = prefix_end(&key);
        }
    }
    let conn = Conn::connect(&a.global).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision: a.rev,
            prev_kv: a.prev_kv,
            ..Default::default()
        })),
    };
    tx.send(create)
        .await
        .map_err(|_| CtlError::new(super::EXIT_ERROR, "watch stream closed"))?;
    let mut client = WatchClient::new(conn.channel());
    let ctrl_c = super::interrupted();
    tokio::pin!(ctrl_c);
    let mut stream = tokio::select! {
        r = client.watch(ReceiverStream::new(rx)) => r?.into_inner(),
        _ = &mut ctrl_c => return Ok(()),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut ctrl_c => return Ok(()),
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => break,
            Err(status) => {
                emit_err(&format!("watch was canceled ({})\n", status.message()));
                break;
            }
        };
        if resp.canceled {
            let reason = if resp.compact_revision > 0 && resp.cancel_reason.is_empty() {
                "etcdserver: mvcc: required revision has been compacted".to_string()
            } else {
                resp.cancel_reason.clone()
            };
            emit_err(&format!("watch was canceled ({reason})\n"));
        } else if resp.created && resp.events.is_empty() {
            continue;
        }
        match fmt {
            Format::Json => emit(&(format::json_watch(&resp) + "\n")),
            _ => {
                let mut out = String::new();
                format::simple_events(&mut out, &resp.events, a.global.hex);
                emit(&out);
            }
        }
        if resp.canceled {
            break;
        }
    }
    drop(tx);
    Err(CtlError::new(
        EXIT_INTERRUPTED,
        "watch is canceled by the server",
    ))
}
