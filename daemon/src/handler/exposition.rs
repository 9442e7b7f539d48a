//! The metrics as Prometheus text (format 0.0.4, which Prometheus and its
//! client libraries' parsers read), written by `prometheus-client` as the
//! credentials are read: a scrape holds one chunk of text at a time, never
//! every series at once (100,000 credentials give over a million lines).

use super::process;
use crate::state::Shared;
use crate::state::connections::Listener;
use crate::state::credential::{Credential, Kind};
use crate::state::metrics::{Doubt, RefreshResult, Refused};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram;
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
        let metrics = &self.shared.metrics;
        gauges(
            encoder,
            STATE,
            creds.iter().flat_map(|cred| {
                let (shown, _) = cred.state_and_expiry(now);
                STATES.map(|state| {
                    let labels = [("credential", &*cred.name), ("state", state.as_str())];
                    (labels, i64::from(shown == state))
                })
            }),
        )?;
        gauges(
            encoder,
            ACCESS_EXPIRY,
            creds.iter().filter_map(|cred| {
                let (_, at) = cred.state_and_expiry(now);
                Some(([("credential", &*cred.name)], at?))
            }),
        )?;
        gauges(
            encoder,
            REFRESH_EXPIRY,
            creds.iter().filter_map(|cred| {
                Some(([("credential", &*cred.name)], cred.refresh_expires_at()?))
            }),
        )?;
        counters(
            encoder,
            SERVED,
            creds.iter().map(|cred| {
                // Under the credential's lock, as a wrap is counted.
                let served = cred.with_live(|l| metrics.served_by(&cred.name, l.served));
                ([("credential", &*cred.name)], served)
            }),
        )?;
        // A bearer token never refreshes: no refresh series of its own.
        let refreshing = || creds.iter().filter(|c| c.kind != Kind::Bearer);
        counters(
            encoder,
            REFRESHES,
            refreshing().flat_map(|cred| {
                let counts = metrics.counts(&cred.name);
                RefreshResult::ALL.map(|result| {
                    let labels = [("credential", &*cred.name), ("result", result.as_str())];
                    (labels, counts.refreshes(result))
                })
            }),
        )?;
        counters(
            encoder,
            DOUBTS,
            refreshing().flat_map(|cred| {
                let counts = metrics.counts(&cred.name);
                Doubt::ALL.map(|outcome| {
                    let labels = [("credential", &*cred.name), ("outcome", outcome.as_str())];
                    (labels, counts.doubts(outcome))
                })
            }),
        )
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
        gauges(
            encoder,
            CREDENTIALS,
            STATES
                .iter()
                .zip(by_state)
                .map(|(state, count)| ([("state", state.as_str())], count)),
        )?;
        let metrics = &self.shared.metrics;
        let totals = metrics.totals();
        let served: u64 = self
            .view
            .credentials
            .iter()
            .map(|c| c.with_live(|l| metrics.served_by(&c.name, l.served)))
            .sum();
        counters(
            encoder,
            SERVED,
            [(NONE, served + metrics.served_by_removed())],
        )?;
        counters(
            encoder,
            REFRESHES,
            RefreshResult::ALL.map(|r| ([("result", r.as_str())], totals.refreshes(r))),
        )?;
        counters(
            encoder,
            DOUBTS,
            Doubt::ALL.map(|o| ([("outcome", o.as_str())], totals.doubts(o))),
        )
    }

    /// The daemon's own series: no credential in any of them.
    fn daemon(&self, encoder: &mut Encoder) -> Written {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        histogram(encoder, REFRESH_SECONDS, &metrics.refresh_seconds)?;
        counters(
            encoder,
            REFUSED,
            Refused::ALL.map(|r| ([("reason", r.as_str())], metrics.refusals(r))),
        )?;
        gauges(encoder, STORE_UP, [(NONE, i64::from(shared.store.is_up()))])?;
        histogram(encoder, LOCK_WAIT, &metrics.lock_wait_seconds)?;
        counters(encoder, LOCK_BUSY, [(NONE, metrics.lock_busy_total())])?;
        let (by_status, retries) = metrics.proxy_counts();
        counters(
            encoder,
            PROXIED,
            by_status
                .into_iter()
                .map(|(status, count)| ([("status", status.to_string())], count)),
        )?;
        counters(encoder, RETRIES, [(NONE, retries)])?;
        let census = &shared.connections;
        gauges(
            encoder,
            CONNECTIONS,
            Listener::ALL.map(|l| ([("listener", l.as_str())], i64::from(census.on(l)))),
        )?;
        process_series(shared, encoder)
    }

    fn per_user(&self, encoder: &mut Encoder) -> Written {
        gauges(
            encoder,
            USER_CONNECTIONS,
            self.shared
                .connections
                .by_uid()
                .into_iter()
                .map(|(uid, open)| ([("uid", uid.to_string())], i64::from(open))),
        )
    }
}

/// A family's name and help. A counter's name is written with `_total`.
type Family = (&'static str, &'static str);

/// No labels.
const NONE: [(&str, &str); 0] = [];

const STATE: Family = (
    "tokend_credential_state",
    "The credential's state: 1 for the one it is in, 0 for the others",
);
const ACCESS_EXPIRY: Family = (
    "tokend_access_token_expiry_timestamp_seconds",
    "When the access token held expires (Unix seconds); absent when it does not",
);
const REFRESH_EXPIRY: Family = (
    "tokend_refresh_token_expiry_timestamp_seconds",
    "When the refresh token (its grant) is forecast to expire, so a login is needed (Unix seconds); absent when unknown",
);
const SERVED: Family = (
    "tokend_tokens_served",
    "Tokens handed out since the daemon started",
);
const REFRESHES: Family = (
    "tokend_refreshes",
    "Refresh attempts this daemon made, by result",
);
const DOUBTS: Family = (
    "tokend_in_doubt_resolutions",
    "Refresh tokens in doubt (a refresh's answer lost), by how they were settled",
);
const CREDENTIALS: Family = ("tokend_credentials", "Credentials in each state");
const REFRESH_SECONDS: Family = (
    "tokend_refresh_duration_seconds",
    "How long the provider took to answer a refresh (or to fail)",
);
const REFUSED: Family = (
    "tokend_requests_refused",
    "Requests and connections refused, by reason",
);
const STORE_UP: Family = (
    "tokend_store_up",
    "1 when the store is reachable (a fleet's database connected), else 0",
);
const LOCK_WAIT: Family = (
    "tokend_store_lock_wait_seconds",
    "How long a refresh waited for the store's refresh lock (in a fleet, for another member)",
);
const LOCK_BUSY: Family = (
    "tokend_store_lock_busy",
    "Refreshes that found another member of the fleet holding the lock",
);
const PROXIED: Family = (
    "tokend_proxy_requests",
    "Requests through the proxy, by the status answered",
);
const RETRIES: Family = (
    "tokend_proxy_retries",
    "Proxied requests sent again with a new token after the API refused the first",
);
const CONNECTIONS: Family = ("tokend_connections", "Connections open, by listener");
const USER_CONNECTIONS: Family = (
    "tokend_user_connections",
    "Connections open, by the peer's uid",
);

/// A gauge family and its series.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut Encoder,
    (name, help): Family,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Written {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A counter family and its series.
fn counters<L: EncodeLabelSet>(
    encoder: &mut Encoder,
    (name, help): Family,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Written {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn histogram(encoder: &mut Encoder, (name, help): Family, histogram: &Histogram) -> Written {
    histogram.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

/// The process's start, resident memory and open descriptors (the last
/// two where the platform tells them).
fn process_series(shared: &Shared, encoder: &mut Encoder) -> Written {
    let started = shared.metrics.started_at;
    let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauges(
        encoder,
        (
            "process_start_time_seconds",
            "When the daemon started (Unix seconds)",
        ),
        [(NONE, started)],
    )?;
    if let Some(bytes) = process::resident_memory_bytes() {
        let family = (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        );
        gauges(encoder, family, [(NONE, as_gauge(bytes))])?;
    }
    if let Some(fds) = process::open_fds() {
        let family = ("process_open_fds", "Open file descriptors");
        gauges(encoder, family, [(NONE, as_gauge(fds))])?;
    }
    Ok(())
}
