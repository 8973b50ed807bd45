//! The test-only dial override: `RAFTKV_PEER_DIAL_OVERRIDES`.
//!
//! `RAFTKV_PEER_DIAL_OVERRIDES="<peer url>=<host:port>,..."` makes this member dial
//! `<host:port>` (with the URL's scheme) whenever it connects to `<peer url>`, for Raft messages
//! and snapshots alike. It exists for fault-injection tests, which put a proxy on every directed
//! peer link (`tests/src/fault/`): member A reaches B through A's own proxy, so each direction
//! of each link can be cut, delayed or blackholed on its own. It changes only which socket is
//! dialled: member ids, the membership table and every URL a member publishes or stores stay
//! the URLs of the table. The variable is read once per process (at the first peer link) and a
//! warning is logged when it is set; a malformed value fails the transport's setup.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::TransportError;

/// The environment variable naming the overrides (see the module docs).
pub const DIAL_OVERRIDES_ENV: &str = "RAFTKV_PEER_DIAL_OVERRIDES";

/// The URL to dial for peer URL `url`: `url` itself, or its scheme with the overriding
/// `host:port` when `RAFTKV_PEER_DIAL_OVERRIDES` names it.
pub(crate) fn dial_url(url: &str) -> Result<String, TransportError> {
    static OVERRIDES: OnceLock<Result<HashMap<String, String>, String>> = OnceLock::new();
    let overrides = OVERRIDES.get_or_init(|| {
        let Ok(raw) = std::env::var(DIAL_OVERRIDES_ENV) else {
            return Ok(HashMap::new());
        };
        let parsed = parse(&raw);
        match &parsed {
            Ok(map) => tracing::warn!(
                env = DIAL_OVERRIDES_ENV,
                overrides = %raw,
                count = map.len(),
                "testing hook set: peer URLs are dialled at overriding addresses"
            ),
            Err(e) => {
                tracing::error!(env = DIAL_OVERRIDES_ENV, error = %e, "malformed dial overrides")
            }
        }
        parsed
    });
    match overrides {
        Ok(map) => Ok(apply(map, url)),
        Err(e) => Err(TransportError::Config(format!("{DIAL_OVERRIDES_ENV}: {e}"))),
    }
}

/// `<peer url>=<host:port>,...` as a map from normalised peer URL to `host:port`.
fn parse(raw: &str) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // The URL contains ':' but no '=', so the last '=' separates the two.
        let Some((url, addr)) = item.rsplit_once('=') else {
            return Err(format!("{item:?}: expected <peer url>=<host:port>"));
        };
        let (url, addr) = (url.trim(), addr.trim());
        if !url.contains("://") {
            return Err(format!(
                "{url:?}: expected a URL such as http://127.0.0.1:2380"
            ));
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || addr.contains('/') {
            return Err(format!("{addr:?}: expected host:port"));
        }
        map.insert(normalise(url), addr.to_string());
    }
    Ok(map)
}

fn normalise(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

fn apply(map: &HashMap<String, String>, url: &str) -> String {
    match (map.get(&normalise(url)), url.split_once("://")) {
        (Some(addr), Some((scheme, _))) => format!("{scheme}://{addr}"),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_replace_only_the_dialled_address() {
        let map =
            parse("http://127.0.0.1:2380=127.0.0.1:40001, http://127.0.0.1:2381/=localhost:9")
                .unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            apply(&map, "http://127.0.0.1:2380/"),
            "http://127.0.0.1:40001"
        );
        assert_eq!(apply(&map, "http://127.0.0.1:2381"), "http://localhost:9");
        assert_eq!(
            apply(&map, "http://127.0.0.1:2382"),
            "http://127.0.0.1:2382"
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_overrides_are_refused() {
        assert!(parse("http://127.0.0.1:2380").is_err());
        assert!(parse("127.0.0.1:2380=127.0.0.1:1").is_err());
        assert!(parse("http://127.0.0.1:2380=127.0.0.1").is_err());
        assert!(parse("http://127.0.0.1:2380=127.0.0.1:99999").is_err());
        assert!(parse("http://a:1=http://b:2").is_err());
    }
}
