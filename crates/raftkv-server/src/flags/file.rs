//! `--config-file`: a TOML table whose keys are `raftkv serve`'s flag names.
//!
//! Each `key = value` is parsed exactly as `--key=value` would be on the command line, so the
//! file, the flags and the environment share one set of parsers and messages. Values are
//! strings, integers, or arrays of strings (joined with commas, for URL lists).

use std::path::Path;

use clap::{Args, Command, FromArgMatches};

use super::args::ServeArgs;

/// Reads and parses the config file at `path`. The error is one line naming the file.
pub fn load(path: &Path) -> Result<ServeArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Parses a config file's text.
pub fn parse(text: &str) -> Result<ServeArgs, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        match line {
            Some(line) => format!("line {line}: {message}"),
            None => message,
        }
    })?;
    // The environment must not leak into the file's layer: it has a layer of its own.
    let command = ServeArgs::augment_args(Command::new("config-file")).mut_args(|a| a.env(None));
    let keys: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|&long| long != "config-file")
        .collect();
    let mut argv = vec!["config-file".to_string()];
    for (key, value) in &table {
        if !keys.contains(&key.as_str()) {
            let dashed = key.replace('_', "-");
            let hint = if keys.contains(&dashed.as_str()) {
                format!(" (did you mean {dashed:?}?)")
            } else {
                " (keys are raftkv serve's flag names, e.g. data-dir)".into()
            };
            return Err(format!("unknown key {key:?}{hint}"));
        }
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Array(items) => {
                let strings: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                strings
                    .ok_or_else(|| format!("key {key:?}: expected an array of strings"))?
                    .join(",")
            }
            other => {
                return Err(format!(
                    "key {key:?}: expected a string or an integer, found {}",
                    other.type_str()
                ))
            }
        };
        argv.push(format!("--{key}={value}"));
    }
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| clap_message(&e))?;
    ServeArgs::from_arg_matches(&matches).map_err(|e| clap_message(&e))
}

/// A clap error's first line, without the `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_are_flag_names() {
        let args = parse(
            r#"
            name = "n1"
            data-dir = "/var/lib/n1"
            listen-client-urls = "http://127.0.0.1:2379,http://127.0.0.1:2479"
            listen-peer-urls = ["http://127.0.0.1:2380", "http://127.0.0.1:2480"]
            initial-cluster = "n1=http://127.0.0.1:2380"
            initial-cluster-state = "existing"
            heartbeat-interval = 50
            election-timeout = 500
            lease-checkpoint-interval = "1m"
            log-level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(args.name.as_deref(), Some("n1"));
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/n1")));
        assert_eq!(args.listen_client_urls.unwrap().0.len(), 2);
        assert_eq!(
            args.listen_peer_urls.unwrap().0,
            ["http://127.0.0.1:2380", "http://127.0.0.1:2480"]
        );
        assert_eq!(args.heartbeat_interval, Some(50));
        assert_eq!(
            args.lease_checkpoint_interval.unwrap().0,
            Duration::from_secs(60)
        );
        assert_eq!(args.log_level.unwrap().0, "debug");
        assert_eq!(args.config_file, None);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("name = \"n1\"\nlisten-urls = \"x\"\n").unwrap_err();
        assert!(e.starts_with("unknown key \"listen-urls\""), "{e}");
        let e = parse("data_dir = \"x\"").unwrap_err();
        assert!(e.contains("did you mean \"data-dir\"?"), "{e}");
        // The file cannot name another file.
        let e = parse("config-file = \"other.toml\"").unwrap_err();
        assert!(e.starts_with("unknown key \"config-file\""), "{e}");
    }

    #[test]
    fn bad_values_are_one_line_and_named() {
        let e = parse("initial-cluster-state = \"old\"").unwrap_err();
        assert!(e.contains("--initial-cluster-state"), "{e}");
        let e = parse("listen-client-urls = \"http://example.com:80\"").unwrap_err();
        assert!(e.contains("--listen-client-urls"), "{e}");
        assert!(e.contains("bad URL"), "{e}");
        let e = parse("heartbeat-interval = true").unwrap_err();
        assert_eq!(
            e,
            "key \"heartbeat-interval\": expected a string or an integer, found boolean"
        );
        let e = parse("heartbeat-interval = -5").unwrap_err();
        assert!(e.contains("--heartbeat-interval"), "{e}");
        let e = parse("name = \"n1\"\nname = \"n2\"\n").unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn flags_beat_the_file() {
        let file = parse("name = \"from-file\"\nmax-txn-ops = 7\n").unwrap();
        let flags = ServeArgs {
            name: Some("from-flag".into()),
            ..ServeArgs::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.name.as_deref(), Some("from-flag"));
        assert_eq!(merged.max_txn_ops, Some(7));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load(Path::new("/nonexistent/raftkv.toml")).unwrap_err();
        assert!(
            e.starts_with("config file /nonexistent/raftkv.toml: "),
            "{e}"
        );
    }
}
