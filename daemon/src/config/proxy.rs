//! `[proxy]`: the credential-injecting proxy (docs/HTTP.md, "Proxy"): its
//! opt-in loopback TCP listeners and its limits.

use serde::Deserialize;
use std::net::SocketAddr;

#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Loopback addresses to serve `/NAME/PATH` on, e.g.
    /// `["127.0.0.1:8181", "[::1]:8181"]`; none by default (the proxy is
    /// always on `http.sock`, at `/v1/proxy/NAME/PATH`).
    pub listen: Vec<String>,
    /// Request bodies up to this size are held, so the request can be sent
    /// again after a refused token; larger or streamed ones are sent as
    /// they come and never retried.
    pub max_replay_bytes: u64,
    /// The largest request body the proxy forwards.
    pub max_request_bytes: u64,
    /// How long the upstream may take to answer (its status and headers).
    pub upstream_timeout_secs: u64,
    /// Proxied requests one user may have in flight at once.
    pub max_concurrent_per_user: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: Vec::new(),
            max_replay_bytes: 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            upstream_timeout_secs: 60,
            max_concurrent_per_user: 256,
        }
    }
}

impl ProxyConfig {
    /// The listen addresses, each checked to be this machine's loopback:
    /// another machine must never reach a listener that hands out tokens.
    pub fn addresses(&self) -> Result<Vec<SocketAddr>, String> {
        loopback_addresses("proxy.listen", &self.listen)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.addresses()?;
        let positive = [
            ("proxy.max_request_bytes", self.max_request_bytes),
            ("proxy.upstream_timeout_secs", self.upstream_timeout_secs),
            (
                "proxy.max_concurrent_per_user",
                self.max_concurrent_per_user as u64,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be greater than 0"));
        }
        if self.max_replay_bytes > self.max_request_bytes {
            return Err("proxy.max_replay_bytes must not be above proxy.max_request_bytes".into());
        }
        if self.max_replay_bytes > 64 * 1024 * 1024 {
            return Err(
                "proxy.max_replay_bytes is at most 64 MiB (each held body is in memory)".into(),
            );
        }
        if self.upstream_timeout_secs > 3600 {
            return Err("proxy.upstream_timeout_secs is at most 3600".into());
        }
        Ok(())
    }
}

/// The addresses of the config key `key`, each checked to be this
/// machine's loopback: another machine must never reach a listener of
/// tokend's.
pub fn loopback_addresses(key: &str, listen: &[String]) -> Result<Vec<SocketAddr>, String> {
    listen
        .iter()
        .map(|text| {
            let addr: SocketAddr = text.parse().map_err(|_| {
                format!("{key}: {text:?} is not an address with a port, e.g. \"127.0.0.1:8181\" or \"[::1]:8181\"")
            })?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{key}: {text:?} is not a loopback address; tokend listens on 127.0.0.1 or ::1 only (another machine must never reach it)"
                ));
            }
            Ok(addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        let config = |listen: &[&str]| ProxyConfig {
            listen: listen.iter().map(|s| s.to_string()).collect(),
            ..ProxyConfig::default()
        };
        assert!(config(&["127.0.0.1:8181", "[::1]:8181"]).validate().is_ok());
        for bad in [
            "0.0.0.0:8181",
            "192.168.1.2:80",
            "[::]:8181",
            "localhost:8181",
            "127.0.0.1",
        ] {
            assert!(config(&[bad]).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_positive_and_replay_fits_the_request_limit() {
        let mut c = ProxyConfig::default();
        assert!(c.validate().is_ok());
        c.max_replay_bytes = c.max_request_bytes + 1;
        assert!(c.validate().is_err());
        let c = ProxyConfig {
            upstream_timeout_secs: 0,
            ..ProxyConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
