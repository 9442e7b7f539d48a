//! The refresher task: sleeps until the earliest credential on the
//! schedule (`state/scheduler.rs`) is due, or the schedule changes, and
//! starts a refresh for each due credential.
//!
//! Due times are wall-clock times, and the task never sleeps longer than
//! [`MAX_SLEEP_MS`], so a suspend/resume or a forward clock step cannot make
//! it miss a refresh; a backwards step is caught by comparing the two
//! clocks (docs/RULES.md, "Two clocks").

use crate::state::Shared;
use std::sync::Arc;
use tokio::sync::watch;

/// The longest sleep: the wall clock is re-read at least this often.
pub const MAX_SLEEP_MS: i64 = 30_000;

/// Wall-clock slews smaller than this are not steps.
const STEP_TOLERANCE_MS: i64 = 1_000;

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
                    let _ = super::refresh(shared, cred, seen, super::Trigger::Schedule).await;
                });
            }
        }
        let sleep_ms = shared
            .scheduler
            .next_due()
            .map_or(MAX_SLEEP_MS, |due| (due - now).clamp(0, MAX_SLEEP_MS));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms as u64)) => {}
            _ = shared.scheduler.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}
