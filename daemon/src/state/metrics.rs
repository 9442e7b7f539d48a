//! The counters `GET /v1/metrics` reports (tokens served, refreshes by
//! result, doubts settled, refusals, lock waits, proxied requests), kept
//! beside the credentials rather than in them.
//!
//! 100,000 credentials must fit the daemon's memory goal, which leaves no
//! room for counters in every [`crate::state::credential::Live`]. Here a
//! credential costs nothing until a token of it is served or a refresh of
//! it ends, and the one lock is held for a hash look-up and an addition.

use crate::state::credential::Credential;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// One credential's counters since the daemon started (or all
/// credentials' summed, removed ones included). The tokens it served are
/// counted in the credential itself
/// ([`crate::state::credential::Live::served`]): every credential serves,
/// and an entry here for each would break the memory goal; only a
/// credential that has refreshed, or whose count wrapped, has one.
/// `u32` each for a credential (52 bytes an entry: four billion refreshes
/// of one credential do not happen), `u64` for the sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts<N = u32> {
    /// How many times the credential's `served` went round (2³² each).
    pub served_wraps: N,
    /// Indexed like [`RefreshResult::ALL`].
    pub refreshes: [N; RefreshResult::ALL.len()],
    /// Indexed like [`Doubt::ALL`].
    pub doubts: [N; Doubt::ALL.len()],
}

impl<N: Copy + Into<u64>> Counts<N> {
    pub fn refreshes(&self, result: RefreshResult) -> u64 {
        self.refreshes[result.index()].into()
    }

    pub fn doubts(&self, outcome: Doubt) -> u64 {
        self.doubts[outcome as usize].into()
    }
}

/// What one counter of [`Counts`] counts.
#[derive(Debug, Clone, Copy)]
enum Event {
    Wrap,
    Refresh(RefreshResult),
    Doubt(Doubt),
}

impl<N: Copy + std::ops::AddAssign + From<u8>> Counts<N> {
    fn add(&mut self, event: Event) {
        let counter = match event {
            Event::Wrap => &mut self.served_wraps,
            Event::Refresh(r) => &mut self.refreshes[r.index()],
            Event::Doubt(d) => &mut self.doubts[d as usize],
        };
        *counter += N::from(1);
    }
}

/// Buckets of `tokend_refresh_duration_seconds` and
/// `tokend_store_lock_wait_seconds`: from 5 ms (a local provider, an
/// uncontended lock) to a minute (a provider at its HTTP timeout).
const SECONDS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The statuses a proxied answer can have (100 to 599), each counted.
const STATUSES: usize = 500;

/// Every counter a scrape reports. The per-credential ones live in one
/// map with one short lock; the rest are atomics or the crate's own
/// histograms, which need no lock of ours. Nothing here is touched on the
/// token path: a credential counts the tokens it serves itself.
#[derive(Debug)]
pub struct Metrics {
    counts: Mutex<Tally>,
    refused: [AtomicU64; Refused::ALL.len()],
    /// How long the provider took to answer a refresh (or fail to).
    pub refresh_seconds: Histogram,
    /// How long taking the store's refresh lock took (in a fleet, the
    /// wait for another member's refresh).
    pub lock_wait_seconds: Histogram,
    /// Refreshes that found another member holding the lock.
    lock_busy: AtomicU64,
    /// Proxied requests by the status answered (index: status − 100).
    proxied: Box<[AtomicU64; STATUSES]>,
    proxy_retries: AtomicU64,
    /// When the daemon started (Unix seconds), read once: a value
    /// computed at each scrape from two clocks would wobble by a second.
    pub started_at: i64,
    /// Scrapes being written now, in all and by uid (see [`Metrics::begin_scrape`]).
    scrapes: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counts: Default::default(),
            refused: Default::default(),
            refresh_seconds: Histogram::new(SECONDS_BUCKETS),
            lock_wait_seconds: Histogram::new(SECONDS_BUCKETS),
            lock_busy: Default::default(),
            proxied: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            proxy_retries: Default::default(),
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            scrapes: Default::default(),
        }
    }
}

/// The per-credential counters, their running sums (which a removed
/// credential does not take back: a counter never goes down), and the
/// tokens served by credentials since removed.
#[derive(Debug, Default)]
struct Tally {
    by_name: HashMap<Box<str>, Counts>,
    all: Counts<u64>,
    gone_served: u64,
}

/// Scrapes written at once, in all and by one uid: each holds a thread
/// that writes it (from the pool the store's writes use too) for as long
/// as its reader takes, at most `limits.idle_timeout_secs`.
const MAX_SCRAPES: usize = 4;
const MAX_SCRAPES_PER_UID: usize = 1;

/// A scrape being written; its place is given back when dropped (by the
/// thread that writes it, when it ends in any way).
#[derive(Debug)]
pub struct ScrapeSlot {
    running: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for ScrapeSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.uid);
            }
        }
    }
}

impl Metrics {
    /// `name`'s own count of tokens served went round to zero. Called
    /// under the credential's lock, as [`Metrics::served_by`] is, so a
    /// scrape never sees the count wrapped but the wrap not yet counted.
    pub fn served_wrapped(&self, name: &str) {
        self.bump(name, Event::Wrap);
    }

    /// Tokens `name` served, from the credential's own count `low`.
    pub fn served_by(&self, name: &str, low: u32) -> u64 {
        (u64::from(self.counts(name).served_wraps) << 32) + u64::from(low)
    }

    /// Tokens served by credentials since removed.
    pub fn served_by_removed(&self) -> u64 {
        self.lock().gone_served
    }

    /// A refresh of `name` ended with `result`.
    pub fn refreshed(&self, name: &str, result: RefreshResult) {
        self.bump(name, Event::Refresh(result));
    }

    /// A refresh token of `name` in doubt was settled (or not) so.
    pub fn doubt(&self, name: &str, outcome: Doubt) {
        self.bump(name, Event::Doubt(outcome));
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
        if let Some(count) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.proxied.get(i))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if retried {
            self.proxy_retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Proxied requests by status (those seen), and how many were retried.
    pub fn proxy_counts(&self) -> (Vec<(u16, u64)>, u64) {
        let by_status = (100u16..)
            .zip(self.proxied.iter())
            .map(|(status, n)| (status, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        (by_status, self.proxy_retries.load(Ordering::Relaxed))
    }

    /// `name`'s counters (all zero if it has none).
    pub fn counts(&self, name: &str) -> Counts {
        self.lock().by_name.get(name).copied().unwrap_or_default()
    }

    /// Every credential's counters summed, removed ones included.
    pub fn totals(&self) -> Counts<u64> {
        self.lock().all
    }

    /// Drops the counters of a credential removed or replaced (a name
    /// that is gone must not keep memory for good, and a replacement
    /// starts from zero), keeping the tokens it served in the sum.
    pub fn forget(&self, gone: &Credential) {
        gone.with_live(|l| {
            let mut tally = self.lock();
            let wraps = tally
                .by_name
                .remove(&gone.name)
                .map_or(0, |c| c.served_wraps);
            tally.gone_served += (u64::from(wraps) << 32) + u64::from(l.served);
        });
    }

    /// A place for one more scrape by `uid`, unless [`MAX_SCRAPES`] run
    /// already, or [`MAX_SCRAPES_PER_UID`] of this uid's.
    pub fn begin_scrape(&self, uid: u32) -> Option<ScrapeSlot> {
        let mut running = self.scrapes();
        let total: usize = running.values().sum();
        let mine = running.get(&uid).copied().unwrap_or(0);
        if total >= MAX_SCRAPES || mine >= MAX_SCRAPES_PER_UID {
            return None;
        }
        *running.entry(uid).or_insert(0) += 1;
        Some(ScrapeSlot {
            running: self.scrapes.clone(),
            uid,
        })
    }

    fn scrapes(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.scrapes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name is copied only the first time: every later call finds it.
    fn bump(&self, name: &str, event: Event) {
        let mut tally = self.lock();
        tally.all.add(event);
        match tally.by_name.get_mut(name) {
            Some(c) => c.add(event),
            None => tally.by_name.entry(name.into()).or_default().add(event),
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
        m.refreshed("a", RefreshResult::Ok);
        m.refreshed("b", RefreshResult::InvalidGrant);
        m.doubt("b", Doubt::Rotated);
        let a = m.counts("a");
        assert_eq!(a.refreshes(RefreshResult::Ok), 1);
        assert_eq!(a.refreshes(RefreshResult::InvalidGrant), 0);
        assert_eq!(m.counts("b").refreshes(RefreshResult::InvalidGrant), 1);
        assert_eq!(m.counts("b").doubts(Doubt::Rotated), 1);
        m.served_wrapped("a");
        let a = Credential::from_stored(crate::store::sqlite::tests::bearer("a", "t"));
        a.with_live(|l| l.served = 2);
        m.forget(&a);
        assert_eq!(m.counts("a"), Counts::default());
        // The sums keep what a removed credential did: counters never fall.
        assert_eq!(m.totals().refreshes(RefreshResult::Ok), 1);
        assert_eq!(m.served_by_removed(), (1 << 32) + 2);
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
    fn metrics_scrapes_are_limited_in_all_and_per_uid() {
        let m = Metrics::default();
        let first = m.begin_scrape(1000).unwrap();
        assert!(m.begin_scrape(1000).is_none(), "one at a time per uid");
        let others: Vec<_> = (0..3).map(|u| m.begin_scrape(u).unwrap()).collect();
        assert!(m.begin_scrape(2000).is_none(), "four in all");
        drop(first);
        assert!(
            m.begin_scrape(1000).is_some(),
            "a finished scrape frees its place"
        );
        drop(others);
        assert!(m.scrapes().is_empty());
    }

    #[test]
    fn metrics_proxied_statuses_are_counted_and_odd_ones_ignored() {
        let m = Metrics::default();
        m.proxied(200, false);
        m.proxied(200, true);
        m.proxied(503, false);
        m.proxied(99, false);
        m.proxied(600, false);
        assert_eq!(m.proxy_counts(), (vec![(200, 2), (503, 1)], 1));
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
