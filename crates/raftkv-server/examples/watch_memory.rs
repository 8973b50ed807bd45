//! Memory per idle watcher and per idle stream on the server side of the Watch service.
//!
//! ```text
//! cargo run -p raftkv-server --example watch_memory [WATCHERS] [STREAMS]
//! ```
//! The process serves the Watch service on loopback and runs the clients in a child process
//! (itself, with `client ADDR ...`), so the resident-set growth it reports is the server's
//! alone: first `WATCHERS` watchers (default 10,000) spread over 10 streams, then `STREAMS`
//! more streams (default 1,000) with one watcher each. Compare etcd's published figures: about
//! 350 B per watcher and 18 KB per stream.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use raftkv_mvcc::{Config as StoreConfig, Store};
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::etcdserverpb::watch_request::RequestUnion;
use raftkv_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use raftkv_server::header::Headers;
use raftkv_server::watch::{WatchConfig, WatchService};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// Streams per connection in the client (hyper's server allows 200 concurrent streams).
const STREAMS_PER_CONNECTION: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("client") {
        let addr = args[2].clone();
        let watchers: usize = args[3].parse().expect("watchers");
        let streams: usize = args[4].parse().expect("streams");
        rt.block_on(client(addr, watchers, streams));
    } else {
        let watchers = args.get(1).map_or(10_000, |a| a.parse().expect("watchers"));
        let streams = args.get(2).map_or(1_000, |a| a.parse().expect("streams"));
        rt.block_on(server(watchers, streams));
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn server(watchers: usize, streams: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path())).expect("store");
    let (_revisions, revisions_rx) = watch::channel(store.revision().expect("revision"));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (_status, status_rx) = watch::channel(raftkv_raft::Status {
        id: 1,
        leader: 1,
        term: 1,
        role: raft::StateRole::Leader,
        applied: 0,
    });
    let service = WatchService::new(
        store.clone(),
        revisions_rx,
        Headers::new(1, 1, status_rx),
        shutdown_rx,
        WatchConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut stop = shutdown.subscribe();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stop.wait_for(|&s| s).await;
            })
            .await
            .expect("serve");
    });

    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "client",
            &format!("http://{addr}"),
            &watchers.to_string(),
            &streams.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = move || {
        lines
            .next()
            .expect("client output")
            .expect("client output line")
    };

    assert_eq!(next_line(), "warm");
    let base = rss();
    assert_eq!(next_line(), "watchers");
    let with_watchers = rss();
    assert_eq!(next_line(), "streams");
    let with_streams = rss();

    let per_watcher = (with_watchers.saturating_sub(base)) as f64 / watchers as f64;
    let per_stream = (with_streams.saturating_sub(with_watchers)) as f64 / streams as f64;
    println!(
        "server RSS at start (one warm-up stream): {:.1} MiB",
        mib(base)
    );
    println!(
        "+{watchers} watchers on 10 streams: +{:.2} MiB = {per_watcher:.0} B per watcher",
        mib(with_watchers.saturating_sub(base))
    );
    println!(
        "+{streams} streams with one watcher each ({} connections): +{:.2} MiB = {per_stream:.0} B per stream (incl. its watcher and HTTP/2 stream state)",
        streams.div_ceil(STREAMS_PER_CONNECTION),
        mib(with_streams.saturating_sub(with_watchers))
    );

    shutdown.send_replace(true);
    child.kill().ok();
    child.wait().ok();
    server.await.ok();
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Opens a stream, creates `keys` watchers on it and waits for all their created responses.
/// Returns what keeps the stream open.
async fn open_stream(
    client: &mut WatchClient<tonic::transport::Channel>,
    keys: std::ops::Range<usize>,
) -> (
    mpsc::Sender<WatchRequest>,
    tonic::Streaming<raftkv_proto::etcdserverpb::WatchResponse>,
) {
    let n = keys.len();
    let (tx, rx) = mpsc::channel(n.max(1));
    for i in keys {
        let create = WatchCreateRequest {
            key: format!("key/{i:08}").into_bytes(),
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue create");
    }
    let mut responses = client
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    for _ in 0..n {
        let created = responses.message().await.expect("stream").expect("open");
        assert!(created.created && !created.canceled);
    }
    (tx, responses)
}

#[allow(clippy::print_stdout)]
async fn client(addr: String, watchers: usize, streams: usize) {
    let connect = || async {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        WatchClient::new(channel)
    };
    let mut keep = Vec::new();
    let mut first = connect().await;
    keep.push(open_stream(&mut first, 0..1).await);
    println!("warm");

    let per_stream = watchers.div_ceil(10);
    for s in 0..10 {
        let lo = (s * per_stream).min(watchers);
        let hi = ((s + 1) * per_stream).min(watchers);
        keep.push(open_stream(&mut first, lo..hi).await);
    }
    println!("watchers");

    let mut clients = Vec::new();
    for s in 0..streams {
        if s % STREAMS_PER_CONNECTION == 0 {
            clients.push(connect().await);
        }
        let client = clients.last_mut().expect("a client");
        keep.push(open_stream(client, watchers + s..watchers + s + 1).await);
    }
    println!("streams");
    // Stay until the server is done measuring (it kills this process).
    std::future::pending::<()>().await;
}
