//! [`Server`]: one running member, and the embedding API. `start` opens the data dir (the Raft
//! WAL in `wal/`, the store in `db/`, the membership table in `cluster`), binds every listener
//! before anything else (so a port in use fails fast), starts the Raft node thread, the lessor,
//! the peer transport and the gRPC servers, and publishes this member's client URLs through
//! Raft. `shutdown` undoes it in order: streams end, servers drain, Raft stops, the store syncs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raftkv_mvcc::Store;
use raftkv_proto::raftkvpb::{raft_request::Request, MemberAttributes};
use raftkv_raft::{CoreConfig, NodeConfig, StorageConfig, WalStorage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use crate::apply::{Machine, Outlets};
use crate::cluster::ClusterService;
use crate::concurrency::{ElectionService, LockService};
use crate::config::{parse_url, ClusterState, Config};
use crate::context::{Ctx, Limits};
use crate::error::{Error, Result};
use crate::header::Headers;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lessor::{self, LessorConfig};
use crate::maintenance::MaintenanceService;
use crate::members::Cluster;
use crate::transport::{PeerService, PeerTransport};
use crate::watch::{WatchConfig, WatchService};

/// Slack above `--max-request-bytes` that gRPC itself accepts, as etcd allows (512 KiB): requests
/// in between get etcd's "request is too large" rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How often buffered store changes are committed to sled.
const STORE_COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Why a node stopped when the Raft thread ended on its own error (logged where it happened).
const RAFT_STOPPED: &str = "the raft node stopped on an error (see the log above)";

/// A running member: its Raft node, store, lessor and gRPC servers.
pub struct Server {
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    metrics_addrs: Vec<SocketAddr>,
    member_id: u64,
    store: Store,
    node: raftkv_raft::NodeHandle<crate::apply::Output>,
    /// Becomes true when the Raft node thread has exited.
    raft_done: watch::Receiver<bool>,
    servers: Vec<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    shutdown: watch::Sender<bool>,
    fatal: watch::Receiver<Option<String>>,
}

fn io_dir(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

async fn bind(url: &str) -> Result<TcpListener> {
    let addr = parse_url(url)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Server {
    /// Validates `config`, opens (or creates) the data dir, starts Raft and binds the client and
    /// peer listeners. Returns once every listener is bound; the cluster may still be electing.
    pub async fn start(config: Config) -> Result<Server> {
        config.validate()?;
        let data = config.data_dir.clone();
        std::fs::create_dir_all(&data).map_err(io_dir(&data))?;
        let cluster_path = data.join("cluster");
        // A member started with `existing` and no table yet joins a running cluster that added
        // it (MemberAdd): it bootstraps no Raft log and learns everything from the leader.
        let (cluster, joining) = match Cluster::load(&cluster_path)? {
            Some(c) => (c, false),
            None => {
                let c = Cluster::bootstrap(&config);
                c.save(&cluster_path)?;
                (c, config.initial_cluster_state == ClusterState::Existing)
            }
        };
        let member_id = cluster.id_of(&config.name).ok_or_else(|| {
            Error::Config(format!(
                "this data dir belongs to a cluster without a member named {:?} (--name)",
                config.name
            ))
        })?;

        // Listeners first: a port in use must fail before anything starts.
        let mut client_listeners = Vec::new();
        for u in &config.listen_client_urls {
            client_listeners.push(bind(u).await?);
        }
        let mut peer_listeners = Vec::new();
        for u in &config.listen_peer_urls {
            peer_listeners.push(bind(u).await?);
        }
        let mut metrics_listeners = Vec::new();
        for u in &config.listen_metrics_urls {
            metrics_listeners.push(bind(u).await?);
        }
        crate::metrics::install();
        let addrs = |ls: &[TcpListener]| -> Result<Vec<SocketAddr>> {
            ls.iter()
                .map(|l| l.local_addr().map_err(io_dir(&data)))
                .collect()
        };
        let client_addrs = addrs(&client_listeners)?;
        let peer_addrs = addrs(&peer_listeners)?;

        let mut store_cfg = raftkv_mvcc::Config::new(data.join("db"));
        store_cfg.cache_capacity = config.backend_cache_bytes;
        store_cfg.min_lease_ttl = config.min_lease_ttl();
        store_cfg.max_txn_ops = config.max_txn_ops;
        let store = Store::open(store_cfg)?;
        let (storage, recovered) = WalStorage::open(data.join("wal"), StorageConfig::default())?;
        if let Some(t) = &recovered.truncated_tail {
            tracing::warn!(tail = ?t, "WAL had a torn tail; truncated");
        }

        let (revision_tx, revision_rx) = watch::channel(store.revision()?);
        let (cluster_tx, cluster_rx) = watch::channel(Arc::new(cluster.clone()));
        let (lease_tx, lease_rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let machine = Machine::new(
            store.clone(),
            cluster.clone(),
            cluster_path,
            Outlets {
                revision: revision_tx,
                cluster: cluster_tx,
                leases: lease_tx,
                fatal: fatal_tx,
            },
        );

        let peers: Vec<(u64, Vec<String>)> = cluster
            .members
            .values()
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        let transport = PeerTransport::new(tokio::runtime::Handle::current(), member_id, peers)
            .map_err(|e| Error::Config(format!("peer transport: {e}")))?;
        let mut core = CoreConfig::new(member_id);
        core.election_tick = config.election_ticks();
        core.heartbeat_tick = 1;
        core.snapshot_every = config.snapshot_count;
        core.keep_entries = (config.snapshot_count / 2).max(1);
        let node_cfg = NodeConfig {
            core,
            tick: config.heartbeat_interval,
            request_timeout: config.request_timeout,
        };
        let voters: Vec<u64> = if joining {
            Vec::new()
        } else {
            cluster.members.keys().copied().collect()
        };
        let (node, raft_thread) =
            raftkv_raft::node::start(node_cfg, storage, machine, &voters, transport.clone())?;
        tokio::spawn(
            sync_peers(transport.clone(), cluster_rx.clone(), member_id).in_current_span(),
        );
        let reporter = node.clone();
        transport.on_unreachable(Box::new(move |peer| reporter.report_unreachable(peer)));

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (db_size_tx, db_size_rx) = watch::channel(store.size_on_disk()?);
        let headers = Headers::from_table(cluster_rx.clone(), member_id, node.watch_status());
        let ctx = Ctx {
            node: node.clone(),
            store: store.clone(),
            headers: headers.clone(),
            cluster: cluster_rx,
            db_size: db_size_rx,
            limits: Limits {
                max_request_bytes: config.max_request_bytes,
                quota_backend_bytes: config.quota_backend_bytes,
            },
        };
        let lessor = lessor::spawn(
            ctx.clone(),
            lease_rx,
            LessorConfig {
                checkpoint_interval: config.lease_checkpoint_interval,
                revoke_rate: config.lease_revoke_rate,
                promotion_grace: config.election_timeout,
            },
            shutdown_rx.clone(),
        );

        let mut servers = Vec::new();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        // One watch service (one hub reading the store) shared by every client listener;
        // responses are cut at etcd's bound, max-request-bytes plus gRPC's overhead.
        let revisions = revision_rx.clone();
        let watch_service = WatchService::new(
            store.clone(),
            revision_rx,
            headers.clone(),
            shutdown_rx.clone(),
            WatchConfig {
                max_response_bytes: config.max_request_bytes + GRPC_OVERHEAD_BYTES,
                ..WatchConfig::default()
            },
        );
        for listener in client_listeners {
            // One lease service for gRPC and the JSON gateway: one lease-id generator.
            let lease = Arc::new(LeaseService::new(
                ctx.clone(),
                lessor.clone(),
                shutdown_rx.clone(),
            ));
            let gateway = crate::gateway::Gateway::new(crate::gateway::Services {
                kv: KvService::new(ctx.clone(), config.max_txn_ops),
                lease: Arc::clone(&lease),
                watch: watch_service.clone(),
                cluster: ClusterService::new(
                    ctx.clone(),
                    config.initial_cluster_token.clone(),
                    config.request_timeout,
                ),
                maintenance: MaintenanceService::new(
                    ctx.clone(),
                    config.request_timeout,
                    data.clone(),
                ),
                max_message_bytes: config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            });
            let router = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                // HTTP/1.1 for the JSON gateway; gRPC stays on HTTP/2.
                .accept_http1(true)
                // What etcd's learners refuse, gRPC and gateway alike.
                .layer(crate::learner::LearnerLayer::new(ctx.clone()))
                .add_service(health_service.clone())
                .add_service(KvService::new(ctx.clone(), config.max_txn_ops).into_server())
                .add_service(watch_service.clone().into_server())
                .add_service(
                    raftkv_proto::etcdserverpb::lease_server::LeaseServer::from_arc(lease)
                        .max_decoding_message_size(config.max_request_bytes + GRPC_OVERHEAD_BYTES),
                )
                .add_service(
                    ClusterService::new(
                        ctx.clone(),
                        config.initial_cluster_token.clone(),
                        config.request_timeout,
                    )
                    .into_server(),
                )
                .add_service(LockService::new(ctx.clone(), revisions.clone()).into_server())
                .add_service(ElectionService::new(ctx.clone(), revisions.clone()).into_server())
                .add_service(
                    MaintenanceService::new(ctx.clone(), config.request_timeout, data.clone())
                        .into_server(),
                )
                .add_service(gateway.v3())
                .add_service(gateway.v3beta());
            let stop = wait_true(shutdown_rx.clone());
            servers.push(tokio::spawn(
                router.serve_with_incoming_shutdown(client_incoming(listener), stop),
            ));
        }
        for listener in peer_listeners {
            let peer = PeerService::new(node.clone());
            let closer = peer.closer();
            let router = tonic::transport::Server::builder().add_service(peer.into_server());
            let rx = shutdown_rx.clone();
            let stop = async move {
                wait_true(rx).await;
                closer.close();
            };
            servers.push(tokio::spawn(
                router.serve_with_incoming_shutdown(incoming(listener), stop),
            ));
        }

        let mut metrics_addrs = Vec::new();
        for listener in metrics_listeners {
            metrics_addrs.push(listener.local_addr().map_err(io_dir(&data))?);
            let serve = crate::metrics::serve(listener, ctx.clone(), shutdown_rx.clone());
            tokio::spawn(
                async move {
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "metrics listener stopped");
                    }
                }
                .in_current_span(),
            );
        }
        tokio::spawn(
            crate::metrics::count_leader_changes(node.watch_status(), shutdown_rx.clone())
                .in_current_span(),
        );
        let attrs = MemberAttributes {
            id: member_id,
            name: config.name.clone(),
            client_urls: config.client_urls().to_vec(),
        };
        tokio::spawn(publish_attributes(ctx.clone(), attrs, shutdown_rx.clone()).in_current_span());
        tokio::spawn(commit_store(store.clone(), db_size_tx, shutdown_rx).in_current_span());

        if joining {
            // Until the leader's log (or snapshot) brings it, a joining member's table holds a
            // provisional cluster id (derived from its own --initial-cluster): not logged.
            tracing::info!(
                name = %config.name,
                member = format_args!("{member_id:x}"),
                clients = ?client_addrs,
                peers = ?peer_addrs,
                "member started, joining an existing cluster"
            );
            tokio::spawn(log_joined(ctx.cluster.clone(), cluster.cluster_id).in_current_span());
        } else {
            tracing::info!(
                name = %config.name,
                member = format_args!("{member_id:x}"),
                cluster = format_args!("{:x}", cluster.cluster_id),
                clients = ?client_addrs,
                peers = ?peer_addrs,
                "member started"
            );
        }
        Ok(Server {
            client_addrs,
            peer_addrs,
            metrics_addrs,
            member_id,
            store,
            node,
            raft_done: watch_thread(raft_thread)?,
            servers,
            shutdown: shutdown_tx,
            fatal: fatal_rx,
        })
    }

    /// The bound client addresses (the actual ports when the URLs said port 0).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The bound metrics addresses (`--listen-metrics-urls`).
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.metrics_addrs
    }

    /// The bound peer addresses.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// Resolves when the node stops by itself (the store or the Raft log failed); returns why.
    pub async fn stopped(&mut self) -> Result<()> {
        let mut done = self.raft_done.clone();
        tokio::select! {
            r = self.fatal.wait_for(Option::is_some) => {
                // The sender goes away with the state machine when the Raft node stops on its
                // own error (e.g. the WAL cannot write): that error is logged by the node.
                let why = r.ok().and_then(|w| w.clone());
                Err(Error::Stopped(why.unwrap_or_else(|| RAFT_STOPPED.into())))
            }
            _ = done.wait_for(|d| *d) => Err(Error::Stopped(RAFT_STOPPED.into())),
        }
    }

    /// Stops serving: ends streams, drains the gRPC servers, stops Raft and syncs the store.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!(
            member = format_args!("{:x}", self.member_id),
            "shutting down"
        );
        let _ = self.shutdown.send(true);
        for mut s in self.servers.drain(..) {
            match tokio::time::timeout(Duration::from_secs(5), &mut s).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
                Err(_) => {
                    tracing::warn!("gRPC server did not drain within 5 s; closing its connections");
                    s.abort();
                }
            }
        }
        self.node.stop();
        let _ = self.raft_done.wait_for(|d| *d).await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(|e| Error::Stopped(format!("store sync task: {e}")))??;
        Ok(())
    }
}

/// A receiver that turns true once `thread` has exited (joined on a small helper thread).
fn watch_thread(thread: std::thread::JoinHandle<()>) -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("raft-node-join".into())
        .spawn(move || {
            let _ = thread.join();
            let _ = tx.send(true);
        })
        .map_err(|e| Error::Stopped(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

/// Accepted connections with `TCP_NODELAY` set: tonic's builder option only applies to the
/// listeners it binds itself, and without it small responses wait on Nagle (~40 ms).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Accepted client connections, each behind the filter that cuts etcdctl's URL-form
/// `:authority` to `host:port` (see [`crate::authority`]).
fn client_incoming(
    listener: TcpListener,
) -> impl futures_util::Stream<
    Item = std::io::Result<crate::authority::AuthorityFilter<tokio::net::TcpStream>>,
> {
    use futures_util::StreamExt;
    incoming(listener).map(|conn| conn.map(crate::authority::AuthorityFilter::new))
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Keeps the transport's links equal to the membership table: a link per other member, at its
/// current peer URLs.
async fn sync_peers(transport: PeerTransport, mut cluster: watch::Receiver<Arc<Cluster>>, me: u64) {
    let mut known: std::collections::BTreeMap<u64, Vec<String>> = cluster
        .borrow()
        .members
        .values()
        .filter(|m| m.id != me)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    while cluster.changed().await.is_ok() {
        let now: std::collections::BTreeMap<u64, Vec<String>> = cluster
            .borrow_and_update()
            .members
            .values()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        for (id, urls) in &now {
            if known.get(id) != Some(urls) && !urls.is_empty() {
                if let Err(e) = transport.add_peer(*id, urls.clone()) {
                    tracing::warn!(peer = id, error = %e, "cannot link to a new member");
                }
            }
        }
        for id in known.keys().filter(|id| !now.contains_key(id)) {
            transport.remove_peer(*id);
        }
        known = now;
    }
}

/// Logs the cluster id a joining member learns from the leader, once its table holds it
/// instead of the `provisional` one it started with.
async fn log_joined(mut table: watch::Receiver<Arc<Cluster>>, provisional: u64) {
    if let Ok(c) = table.wait_for(|c| c.cluster_id != provisional).await {
        tracing::info!(
            cluster = format_args!("{:x}", c.cluster_id),
            "joined the cluster"
        );
    }
}

/// Proposes this member's client URLs until the membership table shows them (etcd's publish),
/// each time as soon as a leader is known.
async fn publish_attributes(ctx: Ctx, attrs: MemberAttributes, shutdown: watch::Receiver<bool>) {
    let mut status = ctx.node.watch_status();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let current = ctx.cluster.borrow().members.get(&attrs.id).cloned();
        if current.is_some_and(|m| m.name == attrs.name && m.client_ur_ls == attrs.client_urls) {
            tracing::debug!("member attributes published");
            return;
        }
        if status.wait_for(|s| s.leader != 0).await.is_err() {
            return;
        }
        if let Err(e) = ctx.propose(Request::MemberAttributes(attrs.clone())).await {
            tracing::debug!(error = %e.message(), "publishing member attributes; will retry");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Commits buffered store changes to sled every [`STORE_COMMIT_EVERY`], and publishes the
/// store's size on disk for the quota check.
async fn commit_store(
    store: Store,
    db_size: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(STORE_COMMIT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.commit().and_then(|()| s.size_on_disk())).await {
                    Ok(Ok(size)) => {
                        db_size.send_replace(size);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "store commit failed");
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    }
}
