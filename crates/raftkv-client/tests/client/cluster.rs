//! A three-member cluster in this process: real `raftkv_server::Server`s on free loopback
//! ports, in a temporary directory.

use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientOptions};
use raftkv_server::{Config, InitialMember, Server};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The running members; a stopped member's slot is `None`.
pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    configs: Vec<Config>,
    servers: Vec<Option<Server>>,
}

impl Cluster {
    /// Starts three members and waits until one of them leads.
    pub(crate) async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<InitialMember> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| InitialMember {
                name: format!("m{i}"),
                peer_urls: vec![format!("http://127.0.0.1:{p}")],
            })
            .collect();
        let configs: Vec<Config> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| {
                let mut cfg = Config::new(format!("m{i}"), dir.path().join(format!("m{i}")));
                cfg.listen_client_urls = vec![format!("http://127.0.0.1:{c}")];
                cfg.listen_peer_urls = vec![format!("http://127.0.0.1:{p}")];
                cfg.initial_advertise_peer_urls = cfg.listen_peer_urls.clone();
                cfg.initial_cluster = initial.clone();
                cfg.lease_checkpoint_interval = Duration::from_secs(1);
                cfg
            })
            .collect();
        let mut servers = Vec::new();
        for c in &configs {
            servers.push(Some(Server::start(c.clone()).await.unwrap()));
        }
        let cluster = Cluster {
            _dir: dir,
            configs,
            servers,
        };
        cluster.leader().await;
        cluster
    }

    /// Member `i`'s client URL.
    pub(crate) fn endpoint(&self, i: usize) -> String {
        self.configs[i].listen_client_urls[0].clone()
    }

    /// A client over the members in `order`.
    pub(crate) async fn client_of(&self, order: &[usize]) -> Client {
        let eps: Vec<String> = order.iter().map(|&i| self.endpoint(i)).collect();
        Client::connect(eps, ClientOptions::default())
            .await
            .unwrap()
    }

    /// A client over every member, member 0 first.
    pub(crate) async fn client(&self) -> Client {
        self.client_of(&[0, 1, 2]).await
    }

    /// The index of the leading member, waiting (bounded) for an election.
    pub(crate) async fn leader(&self) -> usize {
        let probe = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for i in 0..self.servers.len() {
                if self.servers[i].is_none() {
                    continue;
                }
                if let Ok(s) = probe.endpoint_status(&self.endpoint(i)).await {
                    if s.leader != 0 && Some(s.leader) == s.header.map(|h| h.member_id) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts member `i` down.
    pub(crate) async fn stop(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.shutdown().await.unwrap();
        }
    }

    /// Shuts every member down.
    pub(crate) async fn shutdown(mut self) {
        for i in 0..self.servers.len() {
            self.stop(i).await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
pub(crate) async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
