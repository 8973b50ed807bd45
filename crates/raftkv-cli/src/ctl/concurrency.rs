//! `lock` and `elect` over etcd's v3lock and v3election gRPC services, each holding a lease
//! (a "session") kept alive in the background until Ctrl-C, when the lock is released or
//! the leadership resigned and the lease revoked.

use std::time::Duration;

use clap::Args;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, RangeRequest, RangeResponse,
};
use raftkv_proto::v3electionpb::election_client::ElectionClient;
use raftkv_proto::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ResignRequest};
use raftkv_proto::v3lockpb::lock_client::LockClient;
use raftkv_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::conn::{Conn, Retry};
use super::format::{self, emit, Format};
use super::{CtlError, CtlResult, GlobalArgs, EXIT_ERROR};

/// Flags of `lock`.
#[derive(Args, Debug, Clone)]
pub(crate) struct LockArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Timeout for session.
    #[arg(long, default_value_t = 10)]
    pub(crate) ttl: i64,
    /// The lock name, then an optional command to run while holding it (write the command
    /// after `--` when it has flags of its own: `lock name -- sh -c 'echo $ETCD_LOCK_KEY'`).
    #[arg(value_name = "LOCKNAME> <COMMAND")]
    pub(crate) args: Vec<String>,
}

/// Flags of `elect`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ElectArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Observation mode.
    #[arg(short = 'l', long)]
    pub(crate) listen: bool,
    /// The election name and the proposal.
    #[arg(value_name = "ELECTION> <PROPOSAL")]
    pub(crate) args: Vec<String>,
}

/// A lease kept alive by a background task; `lost` fires if keep-alives stop working.
struct Session {
    id: i64,
    channel: Channel,
    lost: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl Session {
    async fn new(conn: &mut Conn, ttl: i64) -> Result<Session, CtlError> {
        let grant = conn
            .call(Retry::Never, |ch| async move {
                LeaseClient::new(ch)
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
            })
            .await?;
        let id = grant.id;
        let channel = conn.channel();
        let (lost_tx, lost) = oneshot::channel();
        let ch = channel.clone();
        let period = Duration::from_secs((grant.ttl.max(3) / 3) as u64);
        let task = tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let mut client = LeaseClient::new(ch);
            let Ok(resp) = client.lease_keep_alive(ReceiverStream::new(rx)).await else {
                let _ = lost_tx.send(());
                return;
            };
            let mut stream = resp.into_inner();
            loop {
                tokio::time::sleep(period).await;
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl > 0 => {}
                    _ => break,
                }
            }
            let _ = lost_tx.send(());
        });
        Ok(Session {
            id,
            channel,
            lost,
            task,
        })
    }

    /// Stops the keep-alives and revokes the lease.
    async fn close(self) {
        self.task.abort();
        let _ = LeaseClient::new(self.channel)
            .lease_revoke(LeaseRevokeRequest { id: self.id })
            .await;
    }
}

fn print_range(fmt: Format, r: &RangeResponse, hex: bool) {
    match fmt {
        Format::Json => emit(&(format::json_range(r) + "\n")),
        _ => {
            let mut out = String::new();
            format::simple_range(&mut out, r, hex, false);
            emit(&out);
        }
    }
}

async fn get_key(conn: &mut Conn, key: Vec<u8>) -> Result<RangeResponse, CtlError> {
    conn.call(Retry::Safe, |ch| {
        let key = key.clone();
        async move {
            KvClient::new(ch)
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await
        }
    })
    .await
}

/// `lock`.
pub(crate) async fn lock(a: LockArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    let Some(name) = a.args.first().cloned() else {
        return Err(CtlError::args(
            "lock takes a lock name argument and an optional command to execute",
        ));
    };
    let mut conn = Conn::connect(&a.global).await?;
    let mut session = Session::new(&mut conn, a.ttl).await?;
    let ctrl_c = super::interrupted();
    tokio::pin!(ctrl_c);
    let mut locks = LockClient::new(conn.channel());
    let acquire = locks.lock(LockRequest {
        name: name.into_bytes(),
        lease: session.id,
    });
    let resp = tokio::select! {
        r = acquire => match r {
            Ok(r) => r.into_inner(),
            Err(s) => {
                session.close().await;
                return Err(s.into());
            }
        },
        _ = &mut ctrl_c => {
            session.close().await;
            return Err(CtlError::new(EXIT_ERROR, "context canceled"));
        }
    };
    let key = resp.key.clone();
    let unlock = |ch: Channel, key: Vec<u8>| async move {
        LockClient::new(ch).unlock(UnlockRequest { key }).await
    };
    if a.args.len() > 1 {
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let program = a.args[1].clone();
        let rest = a.args[2..].to_vec();
        let key_text = String::from_utf8_lossy(&key).into_owned();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(program)
                .args(rest)
                .env("ETCD_LOCK_KEY", key_text)
                .env("ETCD_LOCK_REV", rev.to_string())
                .status()
        })
        .await
        .map_err(|e| CtlError::new(EXIT_ERROR, e.to_string()))?;
        let unlocked = unlock(conn.channel(), key).await;
        session.close().await;
        let status = status.map_err(|e| CtlError::new(EXIT_ERROR, e.to_string()))?;
        if !status.success() {
            let code = status.code().unwrap_or(1);
            return Err(CtlError::new(EXIT_ERROR, format!("exit status {code}")));
        }
        unlocked?;
        return Ok(());
    }
    let got = get_key(&mut conn, key.clone()).await?;
    if got.kvs.is_empty() {
        session.close().await;
        return Err(CtlError::new(EXIT_ERROR, "lock lost on init"));
    }
    print_range(fmt, &got, a.global.hex);
    tokio::select! {
        _ = &mut ctrl_c => {
            let r = unlock(conn.channel(), key).await;
            session.close().await;
            r?;
            Ok(())
        }
        _ = &mut session.lost => Err(CtlError::new(EXIT_ERROR, "session expired")),
    }
}

/// `elect`: campaign with a proposal, or observe with `-l`.
pub(crate) async fn elect(a: ElectArgs) -> CtlResult {
    let fmt = a.global.format()?.no_table()?;
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(CtlError::args(
            "elect takes one election name argument and an optional proposal argument.",
        ));
    }
    let name = a.args[0].clone().into_bytes();
    let mut conn = Conn::connect(&a.global).await?;
    let ctrl_c = super::interrupted();
    tokio::pin!(ctrl_c);
    if a.listen {
        let mut client = ElectionClient::new(conn.channel());
        let mut stream = tokio::select! {
            r = client.observe(LeaderRequest { name }) => r?.into_inner(),
            _ = &mut ctrl_c => return Ok(()),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = &mut ctrl_c => return Ok(()),
            };
            match msg {
                Ok(Some(resp)) => {
                    let r = RangeResponse {
                        header: resp.header,
                        count: i64::from(resp.kv.is_some()),
                        kvs: resp.kv.into_iter().collect(),
                        more: false,
                    };
                    print_range(fmt, &r, a.global.hex);
                }
                Ok(None) => return Err(CtlError::new(EXIT_ERROR, "elect: observer closed")),
                Err(s) => return Err(s.into()),
            }
        }
    }
    let Some(proposal) = a.args.get(1).cloned() else {
        return Err(CtlError::args("no proposal argument but -l not set"));
    };
    let mut session = Session::new(&mut conn, 60).await?;
    let mut elections = ElectionClient::new(conn.channel());
    let campaign = elections.campaign(CampaignRequest {
        name,
        lease: session.id,
        value: proposal.into_bytes(),
    });
    let leader: LeaderKey = tokio::select! {
        r = campaign => match r {
            Ok(r) => r.into_inner().leader.unwrap_or_default(),
            Err(s) => {
                session.close().await;
                return Err(s.into());
            }
        },
        _ = &mut ctrl_c => {
            session.close().await;
            return Err(CtlError::new(EXIT_ERROR, "context canceled"));
        }
    };
    let got = get_key(&mut conn, leader.key.clone()).await?;
    print_range(fmt, &got, a.global.hex);
    tokio::select! {
        _ = &mut ctrl_c => {
            let r = ElectionClient::new(conn.channel())
                .resign(ResignRequest { leader: Some(leader) })
                .await;
            session.close().await;
            r?;
            Ok(())
        }
        _ = &mut session.lost => Err(CtlError::new(EXIT_ERROR, "elect: session expired")),
    }
}
