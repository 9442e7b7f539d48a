//! The refresh scheduler: credentials ordered by when they are due, and one
//! task that sleeps until the earliest is due or the schedule changes.
//!
//! Modelled on mini-redis's expiry task, with one difference: the deadline
//! is wall-clock time, and the task never sleeps longer than
//! [`MAX_SLEEP_MS`], so a suspend/resume or a clock step cannot make it miss
//! a refresh (DESIGN §4.8).

use crate::state::Shared;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

/// The longest sleep: the wall clock is re-read at least this often.
pub const MAX_SLEEP_MS: i64 = 30_000;

/// Wall-clock slews smaller than this are not steps.
const STEP_TOLERANCE_MS: i64 = 1_000;

#[derive(Debug, Default)]
struct Queue {
    by_time: BTreeSet<(i64, String)>,
    by_name: HashMap<String, i64>,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    queue: Mutex<Queue>,
    changed: Notify,
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets when `name` is next due (Unix ms), replacing any earlier entry.
    pub fn schedule(&self, name: &str, due_ms: i64) {
        let wake = {
            let mut q = self.lock();
            if let Some(old) = q.by_name.insert(name.to_string(), due_ms) {
                q.by_time.remove(&(old, name.to_string()));
            }
            q.by_time.insert((due_ms, name.to_string()));
            // Only an entry that became the first one changes the sleep.
            q.by_time
                .first()
                .is_some_and(|(t, n)| *t == due_ms && n == name)
        };
        if wake {
            self.changed.notify_one();
        }
    }

    pub fn unschedule(&self, name: &str) {
        let mut q = self.lock();
        if let Some(old) = q.by_name.remove(name) {
            q.by_time.remove(&(old, name.to_string()));
        }
    }

    /// When `name` is due, if scheduled.
    pub fn due_of(&self, name: &str) -> Option<i64> {
        self.lock().by_name.get(name).copied()
    }

    /// Removes and returns every entry due at or before `now_ms`.
    fn take_due(&self, now_ms: i64) -> Vec<String> {
        let mut q = self.lock();
        let mut due = Vec::new();
        while let Some((t, _)) = q.by_time.first() {
            if *t > now_ms {
                break;
            }
            let (_, name) = q.by_time.pop_first().expect("first exists");
            q.by_name.remove(&name);
            due.push(name);
        }
        due
    }

    /// Moves every entry by `ms`: after the wall clock stepped back by
    /// `-ms`, each refresh stays as far away in real time as it was.
    fn shift_all(&self, ms: i64) {
        let mut q = self.lock();
        let entries = std::mem::take(&mut q.by_time);
        q.by_time = entries
            .into_iter()
            .map(|(t, name)| (t.saturating_add(ms), name))
            .collect();
        for t in q.by_name.values_mut() {
            *t = t.saturating_add(ms);
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.lock().by_time.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.lock().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The scheduler task: starts a refresh for each due credential.
///
/// Due times are wall-clock times, so a suspend or a forward step makes
/// them come sooner, as they should. A backwards step would make every
/// refresh late by its size: the task notices it (the wall clock fell
/// behind the monotonic one) and moves the whole schedule back with it.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut skew = shared.clock.skew_ms();
    loop {
        let now_skew = shared.clock.skew_ms();
        if now_skew < skew - STEP_TOLERANCE_MS {
            tracing::warn!(
                step_ms = now_skew - skew,
                "the wall clock stepped back; the refresh schedule moves with it"
            );
            shared.scheduler.shift_all(now_skew - skew);
        }
        skew = now_skew;
        let now = shared.clock.now_ms();
        for name in shared.scheduler.take_due(now) {
            if let Some(cred) = shared.registry.get(&name) {
                let seen = cred.with_live(|l| l.attempts);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = crate::token::refresh(shared, cred, seen).await;
                });
            }
        }
        let sleep_ms = shared
            .scheduler
            .next_due()
            .map_or(MAX_SLEEP_MS, |due| (due - now).clamp(0, MAX_SLEEP_MS));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms as u64)) => {}
            _ = shared.scheduler.changed.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_in_time_order_and_reschedule_replaces() {
        let s = Scheduler::default();
        s.schedule("b", 200);
        s.schedule("a", 100);
        s.schedule("c", 300);
        s.schedule("c", 50);
        assert_eq!(s.len(), 3);
        assert_eq!(s.take_due(150), vec!["c".to_string(), "a".to_string()]);
        assert_eq!(s.next_due(), Some(200));
        s.unschedule("b");
        assert!(s.is_empty());
    }

    #[test]
    fn shifting_moves_every_entry() {
        let s = Scheduler::default();
        s.schedule("a", 5_000);
        s.schedule("b", 9_000);
        s.shift_all(-4_000);
        assert_eq!(s.due_of("a"), Some(1_000));
        assert_eq!(s.take_due(1_000), vec!["a".to_string()]);
        assert_eq!(s.next_due(), Some(5_000));
    }
}
