//! The metrics as Prometheus text (format 0.0.4, which Prometheus and its
//! client libraries' parsers read), written by `prometheus-client` as the
//! credentials are read: a scrape holds one chunk of text at a time, never
//! every series at once (100,000 credentials give over a million lines).

use super::process;
use crate::state::Shared;
use crate::state::connections::Listener;
use crate::state::credential::{Credential, Kind};
use crate::state::metrics::{Counts, Doubt, RefreshResult, Refused};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::Arc;
use tokend_proto::CredentialState;

/// Every state a credential can show, each a series of `tokend_credential_state`.
const STATES: [CredentialState; 4] = [
    CredentialState::Ready,
    CredentialState::NeedsLogin,
    CredentialState::Refreshing,
    CredentialState::Failing,
];

/// What one scrape shows.
#[derive(Debug)]
pub struct View {
    /// The credentials reported.
    pub credentials: Vec<Arc<Credential>>,
    /// Each credential's own series, labelled with its name; without,
    /// only counts over all of them (a listener the operator opened
    /// without `credential_labels`).
    pub names: bool,
    /// The daemon's own series (refusals, lock waits, the proxy, the
    /// store, connections, the process): an admin's, or a listener's.
    pub daemon: bool,
    /// Open connections per uid: an admin's only.
    pub per_user: bool,
}

/// A scrape's metrics, written when `prometheus-client` encodes it.
#[derive(Debug)]
pub struct Exposition {
    pub shared: Arc<Shared>,
    pub view: View,
}

type Encoder<'a> = DescriptorEncoder<'a>;
type Written = Result<(), std::fmt::Error>;

impl Collector for Exposition {
    fn encode(&self, mut encoder: Encoder) -> Written {
        if self.view.names {
            self.by_credential(&mut encoder)?;
        } else {
            self.over_credentials(&mut encoder)?;
        }
        if self.view.daemon {
            self.daemon(&mut encoder)?;
        }
        if self.view.per_user {
            self.per_user(&mut encoder)?;
        }
        Ok(())
    }
}

impl Exposition {
    /// Each credential's state, expiry and counters, labelled by name.
    fn by_credential(&self, encoder: &mut Encoder) -> Written {
        let now = self.shared.clock.now();
        let creds = &self.view.credentials;
        let mut family = encoder.encode_descriptor(
            "tokend_credential_state",
            "The credential's state: 1 for the one it is in, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for cred in creds {
            let (shown, _) = cred.state_and_expiry(now);
            for state in STATES {
                let labels = [("credential", &*cred.name), ("state", state.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&i64::from(shown == state))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tokend_access_token_expiry_timestamp_seconds",
            "When the access token held expires (Unix seconds); absent when it does not",
            None,
            MetricType::Gauge,
        )?;
        for cred in creds {
            if let (_, Some(at)) = cred.state_and_expiry(now) {
                family
                    .encode_family(&[("credential", &*cred.name)])?
                    .encode_gauge(&at)?;
            }
        }
        let metrics = &self.shared.metrics;
        let mut family = encoder.encode_descriptor(
            "tokend_tokens_served",
            "Tokens handed out since the daemon started",
            None,
            MetricType::Counter,
        )?;
        for cred in creds {
            let served = metrics.served_by(&cred.name, cred.with_live(|l| l.served));
            family
                .encode_family(&[("credential", &*cred.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&served, None)?;
        }
        // A bearer token never refreshes: no refresh series of its own.
        let refreshing = || creds.iter().filter(|c| c.kind != Kind::Bearer);
        let mut family = encoder.encode_descriptor(
            "tokend_refreshes",
            "Refresh attempts this daemon made, by result",
            None,
            MetricType::Counter,
        )?;
        for cred in refreshing() {
            let counts = metrics.counts(&cred.name);
            for result in RefreshResult::ALL {
                let labels = [("credential", &*cred.name), ("result", result.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&counts.refreshes(result), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tokend_in_doubt_resolutions",
            "Refresh tokens in doubt (a refresh's answer lost), by how they were settled",
            None,
            MetricType::Counter,
        )?;
        for cred in refreshing() {
            let counts = metrics.counts(&cred.name);
            for outcome in Doubt::ALL {
                let labels = [("credential", &*cred.name), ("outcome", outcome.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&counts.doubts(outcome), None)?;
            }
        }
        Ok(())
    }

    /// Counts over every credential, with no name in any label.
    fn over_credentials(&self, encoder: &mut Encoder) -> Written {
        let now = self.shared.clock.now();
        let mut by_state = [0i64; STATES.len()];
        for cred in &self.view.credentials {
            let (shown, _) = cred.state_and_expiry(now);
            if let Some(i) = STATES.iter().position(|&s| s == shown) {
                by_state[i] += 1;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tokend_credentials",
            "Credentials in each state",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in STATES.iter().zip(by_state) {
            family
                .encode_family(&[("state", state.as_str())])?
                .encode_gauge(&count)?;
        }
        let totals: Counts = self.shared.metrics.totals();
        let family = encoder.encode_descriptor(
            "tokend_tokens_served",
            "Tokens handed out since the daemon started",
            None,
            MetricType::Counter,
        )?;
        counter(family, self.shared.metrics.served_total())?;
        let mut family = encoder.encode_descriptor(
            "tokend_refreshes",
            "Refresh attempts this daemon made, by result",
            None,
            MetricType::Counter,
        )?;
        for result in RefreshResult::ALL {
            family
                .encode_family(&[("result", result.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&totals.refreshes(result), None)?;
        }
        let mut family = encoder.encode_descriptor(
            "tokend_in_doubt_resolutions",
            "Refresh tokens in doubt (a refresh's answer lost), by how they were settled",
            None,
            MetricType::Counter,
        )?;
        for outcome in Doubt::ALL {
            family
                .encode_family(&[("outcome", outcome.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&totals.doubts(outcome), None)?;
        }
        Ok(())
    }

    /// The daemon's own series: no credential in any of them.
    fn daemon(&self, encoder: &mut Encoder) -> Written {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        shared
            .metrics
            .refresh_seconds
            .encode(encoder.encode_descriptor(
                "tokend_refresh_duration_seconds",
                "How long the provider took to answer a refresh (or to fail)",
                None,
                MetricType::Histogram,
            )?)?;
        let mut family = encoder.encode_descriptor(
            "tokend_requests_refused",
            "Requests and connections refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in Refused::ALL {
            family
                .encode_family(&[("reason", reason.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&metrics.refusals(reason), None)?;
        }
        let family = encoder.encode_descriptor(
            "tokend_store_up",
            "1 when the store is reachable (a fleet's database connected), else 0",
            None,
            MetricType::Gauge,
        )?;
        gauge(family, i64::from(shared.store.is_up()))?;
        metrics.lock_wait_seconds.encode(encoder.encode_descriptor(
            "tokend_store_lock_wait_seconds",
            "How long a refresh waited for the store's refresh lock (in a fleet, for another member)",
            None,
            MetricType::Histogram,
        )?)?;
        let family = encoder.encode_descriptor(
            "tokend_store_lock_busy",
            "Refreshes that found another member of the fleet holding the lock",
            None,
            MetricType::Counter,
        )?;
        counter(family, metrics.lock_busy_total())?;
        self.proxy(encoder)?;
        self.connections(encoder)?;
        process_series(shared, encoder)
    }

    /// Proxied requests by the status answered, and the retried ones.
    fn proxy(&self, encoder: &mut Encoder) -> Written {
        let (by_status, retries) = self.shared.metrics.proxy_counts();
        let mut family = encoder.encode_descriptor(
            "tokend_proxy_requests",
            "Requests through the proxy, by the status answered",
            None,
            MetricType::Counter,
        )?;
        for (status, count) in by_status {
            family
                .encode_family(&[("status", status.to_string())])?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        let family = encoder.encode_descriptor(
            "tokend_proxy_retries",
            "Proxied requests sent again with a new token after the API refused the first",
            None,
            MetricType::Counter,
        )?;
        counter(family, retries)
    }

    fn connections(&self, encoder: &mut Encoder) -> Written {
        let census = &self.shared.connections;
        let mut family = encoder.encode_descriptor(
            "tokend_connections",
            "Connections open, by listener",
            None,
            MetricType::Gauge,
        )?;
        for listener in Listener::ALL {
            family
                .encode_family(&[("listener", listener.as_str())])?
                .encode_gauge(&i64::from(census.on(listener)))?;
        }
        Ok(())
    }

    fn per_user(&self, encoder: &mut Encoder) -> Written {
        let mut family = encoder.encode_descriptor(
            "tokend_user_connections",
            "Connections open, by the peer's uid",
            None,
            MetricType::Gauge,
        )?;
        for (uid, open) in self.shared.connections.by_uid() {
            family
                .encode_family(&[("uid", uid.to_string())])?
                .encode_gauge(&i64::from(open))?;
        }
        Ok(())
    }
}

/// The process's start, resident memory and open descriptors (the last
/// two where the platform tells them).
fn process_series(shared: &Shared, encoder: &mut Encoder) -> Written {
    let started = shared.clock.now() - shared.started.elapsed().as_secs() as i64;
    let family = encoder.encode_descriptor(
        "process_start_time_seconds",
        "When the daemon started (Unix seconds)",
        None,
        MetricType::Gauge,
    )?;
    gauge(family, started)?;
    if let Some(bytes) = process::resident_memory_bytes() {
        let family = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            MetricType::Gauge,
        )?;
        gauge(family, i64::try_from(bytes).unwrap_or(i64::MAX))?;
    }
    if let Some(fds) = process::open_fds() {
        let family = encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            MetricType::Gauge,
        )?;
        gauge(family, i64::try_from(fds).unwrap_or(i64::MAX))?;
    }
    Ok(())
}

fn gauge(mut family: prometheus_client::encoding::MetricEncoder, value: i64) -> Written {
    family.encode_gauge(&value)
}

fn counter(mut family: prometheus_client::encoding::MetricEncoder, value: u64) -> Written {
    family.encode_counter::<NoLabelSet, _, u64>(&value, None)
}
