//! The counters `GET /v1/metrics` reports (tokens served, refreshes by
//! result), kept beside the credentials rather than in them.
//!
//! 100,000 credentials must fit the daemon's memory goal, which leaves no
//! room for counters in every [`crate::state::credential::Live`]. Here a
//! credential costs nothing until a token of it is served or a refresh of
//! it ends, and the one lock is held for a hash look-up and an addition.

use std::collections::HashMap;
use std::sync::Mutex;

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
}

impl RefreshResult {
    /// Every result, in the order of [`Counts::refreshes`].
    pub const ALL: [RefreshResult; 7] = [
        RefreshResult::Ok,
        RefreshResult::Transient,
        RefreshResult::Unsent,
        RefreshResult::InDoubt,
        RefreshResult::Unusable,
        RefreshResult::InvalidGrant,
        RefreshResult::ClientError,
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
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One credential's counters since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub served: u64,
    /// Indexed like [`RefreshResult::ALL`].
    pub refreshes: [u64; RefreshResult::ALL.len()],
}

impl Counts {
    pub fn refreshes(&self, result: RefreshResult) -> u64 {
        self.refreshes[result.index()]
    }
}

/// The counters of every credential that has any, by name.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<HashMap<Box<str>, Counts>>,
}

impl Metrics {
    /// A token of `name` was handed out (the token hot path: one look-up).
    pub fn served(&self, name: &str) {
        self.bump(name, |c| c.served += 1);
    }

    /// A refresh of `name` ended with `result`.
    pub fn refreshed(&self, name: &str, result: RefreshResult) {
        self.bump(name, |c| c.refreshes[result.index()] += 1);
    }

    /// `name`'s counters (all zero if it has none).
    pub fn counts(&self, name: &str) -> Counts {
        self.lock().get(name).copied().unwrap_or_default()
    }

    /// Drops a removed credential's counters: a name that is gone must
    /// not keep memory for good.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The name is copied only the first time: every later call finds it.
    fn bump(&self, name: &str, change: impl FnOnce(&mut Counts)) {
        let mut counts = self.lock();
        match counts.get_mut(name) {
            Some(c) => change(c),
            None => change(counts.entry(name.into()).or_default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Counts>> {
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
        m.served("a");
        m.served("a");
        m.refreshed("a", RefreshResult::Ok);
        m.refreshed("b", RefreshResult::InvalidGrant);
        let a = m.counts("a");
        assert_eq!(a.served, 2);
        assert_eq!(a.refreshes(RefreshResult::Ok), 1);
        assert_eq!(a.refreshes(RefreshResult::InvalidGrant), 0);
        assert_eq!(m.counts("b").refreshes(RefreshResult::InvalidGrant), 1);
        m.forget("a");
        assert_eq!(m.counts("a"), Counts::default());
    }

    /// The token hot path's added cost: two threads (this machine's
    /// cores) serving tokens of 1,000 credentials through the one lock.
    /// Run with `cargo test -p tokend --release --lib metrics_served_cost
    /// -- --ignored --nocapture`; it prints the time per call.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn metrics_served_cost_per_call_under_contention() {
        let m = std::sync::Arc::new(Metrics::default());
        let names: Vec<String> = (0..1000).map(|i| format!("cred-{i}")).collect();
        let calls = 1_000_000;
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (m, names) = (m.clone(), names.clone());
                std::thread::spawn(move || {
                    for i in 0..calls {
                        m.served(&names[(i * 7 + t) % names.len()]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let per_call = started.elapsed() / (2 * calls as u32);
        println!("Metrics::served: {per_call:?} per call, 2 threads");
        let total: u64 = names.iter().map(|n| m.counts(n).served).sum();
        assert_eq!(total, 2 * calls as u64);
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
