//! The counters `GET /v1/metrics` reports (tokens served, refreshes by
//! result, doubts settled, refusals, lock waits, proxied requests), kept
//! beside the credentials rather than in them.
//!
//! 100,000 credentials must fit the daemon's memory goal, which leaves no
//! room for counters in every [`crate::state::credential::Live`]. Here a
//! credential costs nothing until a token of it is served or a refresh of
//! it ends, and the one lock is held for a hash look-up and an addition.

use prometheus_client::metrics::histogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How one refresh attempt that reached the provider (or meant to) ended:
/// the `result` label of `tokend_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// A new token set came back.
    Ok,
    /// The provider failed or asked to wait (5xx, 429, 408): retried later.
    Transient,
    /// Nothing was sent (no connection, the send budget ran out).
    Unsent,
    /// No answer could be read after a rotating refresh: its refresh token
    /// is in doubt.
    InDoubt,
    /// An answer tokend cannot use (no token, an odd body, a non-Bearer type).
    Unusable,
    /// The grant is refused (`invalid_grant`): a login is needed.
    InvalidGrant,
    /// Any other refusal of the client or the request (`invalid_client`, …).
    ClientError,
    /// Not attempted: this host could not (no HTTP client, the store not
    /// writable for the journal mark).
    Local,
}

impl RefreshResult {
    /// Every result, in the order of [`Counts::refreshes`].
    pub const ALL: [RefreshResult; 8] = [
        RefreshResult::Ok,
        RefreshResult::Transient,
        RefreshResult::Unsent,
        RefreshResult::InDoubt,
        RefreshResult::Unusable,
        RefreshResult::InvalidGrant,
        RefreshResult::ClientError,
        RefreshResult::Local,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Ok => "ok",
            RefreshResult::Transient => "transient",
            RefreshResult::Unsent => "unsent",
            RefreshResult::InDoubt => "in_doubt",
            RefreshResult::Unusable => "unusable",
            RefreshResult::InvalidGrant => "invalid_grant",
            RefreshResult::ClientError => "client_error",
            RefreshResult::Local => "local",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a refresh token in doubt was settled: the `outcome` label of
/// `tokend_in_doubt_resolutions_total` (docs/RULES.md, "In-doubt refreshes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// Introspection says it is still active: the refresh goes on.
    Active,
    /// Introspection says it is no longer active: it was rotated, a login
    /// is needed.
    Rotated,
    /// The provider offers no introspection: it is never sent again.
    NoIntrospection,
    /// Introspection failed: still in doubt, asked again later.
    Unanswered,
}

impl Doubt {
    pub const ALL: [Doubt; 4] = [
        Doubt::Active,
        Doubt::Rotated,
        Doubt::NoIntrospection,
        Doubt::Unanswered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Doubt::Active => "active",
            Doubt::Rotated => "rotated",
            Doubt::NoIntrospection => "no_introspection",
            Doubt::Unanswered => "unanswered",
        }
    }
}

/// Why a request or a connection was refused: the `reason` label of
/// `tokend_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer may not use the credential, or is not an admin.
    PermissionDenied,
    UnknownCredential,
    /// The credential needs a login, or is failing.
    NotUsable,
    /// A malformed request or a bad argument.
    InvalidArgument,
    /// Busy or timed out: try again.
    Busy,
    /// A connection over a connection limit (global or the user's share).
    ConnectionLimit,
    /// Anything else (the provider's error on a forced refresh, …).
    Other,
}

impl Refused {
    pub const ALL: [Refused; 7] = [
        Refused::PermissionDenied,
        Refused::UnknownCredential,
        Refused::NotUsable,
        Refused::InvalidArgument,
        Refused::Busy,
        Refused::ConnectionLimit,
        Refused::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::PermissionDenied => "permission_denied",
            Refused::UnknownCredential => "unknown_credential",
            Refused::NotUsable => "not_usable",
            Refused::InvalidArgument => "invalid_argument",
            Refused::Busy => "busy",
            Refused::ConnectionLimit => "connection_limit",
            Refused::Other => "other",
        }
    }
}

/// One credential's refresh counters since the daemon started (or the
/// sum of all credentials', for a scrape without credential names). The
/// tokens it served are counted in the credential itself
/// ([`crate::state::credential::Live::served`]): every credential serves,
/// and an entry here for each would break the memory goal; only a
/// credential that refreshes, or whose count wraps, has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// How many times the credential's `served` went round (2³² each).
    pub served_wraps: u64,
    /// Indexed like [`RefreshResult::ALL`].
    pub refreshes: [u64; RefreshResult::ALL.len()],
    /// Indexed like [`Doubt::ALL`].
    pub doubts: [u64; Doubt::ALL.len()],
}

impl Counts {
    pub fn refreshes(&self, result: RefreshResult) -> u64 {
        self.refreshes[result.index()]
    }

    pub fn doubts(&self, outcome: Doubt) -> u64 {
        self.doubts[outcome as usize]
    }
}

/// Buckets of `tokend_refresh_duration_seconds` and
/// `tokend_store_lock_wait_seconds`: from 5 ms (a local provider, an
/// uncontended lock) to a minute (a provider at its HTTP timeout).
const SECONDS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Every counter a scrape reports. The per-credential ones live in one
/// map with one short lock; the rest are atomics or the crate's own
/// histograms, which need no lock of ours.
#[derive(Debug)]
pub struct Metrics {
    counts: Mutex<Tally>,
    /// Tokens served by all credentials, removed ones included.
    served_all: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
    /// How long the provider took to answer a refresh (or fail to).
    pub refresh_seconds: Histogram,
    /// How long taking the store's refresh lock took (in a fleet, the
    /// wait for another member's refresh).
    pub lock_wait_seconds: Histogram,
    /// Refreshes that found another member holding the lock.
    lock_busy: AtomicU64,
    /// Proxied requests by the status answered, and those retried.
    proxied: Mutex<BTreeMap<u16, u64>>,
    proxy_retries: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counts: Default::default(),
            served_all: Default::default(),
            refused: Default::default(),
            refresh_seconds: Histogram::new(SECONDS_BUCKETS),
            lock_wait_seconds: Histogram::new(SECONDS_BUCKETS),
            lock_busy: Default::default(),
            proxied: Default::default(),
            proxy_retries: Default::default(),
        }
    }
}

/// The per-credential counters and their running sum (which a removed
/// credential does not take back: a counter never goes down).
#[derive(Debug, Default)]
struct Tally {
    by_name: HashMap<Box<str>, Counts>,
    all: Counts,
}

impl Metrics {
    /// A token was handed out (the token hot path: one atomic addition;
    /// the credential counts its own).
    pub fn served(&self) {
        self.served_all.fetch_add(1, Ordering::Relaxed);
    }

    /// `name`'s own count of tokens served went round to zero.
    pub fn served_wrapped(&self, name: &str) {
        self.bump(name, |c| c.served_wraps += 1);
    }

    /// Tokens `name` served, from the credential's own count `low`.
    pub fn served_by(&self, name: &str, low: u32) -> u64 {
        (self.counts(name).served_wraps << 32) + u64::from(low)
    }

    /// Tokens served by all credentials, removed ones included.
    pub fn served_total(&self) -> u64 {
        self.served_all.load(Ordering::Relaxed)
    }

    /// A refresh of `name` ended with `result`.
    pub fn refreshed(&self, name: &str, result: RefreshResult) {
        self.bump(name, |c| c.refreshes[result.index()] += 1);
    }

    /// A refresh token of `name` in doubt was settled (or not) so.
    pub fn doubt(&self, name: &str, outcome: Doubt) {
        self.bump(name, |c| c.doubts[outcome as usize] += 1);
    }

    /// A request or connection was refused for `reason`.
    pub fn refused(&self, reason: Refused) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, reason: Refused) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// A refresh found the store's lock held by another member.
    pub fn lock_busy(&self) {
        self.lock_busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lock_busy_total(&self) -> u64 {
        self.lock_busy.load(Ordering::Relaxed)
    }

    /// A proxied request was answered with `status`, after a retry or not.
    pub fn proxied(&self, status: u16, retried: bool) {
        *self
            .proxied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_insert(0) += 1;
        if retried {
            self.proxy_retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Proxied requests by status, and how many were retried.
    pub fn proxy_counts(&self) -> (Vec<(u16, u64)>, u64) {
        let by_status = self.proxied.lock().unwrap_or_else(|p| p.into_inner());
        (
            by_status.iter().map(|(&s, &n)| (s, n)).collect(),
            self.proxy_retries.load(Ordering::Relaxed),
        )
    }

    /// `name`'s counters (all zero if it has none).
    pub fn counts(&self, name: &str) -> Counts {
        self.lock().by_name.get(name).copied().unwrap_or_default()
    }

    /// Every credential's counters summed, removed ones included.
    pub fn totals(&self) -> Counts {
        self.lock().all
    }

    /// Drops a removed credential's counters: a name that is gone must
    /// not keep memory for good.
    pub fn forget(&self, name: &str) {
        self.lock().by_name.remove(name);
    }

    /// The name is copied only the first time: every later call finds it.
    fn bump(&self, name: &str, change: impl Fn(&mut Counts)) {
        let mut tally = self.lock();
        change(&mut tally.all);
        match tally.by_name.get_mut(name) {
            Some(c) => change(c),
            None => change(tally.by_name.entry(name.into()).or_default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_per_credential_and_result_and_forget_removed_names() {
        let m = Metrics::default();
        assert_eq!(m.counts("a"), Counts::default());
        m.served();
        m.served();
        m.refreshed("a", RefreshResult::Ok);
        m.refreshed("b", RefreshResult::InvalidGrant);
        m.doubt("b", Doubt::Rotated);
        let a = m.counts("a");
        assert_eq!(a.refreshes(RefreshResult::Ok), 1);
        assert_eq!(a.refreshes(RefreshResult::InvalidGrant), 0);
        assert_eq!(m.counts("b").refreshes(RefreshResult::InvalidGrant), 1);
        assert_eq!(m.counts("b").doubts(Doubt::Rotated), 1);
        m.forget("a");
        assert_eq!(m.counts("a"), Counts::default());
        // The sums keep what a removed credential did: counters never fall.
        assert_eq!(m.totals().refreshes(RefreshResult::Ok), 1);
        assert_eq!(m.served_total(), 2);
    }

    #[test]
    fn metrics_served_counts_add_the_wraps_of_the_credentials_own() {
        let m = Metrics::default();
        assert_eq!(m.served_by("a", 7), 7);
        m.served_wrapped("a");
        m.served_wrapped("a");
        assert_eq!(m.served_by("a", 7), (2 << 32) + 7);
        assert_eq!(m.served_by("b", 7), 7);
    }

    #[test]
    fn metrics_results_are_listed_in_index_order_with_distinct_labels() {
        for (i, r) in RefreshResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let labels: std::collections::HashSet<_> =
            RefreshResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefreshResult::ALL.len());
    }
}
