//! `raftkv serve`'s flags, under etcd's names, and their resolution into a
//! [`crate::Config`]: flag > `RAFTKV_*` variable > config file > etcd's default.
//!
//! Every flag is an `Option` with no clap default, so `None` means "neither the command line nor
//! the environment set it"; [`ServeArgs::or`] then fills it from the file and
//! [`ServeArgs::into_settings`] from the defaults.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::{parse_initial_cluster, parse_url};
use crate::{ClusterState, Config, InitialMember};

/// etcd's default `--listen-client-urls` (and so, by default, the advertised client URL).
const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's default `--listen-peer-urls` and `--initial-advertise-peer-urls`.
const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default `--name`.
const DEFAULT_NAME: &str = "default";
/// The default log filter.
const DEFAULT_LOG_LEVEL: &str = "info";

/// `raftkv serve`'s flags (the command's help, shown by `raftkv serve --help`, is on the
/// binary's subcommand). Each is `None` unless the command line or the environment set it.
/// Flatten it into a clap command (`#[command(flatten)]`) to accept etcd's flags.
#[derive(Args, Debug, Default, Clone, PartialEq)]
pub struct ServeArgs {
    /// Human-readable name for this member [default: default]
    #[arg(long, env = "RAFTKV_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Path to the data directory [default: NAME.etcd, NAME being --name]
    #[arg(long, env = "RAFTKV_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Comma-separated URLs to listen on for client traffic [default: http://localhost:2379]
    #[arg(long, env = "RAFTKV_LISTEN_CLIENT_URLS", value_name = "URLS")]
    pub listen_client_urls: Option<UrlList>,

    /// Comma-separated client URLs to advertise to the cluster [default: the listen URLs]
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT_URLS", value_name = "URLS")]
    pub advertise_client_urls: Option<UrlList>,

    /// Comma-separated URLs to serve /metrics and /health on over HTTP [default: none]
    #[arg(long, env = "RAFTKV_LISTEN_METRICS_URLS", value_name = "URLS")]
    pub listen_metrics_urls: Option<UrlList>,

    /// Comma-separated URLs to listen on for peer traffic [default: http://localhost:2380]
    #[arg(long, env = "RAFTKV_LISTEN_PEER_URLS", value_name = "URLS")]
    pub listen_peer_urls: Option<UrlList>,

    /// Comma-separated peer URLs of this member, as the others reach it
    /// [default: http://localhost:2380]
    #[arg(long, env = "RAFTKV_INITIAL_ADVERTISE_PEER_URLS", value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<UrlList>,

    /// Every founding member, as name=peer-URL,... (a name may repeat)
    /// [default: NAME=URLS, from --name and --initial-advertise-peer-urls]
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER", value_name = "NAME=URL,...")]
    pub initial_cluster: Option<InitialCluster>,

    /// Found a new cluster, or join an existing one [default: new]
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_STATE", value_name = "STATE")]
    pub initial_cluster_state: Option<InitialClusterState>,

    /// Token that keeps clusters built from the same URLs apart [default: etcd-cluster]
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_TOKEN", value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,

    /// Time of one heartbeat (one Raft tick), in milliseconds [default: 100]
    #[arg(long, env = "RAFTKV_HEARTBEAT_INTERVAL", value_name = "MS")]
    pub heartbeat_interval: Option<u64>,

    /// Time without a leader before an election, in milliseconds [default: 1000]
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT", value_name = "MS")]
    pub election_timeout: Option<u64>,

    /// Largest client request accepted, in bytes [default: 1572864]
    #[arg(long, env = "RAFTKV_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Most operations in one transaction [default: 128]
    #[arg(long, env = "RAFTKV_MAX_TXN_OPS", value_name = "N")]
    pub max_txn_ops: Option<usize>,

    /// Backend size above which the NOSPACE alarm refuses writes, in bytes [default: 2147483648]
    #[arg(long, env = "RAFTKV_QUOTA_BACKEND_BYTES", value_name = "BYTES")]
    pub quota_backend_bytes: Option<u64>,

    /// Applied entries between Raft log compactions [default: 10000]
    #[arg(long, env = "RAFTKV_SNAPSHOT_COUNT", value_name = "N")]
    pub snapshot_count: Option<u64>,

    /// Storage page cache, in bytes [default: 67108864]
    #[arg(long, env = "RAFTKV_BACKEND_CACHE_BYTES", value_name = "BYTES")]
    pub backend_cache_bytes: Option<u64>,

    /// How often the leader records leases' remaining TTLs: a Go duration such as 5s, 500ms or
    /// 1m30s, or a bare number of milliseconds [default: 5s]
    #[arg(
        long,
        env = "RAFTKV_LEASE_CHECKPOINT_INTERVAL",
        value_name = "DURATION"
    )]
    pub lease_checkpoint_interval: Option<GoDuration>,

    /// Most expired leases revoked per second [default: 1000]
    #[arg(long, env = "RAFTKV_LEASE_REVOKE_RATE", value_name = "N")]
    pub lease_revoke_rate: Option<u32>,

    /// Log filter: trace, debug, info, warn or error, or tracing's EnvFilter directives such as
    /// "info,raft=debug" [default: info]
    #[arg(long, env = "RAFTKV_LOG", value_name = "LEVEL")]
    pub log_level: Option<LogFilter>,

    /// TOML file of settings, keyed by flag name (name = "n1", data-dir = "n1.etcd", ...)
    #[arg(long, env = "RAFTKV_CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
}

/// The settings `raftkv serve` runs with.
#[derive(Debug)]
pub struct Settings {
    /// The node's configuration, validated.
    pub config: Config,
    /// The log filter (EnvFilter syntax).
    pub log_filter: String,
}

impl ServeArgs {
    /// Fills every setting `self` leaves unset from `lower`, a source of lower precedence.
    pub fn or(self, lower: ServeArgs) -> ServeArgs {
        // A struct literal naming every field: a new flag that is not merged here won't compile.
        ServeArgs {
            name: self.name.or(lower.name),
            data_dir: self.data_dir.or(lower.data_dir),
            listen_client_urls: self.listen_client_urls.or(lower.listen_client_urls),
            advertise_client_urls: self.advertise_client_urls.or(lower.advertise_client_urls),
            listen_metrics_urls: self.listen_metrics_urls.or(lower.listen_metrics_urls),
            listen_peer_urls: self.listen_peer_urls.or(lower.listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(lower.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(lower.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(lower.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(lower.initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            election_timeout: self.election_timeout.or(lower.election_timeout),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(lower.max_txn_ops),
            quota_backend_bytes: self.quota_backend_bytes.or(lower.quota_backend_bytes),
            snapshot_count: self.snapshot_count.or(lower.snapshot_count),
            backend_cache_bytes: self.backend_cache_bytes.or(lower.backend_cache_bytes),
            lease_checkpoint_interval: self
                .lease_checkpoint_interval
                .or(lower.lease_checkpoint_interval),
            lease_revoke_rate: self.lease_revoke_rate.or(lower.lease_revoke_rate),
            log_level: self.log_level.or(lower.log_level),
            config_file: self.config_file.or(lower.config_file),
        }
    }

    /// Reads `--config-file` (if set) as the layer below `self`, then resolves the settings as
    /// [`into_settings`](Self::into_settings) does. The error is one line.
    pub fn resolve(self) -> Result<Settings, String> {
        let file = match &self.config_file {
            Some(path) => super::file::load(path)?,
            None => ServeArgs::default(),
        };
        self.or(file).into_settings()
    }

    /// Applies etcd's defaults to what is still unset and validates the result. The error is
    /// one line naming the flag at fault.
    pub fn into_settings(self) -> Result<Settings, String> {
        let name = self.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
        let mut config = Config::new(name.clone(), data_dir);
        let urls = |list: Option<UrlList>, default: &str| {
            list.map_or_else(|| vec![default.to_string()], |l| l.0)
        };
        config.listen_client_urls = urls(self.listen_client_urls, DEFAULT_CLIENT_URL);
        config.advertise_client_urls = self.advertise_client_urls.map(|l| l.0).unwrap_or_default();
        config.listen_metrics_urls = self.listen_metrics_urls.map(|l| l.0).unwrap_or_default();
        config.listen_peer_urls = urls(self.listen_peer_urls, DEFAULT_PEER_URL);
        config.initial_advertise_peer_urls =
            urls(self.initial_advertise_peer_urls, DEFAULT_PEER_URL);
        config.initial_cluster = match self.initial_cluster {
            Some(cluster) => cluster.0,
            None => vec![InitialMember {
                name,
                peer_urls: config.initial_advertise_peer_urls.clone(),
            }],
        };
        if let Some(state) = self.initial_cluster_state {
            config.initial_cluster_state = state.into();
        }
        if let Some(token) = self.initial_cluster_token {
            config.initial_cluster_token = token;
        }
        if let Some(ms) = self.heartbeat_interval {
            config.heartbeat_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.election_timeout {
            config.election_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_request_bytes {
            config.max_request_bytes = n;
        }
        if let Some(n) = self.max_txn_ops {
            config.max_txn_ops = n;
        }
        if let Some(n) = self.quota_backend_bytes {
            config.quota_backend_bytes = n;
        }
        if let Some(n) = self.snapshot_count {
            config.snapshot_count = n;
        }
        if let Some(n) = self.backend_cache_bytes {
            config.backend_cache_bytes = n;
        }
        if let Some(d) = self.lease_checkpoint_interval {
            config.lease_checkpoint_interval = d.0;
        }
        if let Some(n) = self.lease_revoke_rate {
            config.lease_revoke_rate = n;
        }
        config.validate().map_err(|e| server_message(&e))?;
        let log_filter = self
            .log_level
            .map_or_else(|| DEFAULT_LOG_LEVEL.to_string(), |f| f.0);
        Ok(Settings { config, log_filter })
    }
}

/// A server error's message, without the "invalid configuration:" prefix when it is one.
pub fn server_message(e: &crate::Error) -> String {
    match e {
        crate::Error::Config(message) => message.clone(),
        other => other.to_string(),
    }
}

/// A comma-separated list of `http://IP:PORT` URLs, as etcd's URL flags take them.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlList(
    /// The URLs, in order.
    pub Vec<String>,
);

impl FromStr for UrlList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let urls: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Err("expected at least one URL".into());
        }
        for url in &urls {
            parse_url(url).map_err(|e| server_message(&e))?;
        }
        Ok(UrlList(urls))
    }
}

/// `--initial-cluster`: `name=URL,name=URL,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialCluster(
    /// The founding members.
    pub Vec<InitialMember>,
);

impl FromStr for InitialCluster {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_initial_cluster(s)
            .map(InitialCluster)
            .map_err(|e| server_message(&e))
    }
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitialClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster this member was added to.
    Existing,
}

impl From<InitialClusterState> for ClusterState {
    fn from(state: InitialClusterState) -> Self {
        match state {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        }
    }
}

/// A log filter in `tracing_subscriber::EnvFilter` syntax, checked when parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFilter(
    /// The filter text.
    pub String,
);

impl FromStr for LogFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("expected a level (trace, debug, info, warn, error) or directives".into());
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(s)
            .map_err(|e| e.to_string())?;
        Ok(LogFilter(s.to_string()))
    }
}

/// A duration in Go's `time.ParseDuration` syntax (`300ms`, `5s`, `1m30s`, `1.5h`), as etcd's
/// duration flags take it; a bare number means milliseconds, like `--heartbeat-interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoDuration(
    /// The duration.
    pub Duration,
);

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a duration (examples: 5s, 500ms, 1m30s)");
        let s = s.trim();
        if let Ok(ms) = s.parse::<u64>() {
            return Ok(GoDuration(Duration::from_millis(ms)));
        }
        let mut rest = s;
        let mut total = 0f64;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per_unit = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total += number * nanos_per_unit;
        }
        if s.is_empty() || !total.is_finite() || total > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(GoDuration(Duration::from_nanos(total.round() as u64)))
    }
}

#[cfg(test)]
mod tests {
    use clap::{Command, FromArgMatches};

    use super::*;

    /// Parses `raftkv serve` flags with the environment ignored, so tests see only `argv`.
    fn flags(argv: &[&str]) -> Result<ServeArgs, clap::Error> {
        let command = ServeArgs::augment_args(Command::new("serve")).mut_args(|a| a.env(None));
        let matches =
            command.try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))?;
        ServeArgs::from_arg_matches(&matches)
    }

    fn config(argv: &[&str]) -> Config {
        flags(argv).unwrap().into_settings().unwrap().config
    }

    #[test]
    fn defaults_are_etcds() {
        let settings = flags(&[]).unwrap().into_settings().unwrap();
        let c = settings.config;
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls, ["http://localhost:2379"]);
        assert!(c.advertise_client_urls.is_empty());
        assert_eq!(c.client_urls(), ["http://localhost:2379"]);
        assert_eq!(c.listen_peer_urls, ["http://localhost:2380"]);
        assert_eq!(c.initial_advertise_peer_urls, ["http://localhost:2380"]);
        assert_eq!(
            c.initial_cluster,
            [InitialMember {
                name: "default".into(),
                peer_urls: vec!["http://localhost:2380".into()]
            }]
        );
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.election_timeout, Duration::from_millis(1000));
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(settings.log_filter, "info");
    }

    #[test]
    fn data_dir_and_initial_cluster_follow_name_and_peer_urls() {
        let c = config(&[
            "--name",
            "n2",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:22380,http://10.0.0.2:2380",
        ]);
        assert_eq!(c.data_dir, PathBuf::from("n2.etcd"));
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.initial_cluster[0].name, "n2");
        assert_eq!(
            c.initial_cluster[0].peer_urls,
            ["http://127.0.0.1:22380", "http://10.0.0.2:2380"]
        );
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = config(&[
            "--name=n1",
            "--data-dir=/var/lib/n1",
            "--listen-client-urls=http://127.0.0.1:1,http://127.0.0.1:2",
            "--advertise-client-urls=http://10.0.0.1:1",
            "--listen-peer-urls=http://0.0.0.0:3",
            "--initial-advertise-peer-urls=http://10.0.0.1:3",
            "--initial-cluster=n1=http://10.0.0.1:3,n2=http://10.0.0.2:3",
            "--initial-cluster-state=existing",
            "--initial-cluster-token=t",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--max-request-bytes=10",
            "--max-txn-ops=11",
            "--quota-backend-bytes=12",
            "--snapshot-count=13",
            "--backend-cache-bytes=14",
            "--lease-checkpoint-interval=1m30s",
            "--lease-revoke-rate=15",
        ]);
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/n1"));
        assert_eq!(
            c.listen_client_urls,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert_eq!(c.advertise_client_urls, ["http://10.0.0.1:1"]);
        assert_eq!(c.listen_peer_urls, ["http://0.0.0.0:3"]);
        assert_eq!(c.initial_advertise_peer_urls, ["http://10.0.0.1:3"]);
        assert_eq!(c.initial_cluster.len(), 2);
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
        assert_eq!(c.initial_cluster_token, "t");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.election_timeout, Duration::from_millis(500));
        assert_eq!(c.max_request_bytes, 10);
        assert_eq!(c.max_txn_ops, 11);
        assert_eq!(c.quota_backend_bytes, 12);
        assert_eq!(c.snapshot_count, 13);
        assert_eq!(c.backend_cache_bytes, 14);
        assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(90));
        assert_eq!(c.lease_revoke_rate, 15);
    }

    #[test]
    fn a_higher_layer_wins_field_by_field() {
        let flag = flags(&["--name", "from-flag"]).unwrap();
        let env = flags(&["--name", "from-env", "--data-dir", "env-dir"]).unwrap();
        let file = flags(&["--name", "f", "--data-dir", "f", "--max-txn-ops", "7"]).unwrap();
        let merged = flag.or(env).or(file);
        assert_eq!(merged.name.as_deref(), Some("from-flag"));
        assert_eq!(merged.data_dir, Some(PathBuf::from("env-dir")));
        assert_eq!(merged.max_txn_ops, Some(7));
        assert_eq!(merged.election_timeout, None);
    }

    #[test]
    fn bad_values_are_named() {
        let e = flags(&["--listen-client-urls", "http://127.0.0.1:1,example.com:80"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen-client-urls"), "{e}");
        assert!(e.contains("bad URL \"example.com:80\""), "{e}");

        let e = flags(&["--initial-cluster-state", "old"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--initial-cluster-state"), "{e}");
        assert!(e.contains("new, existing"), "{e}");

        let e = flags(&["--initial-cluster", "n1"]).unwrap_err().to_string();
        assert!(e.contains("not name=URL"), "{e}");

        let e = flags(&["--heartbeat-interval", "1s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--heartbeat-interval"), "{e}");

        let e = flags(&["--log-level", "info,=="]).unwrap_err().to_string();
        assert!(e.contains("--log-level"), "{e}");
    }

    #[test]
    fn inconsistent_settings_name_the_flag() {
        let e = flags(&["--name", "n1", "--initial-cluster", "n2=http://127.0.0.1:1"])
            .unwrap()
            .into_settings()
            .unwrap_err();
        assert!(
            e.contains("--initial-cluster has no member named \"n1\""),
            "{e}"
        );
        let e = flags(&["--election-timeout", "300"])
            .unwrap()
            .into_settings()
            .unwrap_err();
        assert!(e.contains("--election-timeout"), "{e}");
    }

    #[test]
    fn env_vars_are_raftkv_and_the_flag_in_upper_snake_case() {
        let command = ServeArgs::augment_args(Command::new("serve"));
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap();
            let expected = match long {
                "log-level" => "RAFTKV_LOG".to_string(),
                _ => format!("RAFTKV_{}", long.to_uppercase().replace('-', "_")),
            };
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(&*expected),
                "--{long}"
            );
        }
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| s.parse::<GoDuration>().map(|d| d.0);
        assert_eq!(d("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(d("250"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("2ms500us"), Ok(Duration::from_micros(2500)));
        assert_eq!(d("10ns"), Ok(Duration::from_nanos(10)));
        for bad in ["", "s", "5x", "1.2.3s", "-1s", "5 s", "s5"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
