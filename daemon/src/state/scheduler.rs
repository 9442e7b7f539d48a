//! The refresh schedule: credentials ordered by when they are due (wall
//! clock, Unix ms). It only records and signals; the refresher task
//! (`token/refresher.rs`) sleeps on it and starts the refreshes.
//!
//! Modelled on mini-redis's expiry queue: a `BTreeSet` ordered by deadline
//! plus a `Notify` that fires only when a new entry became the first.
//!
//! Both indexes share one `Arc<str>` of each name (one allocation, two
//! 16-byte pointers), not a `String` each: the refresh schedule holds
//! every credential that refreshes and the warnings queue every one with
//! a forecast not yet warned of (docs/BENCHMARKS.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Queue {
    by_time: BTreeSet<(i64, Arc<str>)>,
    by_name: HashMap<Arc<str>, i64>,
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
            let key = match q.by_name.get_key_value(name) {
                Some((key, &old)) => {
                    let key = key.clone();
                    q.by_time.remove(&(old, key.clone()));
                    key
                }
                None => Arc::from(name),
            };
            q.by_name.insert(key.clone(), due_ms);
            q.by_time.insert((due_ms, key));
            // Only an entry that became the first one changes the sleep.
            q.by_time
                .first()
                .is_some_and(|(t, n)| *t == due_ms && &**n == name)
        };
        if wake {
            self.changed.notify_one();
        }
    }

    pub fn unschedule(&self, name: &str) {
        let mut q = self.lock();
        if let Some((key, old)) = q.by_name.remove_entry(name) {
            q.by_time.remove(&(old, key));
        }
    }

    /// When `name` is due, if scheduled.
    pub fn due_of(&self, name: &str) -> Option<i64> {
        self.lock().by_name.get(name).copied()
    }

    /// Removes and returns every entry due at or before `now_ms`.
    pub fn take_due(&self, now_ms: i64) -> Vec<Arc<str>> {
        let mut q = self.lock();
        let mut due = Vec::new();
        while let Some((t, _)) = q.by_time.first() {
            if *t > now_ms {
                break;
            }
            let (_, name) = q.by_time.pop_first().expect("first exists");
            q.by_name.remove(&*name);
            due.push(name);
        }
        due
    }

    /// Moves every entry by `ms`: after the wall clock stepped back by
    /// `-ms`, each refresh stays as far away in real time as it was.
    pub fn shift_all(&self, ms: i64) {
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

    pub fn next_due(&self) -> Option<i64> {
        self.lock().by_time.first().map(|(t, _)| *t)
    }

    /// Resolves when the first entry changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn len(&self) -> usize {
        self.lock().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert_eq!(s.take_due(150), vec![Arc::from("c"), Arc::from("a")]);
        assert_eq!(s.next_due(), Some(200));
        s.unschedule("b");
        assert!(s.is_empty());
    }

    /// Both indexes hold the same allocation of a name, and a reschedule
    /// keeps it: one name per entry, not two.
    #[test]
    fn an_entry_holds_its_name_once() {
        let s = Scheduler::default();
        s.schedule("a", 100);
        s.schedule("a", 50);
        let q = s.lock();
        let (key, _) = q.by_name.get_key_value("a").unwrap();
        let (_, in_time) = q.by_time.first().unwrap();
        assert!(Arc::ptr_eq(key, in_time));
        assert_eq!(Arc::strong_count(key), 2);
    }

    #[test]
    fn shifting_moves_every_entry() {
        let s = Scheduler::default();
        s.schedule("a", 5_000);
        s.schedule("b", 9_000);
        s.shift_all(-4_000);
        assert_eq!(s.due_of("a"), Some(1_000));
        assert_eq!(s.take_due(1_000), vec![Arc::<str>::from("a")]);
        assert_eq!(s.next_due(), Some(5_000));
    }
}
