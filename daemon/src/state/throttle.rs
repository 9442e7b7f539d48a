//! How many lines a log may spend on one kind of event from one source:
//! a few per interval, and the count of the rest. A client can make the
//! daemon refuse it as often as it likes; it must not be able to fill the
//! disk or bury other lines by it.
//!
//! The one implementation behind both the connection refusals at accept
//! time (`server/admission.rs`, per kind of refusal) and the refused
//! requests (`state/refusals.rs`, per peer uid).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `lines` lines per `every`, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub lines: u32,
    pub every: Duration,
}

/// What to do with one event's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines of this key's previous interval were
    /// not written and not yet counted in any line.
    Log { suppressed: u64 },
    /// Do not write it (it is counted); `first` when it is the first line
    /// held back in this interval, i.e. a count is now owed at its end.
    Quiet { first: bool },
}

/// One key's current interval.
#[derive(Debug)]
struct Window {
    ends: Instant,
    logged: u32,
    suppressed: u64,
}

/// The intervals of every key seen lately.
#[derive(Debug)]
pub struct Throttle<K> {
    windows: HashMap<K, Window>,
}

impl<K> Default for Throttle<K> {
    fn default() -> Self {
        Throttle {
            windows: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    /// Counts one event of `key` at `now` and says whether to log it.
    pub fn allow(&mut self, key: K, rate: Rate, now: Instant) -> Verdict {
        let mut owed = 0;
        if let Some(window) = self.windows.get(&key)
            && now >= window.ends
        {
            owed = window.suppressed;
            self.windows.remove(&key);
        }
        let window = self.windows.entry(key).or_insert(Window {
            ends: now + rate.every,
            logged: 0,
            suppressed: 0,
        });
        if window.logged < rate.lines {
            window.logged += 1;
            return Verdict::Log { suppressed: owed };
        }
        window.suppressed += 1;
        Verdict::Quiet {
            first: window.suppressed == 1,
        }
    }

    /// Closes every interval over by `now`; returns the keys that held
    /// lines back in theirs, with how many. Also what keeps the map small:
    /// a key is kept only while its interval lasts.
    pub fn ended(&mut self, now: Instant) -> Vec<(K, u64)> {
        let mut owed = Vec::new();
        self.windows.retain(|key, window| {
            let over = now >= window.ends;
            if over && window.suppressed > 0 {
                owed.push((key.clone(), window.suppressed));
            }
            !over
        });
        owed
    }

    /// When the first interval that owes a count ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.ends)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        lines: 3,
        every: Duration::from_secs(60),
    };

    #[test]
    fn a_few_lines_pass_and_the_rest_are_counted_once_the_interval_ends() {
        let mut t = Throttle::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.allow(7, RATE, start), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(t.allow(7, RATE, start), Verdict::Quiet { first: true });
        for _ in 0..1500 {
            assert_eq!(t.allow(7, RATE, start), Verdict::Quiet { first: false });
        }
        assert_eq!(t.next_due(), Some(start + RATE.every));
        assert!(
            t.ended(start + RATE.every - Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(t.ended(start + RATE.every), vec![(7, 1501)]);
        assert_eq!(t.next_due(), None);
        assert_eq!(
            t.allow(7, RATE, start + RATE.every),
            Verdict::Log { suppressed: 0 },
            "a new interval, and the count was given once"
        );
    }

    #[test]
    fn each_key_has_its_own_interval() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for _ in 0..3 {
            t.allow(1, RATE, now);
        }
        assert_eq!(t.allow(1, RATE, now), Verdict::Quiet { first: true });
        assert_eq!(t.allow(2, RATE, now), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn a_count_not_collected_yet_comes_with_the_next_line() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for _ in 0..5 {
            t.allow(1, RATE, now);
        }
        assert_eq!(
            t.allow(1, RATE, now + RATE.every),
            Verdict::Log { suppressed: 2 }
        );
        assert!(t.ended(now + RATE.every).is_empty(), "already counted");
    }

    #[test]
    fn an_interval_without_events_owes_nothing_and_is_forgotten() {
        let mut t = Throttle::default();
        let now = Instant::now();
        t.allow(1, RATE, now);
        assert_eq!(t.next_due(), None);
        assert!(t.ended(now + RATE.every).is_empty());
        assert!(t.windows.is_empty());
    }
}
