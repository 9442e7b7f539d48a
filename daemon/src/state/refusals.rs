//! The log lines of refused requests, per peer uid: at most
//! `log.refusal_lines` per `log.refusal_interval_secs` for each uid and
//! level, then silence, and when the interval ends one line with the count
//! of those not written. A user looping refused requests (with names of
//! 60 KiB, say) thus costs the log a few lines a minute, and another
//! user's refusals still get theirs.
//!
//! Only lines the log level lets through are counted: at `info`, failed
//! requests (logged at debug) spend nothing.

use crate::state::throttle::{Rate, Throttle, Verdict};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::{Notify, watch};

/// The kinds of refusal, each with its own lines (and log level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Permission denied: a warning.
    Denied,
    /// Any other error answer (unknown credential, malformed request, a
    /// credential not usable now): debug.
    Failed,
}

impl Kind {
    fn enabled(self) -> bool {
        match self {
            Kind::Denied => tracing::enabled!(tracing::Level::WARN),
            Kind::Failed => tracing::enabled!(tracing::Level::DEBUG),
        }
    }
}

/// The refusals of every uid; one per daemon, in [`crate::state::Shared`].
#[derive(Debug, Default)]
pub struct Refusals {
    throttle: Mutex<Throttle<(u32, Kind)>>,
    /// An interval began to hold lines back: [`Refusals::report`] must
    /// wake up at its end.
    owed: Notify,
}

impl Refusals {
    /// Whether the line about this refusal of `uid` may be written now
    /// (the caller writes it). Counts it either way.
    pub fn allow(&self, uid: u32, kind: Kind, rate: Rate) -> bool {
        if !kind.enabled() {
            return false;
        }
        let verdict = self
            .throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow((uid, kind), rate, Instant::now());
        match verdict {
            Verdict::Log { suppressed } => {
                if suppressed > 0 {
                    report(uid, kind, suppressed);
                }
                true
            }
            Verdict::Quiet { first } => {
                if first {
                    self.owed.notify_one();
                }
                false
            }
        }
    }

    /// Writes the count of lines held back as each interval ends, until
    /// the daemon stops. Sleeps while no interval owes a count.
    pub async fn report(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let due = self.lock().next_due();
            let until_due = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                () = self.owed.notified() => continue,
                () = until_due => {}
            }
            let ended = self.lock().ended(Instant::now());
            for ((uid, kind), suppressed) in ended {
                report(uid, kind, suppressed);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Throttle<(u32, Kind)>> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The line that counts what one interval held back.
fn report(uid: u32, kind: Kind, suppressed: u64) {
    match kind {
        Kind::Denied => tracing::warn!(
            uid,
            suppressed,
            "refused requests of this uid were not logged (log.refusal_lines per log.refusal_interval_secs)"
        ),
        Kind::Failed => tracing::debug!(
            uid,
            suppressed,
            "failed requests of this uid were not logged (log.refusal_lines per log.refusal_interval_secs)"
        ),
    }
}
