//! `[metrics]`: the opt-in loopback TCP listener a Prometheus server
//! scrapes (docs/HTTP.md, "Metrics"). `http.sock` always serves
//! `/v1/metrics` to its peers; this listener serves anyone on the machine
//! who can reach the port, so it shows counts and states, and credential
//! names only when the operator says so.

use serde::Deserialize;
use std::net::SocketAddr;

#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback addresses to serve `GET /metrics` on, e.g.
    /// `["127.0.0.1:9464"]`; none by default.
    pub listen: Vec<String>,
    /// Whether that listener labels series with credential names; without,
    /// it gives counts over all credentials only.
    pub credential_labels: bool,
}

impl MetricsConfig {
    /// The listen addresses, each checked to be this machine's loopback.
    pub fn addresses(&self) -> Result<Vec<SocketAddr>, String> {
        super::proxy::loopback_addresses("metrics.listen", &self.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_only_on_loopback_addresses() {
        let config = |listen: &str| MetricsConfig {
            listen: vec![listen.into()],
            ..MetricsConfig::default()
        };
        assert!(config("127.0.0.1:9464").addresses().is_ok());
        let e = config("0.0.0.0:9464").addresses().unwrap_err();
        assert!(e.starts_with("metrics.listen:"), "{e}");
        assert!(config("[::1]").addresses().is_err());
    }
}
