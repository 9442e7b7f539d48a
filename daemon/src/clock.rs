//! The wall clock the lifecycle reads. Production uses the system clock;
//! tests shift it to play a suspend/resume or a clock step (DESIGN §4.8)
//! without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

/// System time plus an offset that only tests change.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Unix milliseconds: the scheduler's unit, so short-lived tokens
    /// (seconds) are refreshed on time.
    pub fn now_ms(&self) -> i64 {
        crate::credential::system_now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Unix seconds: the unit of stored and shown times.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves the clock by `ms` (negative goes back).
    pub fn shift(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
