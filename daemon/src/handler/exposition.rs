//! The metrics as text in the OpenMetrics exposition format (which
//! Prometheus reads): built at scrape time from the rows a scrape gathered,
//! with the label values escaped by `prometheus-client`.

use crate::state::metrics::{Counts, RefreshResult};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokend_proto::CredentialState;

/// The media type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every state a credential can show, each a series of `tokend_credential_state`.
const STATES: [CredentialState; 4] = [
    CredentialState::Ready,
    CredentialState::NeedsLogin,
    CredentialState::Refreshing,
    CredentialState::Failing,
];

/// What one credential reports: its name and state, never a token, a
/// secret or a client id.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub state: CredentialState,
    /// The access token's expiry (Unix seconds), if it has one.
    pub expires_at: Option<i64>,
    /// Whether the credential refreshes at all (bearer tokens do not):
    /// only then are its refresh counters reported, zeros included.
    pub refreshes: bool,
    pub counts: Counts,
}

/// The process's own readings, for admins only (as `status` shows the
/// connection count to admins only). A reading the platform lacks is `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process {
    pub start_time_secs: i64,
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub connections: u32,
}

type Labels = Vec<(&'static str, String)>;

/// The text of a scrape: the credentials' metrics, then the process's.
pub fn render(rows: &[Row], process: Option<&Process>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    credentials(&mut registry, rows);
    counters(&mut registry, rows);
    if let Some(process) = process {
        process_gauges(&mut registry, process);
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn credential(row: &Row) -> Labels {
    vec![("credential", row.name.clone())]
}

/// `tokend_credential_state` and `tokend_access_token_expiry_timestamp_seconds`.
fn credentials(registry: &mut Registry, rows: &[Row]) {
    let state = Family::<Labels, Gauge>::default();
    let expiry = Family::<Labels, Gauge>::default();
    for row in rows {
        for s in STATES {
            let mut labels = credential(row);
            labels.push(("state", s.as_str().to_string()));
            state.get_or_create(&labels).set(i64::from(row.state == s));
        }
        if let Some(at) = row.expires_at {
            expiry.get_or_create(&credential(row)).set(at);
        }
    }
    registry.register(
        "tokend_credential_state",
        "The credential's state: 1 for the one it is in, 0 for the others",
        state,
    );
    registry.register(
        "tokend_access_token_expiry_timestamp_seconds",
        "When the access token held expires (Unix seconds); absent when it does not",
        expiry,
    );
}

/// `tokend_tokens_served_total` and `tokend_refreshes_total`.
fn counters(registry: &mut Registry, rows: &[Row]) {
    let served = Family::<Labels, Counter>::default();
    let refreshes = Family::<Labels, Counter>::default();
    for row in rows {
        served
            .get_or_create(&credential(row))
            .inc_by(row.counts.served);
        if !row.refreshes {
            continue;
        }
        for result in RefreshResult::ALL {
            let mut labels = credential(row);
            labels.push(("result", result.as_str().to_string()));
            refreshes
                .get_or_create(&labels)
                .inc_by(row.counts.refreshes(result));
        }
    }
    // The crate appends `_total` to a counter's name.
    registry.register(
        "tokend_tokens_served",
        "Tokens handed out since the daemon started",
        served,
    );
    registry.register(
        "tokend_refreshes",
        "Refresh attempts ended since the daemon started, by result",
        refreshes,
    );
}

fn process_gauges(registry: &mut Registry, process: &Process) {
    let gauge = |value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        g
    };
    registry.register(
        "process_start_time_seconds",
        "When the daemon started (Unix seconds)",
        gauge(process.start_time_secs),
    );
    if let Some(bytes) = process.resident_memory_bytes {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(i64::try_from(bytes).unwrap_or(i64::MAX)),
        );
    }
    if let Some(fds) = process.open_fds {
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            gauge(i64::try_from(fds).unwrap_or(i64::MAX)),
        );
    }
    registry.register(
        "tokend_connections",
        "Connections open to the daemon's sockets",
        gauge(i64::from(process.connections)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: CredentialState) -> Row {
        Row {
            name: name.into(),
            state,
            expires_at: None,
            refreshes: true,
            counts: Counts::default(),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn metrics_state_is_one_for_the_current_state_and_zero_for_the_others() {
        let text = render(&[row("gh", CredentialState::NeedsLogin)], None).unwrap();
        let l = lines(&text);
        assert!(
            l.contains(&"# TYPE tokend_credential_state gauge"),
            "{text}"
        );
        assert!(l.contains(&r#"tokend_credential_state{credential="gh",state="needs-login"} 1"#));
        for other in ["ready", "refreshing", "failing"] {
            let line = format!(r#"tokend_credential_state{{credential="gh",state="{other}"}} 0"#);
            assert!(l.contains(&line.as_str()), "{line} in {text}");
        }
        assert_eq!(l.last(), Some(&"# EOF"));
    }

    #[test]
    fn metrics_expiry_is_reported_only_for_a_token_that_expires() {
        let mut expiring = row("a", CredentialState::Ready);
        expiring.expires_at = Some(1_800_000_000);
        let text = render(&[expiring, row("b", CredentialState::Ready)], None).unwrap();
        assert!(
            text.contains(
                "tokend_access_token_expiry_timestamp_seconds{credential=\"a\"} 1800000000\n"
            ),
            "{text}"
        );
        assert!(!text.contains("tokend_access_token_expiry_timestamp_seconds{credential=\"b\"}"));
    }

    #[test]
    fn metrics_counters_are_typed_and_refreshes_are_split_by_result() {
        let mut oauth = row("o", CredentialState::Ready);
        oauth.counts.served = 3;
        oauth.counts.refreshes[0] = 2;
        let mut bearer = row("b", CredentialState::Ready);
        bearer.refreshes = false;
        let text = render(&[oauth, bearer], None).unwrap();
        let l = lines(&text);
        assert!(l.contains(&"# TYPE tokend_tokens_served counter"), "{text}");
        assert!(l.contains(&"# TYPE tokend_refreshes counter"));
        assert!(l.contains(&r#"tokend_tokens_served_total{credential="o"} 3"#));
        assert!(l.contains(&r#"tokend_tokens_served_total{credential="b"} 0"#));
        assert!(l.contains(&r#"tokend_refreshes_total{credential="o",result="ok"} 2"#));
        assert!(l.contains(&r#"tokend_refreshes_total{credential="o",result="invalid_grant"} 0"#));
        assert!(
            !text.contains(r#"tokend_refreshes_total{credential="b""#),
            "a bearer token never refreshes: {text}"
        );
    }

    #[test]
    fn metrics_credential_names_are_escaped_in_labels() {
        let text = render(&[row("a\"b\\c\nd", CredentialState::Ready)], None).unwrap();
        assert!(
            text.contains(r#"tokend_tokens_served_total{credential="a\"b\\c\nd"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn metrics_process_readings_appear_only_when_given() {
        let without = render(&[], None).unwrap();
        assert!(!without.contains("process_") && !without.contains("tokend_connections"));
        let process = Process {
            start_time_secs: 1_700_000_000,
            resident_memory_bytes: Some(4096),
            open_fds: Some(9),
            connections: 2,
        };
        let text = render(&[], Some(&process)).unwrap();
        let l = lines(&text);
        for line in [
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds 1700000000",
            "process_resident_memory_bytes 4096",
            "process_open_fds 9",
            "tokend_connections 2",
        ] {
            assert!(l.contains(&line), "{line} in {text}");
        }
    }
}
