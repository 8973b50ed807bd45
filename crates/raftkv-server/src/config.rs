//! A node's configuration: etcd's settings under etcd's names, already parsed. The `raftkv serve`
//! command fills it from flags, `RAFTKV_*` variables and a TOML file; embedders build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Whether this node founds a new cluster or joins an existing one (`--initial-cluster-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `initial_cluster`.
    #[default]
    New,
    /// Join a running cluster this member was added to.
    Existing,
}

/// One entry of `--initial-cluster`: a member's name and its peer URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// The member's `--name`.
    pub name: String,
    /// Its advertised peer URLs, e.g. `http://127.0.0.1:2380`.
    pub peer_urls: Vec<String>,
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--name`: this member's human-readable name; must appear in `initial_cluster`.
    pub name: String,
    /// `--data-dir`: holds `wal/` (the Raft log) and `db/` (the MVCC store).
    pub data_dir: PathBuf,
    /// `--listen-client-urls`: where the etcd API is served (`http://host:port`; port 0 picks one).
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls`: what MemberList tells clients. Empty = the listen URLs.
    pub advertise_client_urls: Vec<String>,
    /// `--listen-metrics-urls`: where `/metrics` and `/health` are served over HTTP/1 (none by
    /// default, as etcd).
    pub listen_metrics_urls: Vec<String>,
    /// `--listen-peer-urls`: where other members send Raft traffic.
    pub listen_peer_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`: this member's peer URLs as the others know them.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`: every founding member, this one included.
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`: mixed into member and cluster ids, so two clusters built from
    /// the same URLs do not take each other's traffic.
    pub initial_cluster_token: String,
    /// `--heartbeat-interval` (etcd: 100 ms). One Raft tick.
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (etcd: 1000 ms). Also sets the minimum lease TTL, ceil(1.5 x this).
    pub election_timeout: Duration,
    /// `--max-request-bytes` (etcd: 1.5 MiB): larger requests get "etcdserver: request is too
    /// large".
    pub max_request_bytes: usize,
    /// `--max-txn-ops` (etcd: 128).
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes` (etcd: 2 GiB): above it the NOSPACE alarm is raised and writes
    /// are refused until it is disarmed.
    pub quota_backend_bytes: u64,
    /// `--snapshot-count`: applied entries between Raft log compactions.
    pub snapshot_count: u64,
    /// `--backend-cache-bytes`: sled's page cache.
    pub backend_cache_bytes: u64,
    /// `--lease-checkpoint-interval`: how often the leader records leases' remaining TTLs
    /// through Raft, so a new leader keeps their deadlines.
    pub lease_checkpoint_interval: Duration,
    /// `--lease-revoke-rate`: most expired leases revoked per second (etcd: 1000).
    pub lease_revoke_rate: u32,
    /// How long a write or linearizable read may wait for Raft before "request timed out".
    pub request_timeout: Duration,
}

impl Config {
    /// A single-member cluster named `name` in `data_dir`, on etcd's default ports, with etcd's
    /// defaults for everything else.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let name = name.into();
        let peer = "http://127.0.0.1:2380".to_string();
        Config {
            initial_cluster: vec![InitialMember {
                name: name.clone(),
                peer_urls: vec![peer.clone()],
            }],
            name,
            data_dir: data_dir.into(),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: Vec::new(),
            listen_metrics_urls: Vec::new(),
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 << 30,
            snapshot_count: 10_000,
            backend_cache_bytes: 64 << 20,
            lease_checkpoint_interval: Duration::from_secs(5),
            lease_revoke_rate: 1000,
            request_timeout: Duration::from_secs(7),
        }
    }

    /// Checks the settings against each other; the error names the flag at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.name.is_empty() {
            return bad("--name must not be empty".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("--data-dir must not be empty".into());
        }
        if self.listen_client_urls.is_empty() {
            return bad("--listen-client-urls must name at least one URL".into());
        }
        if self.listen_peer_urls.is_empty() {
            return bad("--listen-peer-urls must name at least one URL".into());
        }
        for u in self
            .listen_client_urls
            .iter()
            .chain(&self.advertise_client_urls)
            .chain(&self.listen_metrics_urls)
            .chain(&self.listen_peer_urls)
            .chain(&self.initial_advertise_peer_urls)
            .chain(self.initial_cluster.iter().flat_map(|m| &m.peer_urls))
        {
            parse_url(u)?;
        }
        if !self.initial_cluster.iter().any(|m| m.name == self.name) {
            return bad(format!(
                "--initial-cluster has no member named {:?} (--name)",
                self.name
            ));
        }
        let mut names: Vec<&str> = self.initial_cluster.iter().map(|m| &*m.name).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("--initial-cluster names a member twice".into());
        }
        if self.heartbeat_interval.is_zero() {
            return bad("--heartbeat-interval must be positive".into());
        }
        if self.election_timeout < self.heartbeat_interval * 5 {
            return bad(format!(
                "--election-timeout ({} ms) must be at least 5 x --heartbeat-interval ({} ms)",
                self.election_timeout.as_millis(),
                self.heartbeat_interval.as_millis()
            ));
        }
        if self.max_request_bytes == 0 {
            return bad("--max-request-bytes must be positive".into());
        }
        if self.max_txn_ops == 0 {
            return bad("--max-txn-ops must be positive".into());
        }
        if self.quota_backend_bytes == 0 {
            return bad("--quota-backend-bytes must be positive".into());
        }
        if self.snapshot_count == 0 {
            return bad("--snapshot-count must be positive".into());
        }
        if self.lease_revoke_rate == 0 {
            return bad("--lease-revoke-rate must be positive".into());
        }
        Ok(())
    }

    /// Raft ticks per election timeout.
    pub fn election_ticks(&self) -> usize {
        let ticks = self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1);
        usize::try_from(ticks).unwrap_or(usize::MAX).max(2)
    }

    /// etcd's minimum lease TTL: ceil(1.5 x election timeout), in seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.election_timeout.as_millis() as i64 * 3 / 2;
        (ms + 999) / 1000
    }

    /// The client URLs to advertise: `advertise_client_urls`, or the listen URLs.
    pub fn client_urls(&self) -> &[String] {
        if self.advertise_client_urls.is_empty() {
            &self.listen_client_urls
        } else {
            &self.advertise_client_urls
        }
    }
}

/// Parses `http://host:port` (or `https://`, or a bare `host:port`) into a socket address.
/// Host names other than `localhost` are not resolved: give an IP address.
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let bad = || Error::Config(format!("bad URL {url:?}: expected http://IP:PORT"));
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    if let Some(port) = rest.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    rest.parse().map_err(|_| bad())
}

/// Parses etcd's `--initial-cluster` syntax: `name=url,name=url,...` (a name may repeat to give
/// several URLs).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>> {
    let mut out: Vec<InitialMember> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(Error::Config(format!(
                "--initial-cluster: {part:?} is not name=URL"
            )));
        };
        parse_url(url)?;
        match out.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => out.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if out.is_empty() {
        return Err(Error::Config("--initial-cluster is empty".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_initial_cluster_parse() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(
            parse_url("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert!(parse_url("http://example.com:80").is_err());
        assert!(parse_url("http://127.0.0.1").is_err());
        let c = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://[::1]:3")
            .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].peer_urls.len(), 2);
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn validate_names_the_flag() {
        let dir = PathBuf::from("/tmp/x");
        assert!(Config::new("a", &dir).validate().is_ok());
        let mut c = Config::new("a", &dir);
        c.name = "b".into();
        assert!(c.validate().unwrap_err().to_string().contains("--name"));
        let mut c = Config::new("a", &dir);
        c.election_timeout = Duration::from_millis(200);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--election-timeout"));
        assert_eq!(Config::new("a", &dir).min_lease_ttl(), 2);
        assert_eq!(Config::new("a", &dir).election_ticks(), 10);
    }
}
