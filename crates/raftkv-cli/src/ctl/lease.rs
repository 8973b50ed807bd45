//! `lease grant|revoke|timetolive|list|keep-alive`: the Lease service. Lease ids are
//! hexadecimal on the command line and in simple output, as in etcdctl.

use std::time::Duration;

use clap::{Args, Subcommand};
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use tokio_stream::wrappers::ReceiverStream;

use super::conn::{Conn, Retry};
use super::format::{self, emit, header_fields, Format, Obj};
use super::kv::go_parse_error;
use super::{CtlError, CtlResult, GlobalArgs, EXIT_BAD_CONNECTION, EXIT_ERROR};

/// `lease` and its subcommands.
#[derive(Args, Debug, Clone)]
pub(crate) struct LeaseArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: LeaseCommand,
}

/// The lease subcommands.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum LeaseCommand {
    /// Creates leases.
    Grant {
        /// Time to live in seconds.
        #[arg(value_name = "TTL")]
        args: Vec<String>,
    },
    /// Revokes leases.
    Revoke {
        /// The lease id in hexadecimal.
        #[arg(value_name = "LEASE_ID")]
        args: Vec<String>,
    },
    /// Get lease information.
    Timetolive {
        /// Get keys attached to this lease.
        #[arg(long)]
        keys: bool,
        /// The lease id in hexadecimal.
        #[arg(value_name = "LEASE_ID")]
        args: Vec<String>,
    },
    /// List all active leases.
    List,
    /// Keeps leases alive (renew).
    KeepAlive {
        /// Resets the keep-alive time to its original value and exits immediately.
        #[arg(long)]
        once: bool,
        /// The lease id in hexadecimal.
        #[arg(value_name = "LEASE_ID")]
        args: Vec<String>,
    },
}

fn lease_id(args: &[String], usage: &str) -> Result<i64, CtlError> {
    if args.len() != 1 {
        return Err(CtlError::args(usage));
    }
    i64::from_str_radix(&args[0], 16).map_err(|e| {
        CtlError::args(format!(
            "bad lease ID arg ({}), expecting ID in Hex",
            go_parse_error(&args[0], &e)
        ))
    })
}

/// `lease ...`.
pub(crate) async fn run(a: LeaseArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    match a.command {
        LeaseCommand::Grant { args } => {
            if args.len() != 1 {
                return Err(CtlError::args("lease grant command needs TTL argument"));
            }
            let ttl: i64 = args[0].parse().map_err(|e| {
                CtlError::args(format!("bad TTL ({})", go_parse_error(&args[0], &e)))
            })?;
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Never, |ch| async move {
                    LeaseClient::new(ch)
                        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                        .await
                })
                .await
                .map_err(|e| {
                    CtlError::new(EXIT_ERROR, format!("failed to grant lease ({})", e.message))
                })?;
            emit(&match fmt {
                Format::Json => {
                    header_fields(resp.header.as_ref())
                        .num_always("ID", resp.id)
                        .num_always("TTL", resp.ttl)
                        .string_always("Error", &resp.error)
                        .end()
                        + "\n"
                }
                _ => format!("lease {:016x} granted with TTL({}s)\n", resp.id, resp.ttl),
            });
        }
        LeaseCommand::Revoke { args } => {
            let id = lease_id(&args, "lease revoke command needs 1 argument")?;
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Never, |ch| async move {
                    LeaseClient::new(ch)
                        .lease_revoke(LeaseRevokeRequest { id })
                        .await
                })
                .await
                .map_err(|e| {
                    CtlError::new(
                        EXIT_ERROR,
                        format!("failed to revoke lease ({})", e.message),
                    )
                })?;
            emit(&match fmt {
                Format::Json => {
                    Obj::new()
                        .opt(
                            "header",
                            resp.header.as_ref().map(|h| header_fields(Some(h)).end()),
                        )
                        .end()
                        + "\n"
                }
                _ => format!("lease {id:016x} revoked\n"),
            });
        }
        LeaseCommand::Timetolive { keys, args } => {
            let id = lease_id(&args, "lease timetolive command needs lease ID as argument")?;
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Safe, |ch| async move {
                    LeaseClient::new(ch)
                        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                        .await
                })
                .await?;
            emit(&match fmt {
                Format::Json => {
                    let ks = if resp.keys.is_empty() {
                        "null".to_string()
                    } else {
                        format::array(resp.keys.iter().map(|k| format::b64(k)).collect())
                    };
                    header_fields(resp.header.as_ref())
                        .num_always("id", resp.id)
                        .num_always("ttl", resp.ttl)
                        .num_always("granted-ttl", resp.granted_ttl)
                        .raw("keys", ks)
                        .end()
                        + "\n"
                }
                _ if resp.granted_ttl == 0 && resp.ttl == -1 => {
                    format!("lease {:016x} already expired\n", resp.id)
                }
                _ => {
                    let mut s = format!(
                        "lease {:016x} granted with TTL({}s), remaining({}s)",
                        resp.id, resp.granted_ttl, resp.ttl
                    );
                    if keys {
                        let ks: Vec<String> = resp
                            .keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect();
                        s.push_str(&format!(", attached keys([{}])", ks.join(" ")));
                    }
                    s + "\n"
                }
            });
        }
        LeaseCommand::List => {
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Safe, |ch| async move {
                    LeaseClient::new(ch)
                        .lease_leases(LeaseLeasesRequest {})
                        .await
                })
                .await?;
            emit(&match fmt {
                Format::Json => {
                    let leases = resp
                        .leases
                        .iter()
                        .map(|l| Obj::new().num_always("id", l.id).end())
                        .collect();
                    header_fields(resp.header.as_ref())
                        .raw("leases", format::array(leases))
                        .end()
                        + "\n"
                }
                _ => {
                    let mut s = format!("found {} leases\n", resp.leases.len());
                    for l in &resp.leases {
                        s.push_str(&format!("{:016x}\n", l.id));
                    }
                    s
                }
            });
        }
        LeaseCommand::KeepAlive { once, args } => {
            let id = lease_id(&args, "lease keep-alive command needs lease ID as argument")?;
            keep_alive(&a.global, fmt, id, once).await?;
        }
    }
    Ok(())
}

fn keepalive_text(fmt: Format, r: &LeaseKeepAliveResponse) -> String {
    match fmt {
        Format::Json => {
            header_fields(r.header.as_ref())
                .num_always("ID", r.id)
                .num_always("TTL", r.ttl)
                .end()
                + "\n"
        }
        _ => format!("lease {:016x} keepalived with TTL({})\n", r.id, r.ttl),
    }
}

/// `lease keep-alive`: one stream, a keep-alive every third of the TTL, until the lease is
/// gone (`expired or revoked`), the stream breaks, or Ctrl-C.
async fn keep_alive(g: &GlobalArgs, fmt: Format, id: i64, once: bool) -> CtlResult {
    let bad = |m: String| CtlError::new(EXIT_BAD_CONNECTION, m);
    let conn = Conn::connect(g).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx.send(LeaseKeepAliveRequest { id }).await;
    let mut client = LeaseClient::new(conn.channel());
    let ctrl_c = super::interrupted();
    tokio::pin!(ctrl_c);
    let mut stream = tokio::select! {
        r = tokio::time::timeout(conn.command_timeout(), client.lease_keep_alive(ReceiverStream::new(rx))) => match r {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(status)) => return Err(bad(status.message().to_string())),
            Err(_) => return Err(bad(super::conn::DEADLINE.into())),
        },
        _ = &mut ctrl_c => return Ok(()),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut ctrl_c => return Ok(()),
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(bad("keep-alive stream closed".into())),
            Err(status) => return Err(bad(status.message().to_string())),
        };
        if resp.ttl <= 0 {
            if once {
                return Err(bad("etcdserver: requested lease not found".into()));
            }
            if fmt == Format::Simple {
                emit(&format!("lease {id:016x} expired or revoked.\n"));
            }
            return Ok(());
        }
        emit(&keepalive_text(fmt, &resp));
        if once {
            return Ok(());
        }
        let wait = Duration::from_secs((resp.ttl as u64 / 3).max(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Err(bad("keep-alive stream closed".into()));
        }
    }
}
