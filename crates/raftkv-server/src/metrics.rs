//! Observability over HTTP/1 on `--listen-metrics-urls` (etcd's flag): `/metrics` in the
//! Prometheus text format and `/health` as etcd answers it (`{"health":"true","reason":""}`,
//! 503 when the member has no leader or cannot serve a linearizable read).
//!
//! Metrics are recorded through the `metrics` facade where things happen (the WAL's fsync in
//! `raftkv-raft`, proposals in `context`, applies in `apply`, watchers in `watch`); gauges that
//! are cheap to read (leader, indexes, db size, leases) are set when scraped. Names follow
//! etcd's where etcd has one, so existing dashboards work.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use raft::StateRole;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::Ctx;

/// Latency buckets, in seconds, for every `*_duration_seconds` histogram (etcd's WAL fsync
/// buckets: 1 ms doubling to ~8 s, plus finer ones below 1 ms for fast disks).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024, 2.048, 4.096, 8.192,
];

/// The process-wide Prometheus recorder, installed on first use. `None` if another recorder
/// was installed first (an embedding application's own): then `/metrics` is empty.
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Installs the recorder now, so that metrics recorded before the first scrape are kept.
pub fn install() {
    let _ = recorder();
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Ctx,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(health))
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn render(State(ctx): State<Ctx>) -> String {
    let st = ctx.headers.status();
    metrics::gauge!("etcd_server_has_leader").set(f64::from(u8::from(st.leader != 0)));
    metrics::gauge!("etcd_server_is_leader").set(f64::from(u8::from(st.role == StateRole::Leader)));
    metrics::gauge!("etcd_server_proposals_applied_total").set(st.applied as f64);
    metrics::gauge!("raftkv_raft_term").set(st.term as f64);
    metrics::gauge!("etcd_mvcc_db_total_size_in_bytes").set(*ctx.db_size.borrow() as f64);
    if let Ok(leases) = ctx.store.leases() {
        metrics::gauge!("raftkv_leases").set(leases.len() as f64);
    }
    if let Ok(rev) = ctx.store.revision() {
        metrics::gauge!("raftkv_mvcc_revision").set(rev as f64);
    }
    match recorder() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

async fn health(State(ctx): State<Ctx>) -> (StatusCode, String) {
    let unhealthy = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"health":"false","reason":"{reason}"}}"#),
        )
    };
    if ctx.headers.status().leader == 0 {
        return unhealthy("RAFT NO LEADER");
    }
    match tokio::time::timeout(Duration::from_secs(2), ctx.read_barrier(false)).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        _ => unhealthy("QGET ERROR"),
    }
}

/// Counts leader changes seen by this member (etcd's `etcd_server_leader_changes_seen_total`).
pub async fn count_leader_changes(
    mut status: watch::Receiver<raftkv_raft::Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leader = status.borrow_and_update().leader;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            r = status.changed() => {
                if r.is_err() {
                    return;
                }
                let now = status.borrow_and_update().leader;
                if now != 0 && now != leader {
                    metrics::counter!("etcd_server_leader_changes_seen_total").increment(1);
                }
                if now != 0 {
                    leader = now;
                }
            }
        }
    }
}
