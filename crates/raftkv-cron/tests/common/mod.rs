//! Shared by the scheduler's integration tests: a one-member raftkv node started in this
//! process, and a client to it once it leads.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use raftkv_client::{Client, ClientOptions};
use raftkv_server::{Config, InitialMember, Server};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts member `m0` under `dir` on 127.0.0.1 and returns it with a client, once it has
/// elected itself (writes are not retried once sent, so the first one must find a leader).
pub async fn start_node(dir: &Path) -> (Server, Client) {
    // A port picked by free_port can be taken by a parallel test before the member binds it:
    // try a few fresh pairs.
    let mut attempt = 0;
    let (server, client_url) = loop {
        attempt += 1;
        let (client_port, peer_port) = (free_port(), free_port());
        let mut cfg = Config::new("m0", dir.join(format!("m0-{attempt}")));
        cfg.listen_client_urls = vec![format!("http://127.0.0.1:{client_port}")];
        cfg.listen_peer_urls = vec![format!("http://127.0.0.1:{peer_port}")];
        cfg.initial_advertise_peer_urls = cfg.listen_peer_urls.clone();
        cfg.initial_cluster = vec![InitialMember {
            name: "m0".into(),
            peer_urls: cfg.listen_peer_urls.clone(),
        }];
        match Server::start(cfg).await {
            Ok(server) => break (server, format!("127.0.0.1:{client_port}")),
            Err(_) if attempt < 5 => {}
            Err(e) => panic!("member start failed {attempt} times: {e}"),
        }
    };
    let client = Client::connect([client_url], ClientOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = client.status().await {
            if s.leader != 0 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, client)
}
