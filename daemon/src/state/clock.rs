//! The two clocks the lifecycle reads (docs/RULES.md, "Two clocks").
//!
//! Expiry is stored as wall-clock time, because it must survive restarts
//! and suspend. But the wall clock can be stepped: backwards, it would make
//! an expired token look valid and push every refresh later by the size of
//! the step. So beside each wall-clock deadline the daemon keeps a
//! monotonic one, and a token is valid only while *both* say so.
//!
//! Production reads the system clocks; tests shift each one separately to
//! play a suspend (the wall clock jumps, the monotonic one does not), a
//! clock step, or time passing, without waiting.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// Monotonic readings start here, so that no reading is ever 0 (which
/// stands for "none" in a [`crate::state::credential::Stamp`]) or negative, even
/// when a test shifts the clock back.
const MONO_BASE_MS: i64 = 1 << 40;

/// System time plus offsets that only tests change.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    mono_offset_ms: AtomicI64,
}

impl Clock {
    /// Unix milliseconds: the scheduler's unit, so short-lived tokens
    /// (seconds) are refreshed on time.
    pub fn now_ms(&self) -> i64 {
        system_now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Unix seconds: the unit of stored and shown times.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Milliseconds on a clock that never jumps (`CLOCK_MONOTONIC`), from an
    /// arbitrary origin: only differences and comparisons mean anything.
    pub fn mono_ms(&self) -> i64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let elapsed = ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as i64;
        MONO_BASE_MS + elapsed + self.mono_offset_ms.load(Ordering::Relaxed)
    }

    /// The monotonic reading at which the wall clock will read `wall_ms`,
    /// if neither jumps meanwhile.
    pub fn mono_at(&self, wall_ms: i64) -> i64 {
        self.mono_ms()
            .saturating_add(wall_ms.saturating_sub(self.now_ms()))
    }

    /// How far the wall clock is ahead of the monotonic one. It changes only
    /// when the wall clock is stepped or the machine was suspended.
    pub fn skew_ms(&self) -> i64 {
        self.now_ms() - self.mono_ms()
    }

    /// Moves the wall clock by `ms` (negative goes back): a clock step, or,
    /// forwards, a suspend.
    pub fn shift(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Moves the monotonic clock by `ms`.
    pub fn shift_mono(&self, ms: i64) {
        self.mono_offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Lets `ms` pass on both clocks.
    pub fn advance(&self, ms: i64) {
        self.shift(ms);
        self.shift_mono(ms);
    }
}

/// The system's wall clock in Unix milliseconds. Everything else reads
/// [`Clock`], which tests can shift.
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_changes_the_skew_and_not_the_monotonic_clock() {
        let c = Clock::default();
        let (skew, mono) = (c.skew_ms(), c.mono_ms());
        c.shift(-3_600_000);
        assert!((c.skew_ms() - (skew - 3_600_000)).abs() < 1_000);
        assert!(c.mono_ms() - mono < 1_000);
        let due = c.now_ms() + 5_000;
        assert!((c.mono_at(due) - (c.mono_ms() + 5_000)).abs() < 1_000);
    }
}
