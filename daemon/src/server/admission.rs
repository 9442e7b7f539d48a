//! Whether an accepted connection gets a place: under the global cap
//! (`limits.max_connections`) and its user's share of it (`quota.rs`), or
//! the client is told why not, politely and without letting a flood of
//! refusals exhaust descriptors or fill the log.

use crate::config::access::Peer;
use crate::server::quota::{Admitted, Quota, Refusal, Shares};
use crate::state::Shared;
use interprocess::local_socket::tokio::Stream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokend_proto::{HelloReply, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals being delivered at once, per uid and in all. Each holds a
/// descriptor for up to a second (it reads the hello first, so that the
/// client reads the answer rather than a reset). Past these, a refused
/// client is closed at once: a connect loop cannot run the daemon out of
/// descriptors, and one user's flood of refusals does not cost another
/// user the explanation of theirs.
const REFUSING: Shares = Shares {
    per_user: 16,
    others: 256,
};

/// At most one warning per kind of refusal in this long: a user opening
/// thousands of connections must not write thousands of log lines.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Decides, at accept time, whether a connection gets a place.
pub struct Gate {
    /// The global cap, `limits.max_connections` (fixed at start).
    places: Arc<Semaphore>,
    max: usize,
    /// The per-user and reserved shares of it.
    quota: Arc<Quota>,
    /// Refusals in flight, per uid (see [`REFUSING`]).
    refusing: Arc<Quota>,
    /// One throttle per kind of refusal: a flood of one kind does not hide
    /// the first line of another.
    warn_full: Throttle,
    warn_per_user: Throttle,
    warn_others: Throttle,
}

/// A connection's hold on its places; dropping it gives them back.
pub struct Place {
    _share: Admitted,
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    /// A gate for `max` places (`limits.max_connections` at start).
    pub fn new(max: usize) -> Gate {
        Gate {
            places: Arc::new(Semaphore::new(max)),
            max,
            quota: Arc::new(Quota::default()),
            refusing: Arc::new(Quota::default()),
            warn_full: Throttle::default(),
            warn_per_user: Throttle::default(),
            warn_others: Throttle::default(),
        }
    }

    /// The peer and its place, or what to tell a client that gets none
    /// (`None`: nothing, just close). The uid comes from the kernel before
    /// any place is spent, and a refused connection holds no place.
    pub fn admit(
        &mut self,
        stream: &Stream,
        shared: &Shared,
    ) -> Result<(Peer, Place), Option<Refused>> {
        let peer = Peer::of(stream).map_err(|e| {
            tracing::debug!(error = %e, "cannot read peer credentials; closing");
            None
        })?;
        let shares = Shares::new(&shared.config().limits, self.max);
        let reserved = shared.policy().has_reserved_connections(peer.uid);
        let share = self
            .quota
            .admit(peer.uid, reserved, shares)
            .map_err(|refusal| {
                self.warn_refused(peer.uid, refusal);
                Some(Refused {
                    uid: peer.uid,
                    message: refusal.to_string(),
                })
            })?;
        let permit = self.places.clone().try_acquire_owned().map_err(|_| {
            let (uid, max) = (peer.uid, self.max);
            if let Some(more) = self.warn_full.allow() {
                tracing::warn!(
                    max,
                    uid,
                    more,
                    "connection limit reached; refusing a client"
                );
            }
            Some(Refused {
                uid,
                message: format!("tokend is at its limit of {max} connections; try again shortly"),
            })
        })?;
        let place = Place {
            _share: share,
            _permit: permit,
        };
        Ok((peer, place))
    }

    fn warn_refused(&mut self, uid: u32, refusal: Refusal) {
        match refusal {
            Refusal::PerUser(limit) => {
                if let Some(more) = self.warn_per_user.allow() {
                    tracing::warn!(
                        uid,
                        limit,
                        more,
                        "per-user connection limit reached; refusing a client of this user"
                    );
                }
            }
            Refusal::Others(limit) => {
                if let Some(more) = self.warn_others.allow() {
                    tracing::warn!(
                        uid,
                        limit,
                        more,
                        "connections left only for root and the daemon's user; refusing a client"
                    );
                }
            }
        }
    }

    /// Tells the client why, unless too many refusals (of its user, or in
    /// all) are in flight already; then it is just closed.
    pub fn refuse(&self, stream: Stream, refused: Refused) {
        if let Ok(slot) = self.refusing.admit(refused.uid, false, REFUSING) {
            tokio::spawn(async move {
                refuse_busy(stream, refused.message).await;
                drop(slot);
            });
        }
    }
}

/// A connection that gets no place: whose, and what it is told.
pub struct Refused {
    uid: u32,
    message: String,
}

impl Refused {
    /// The refused peer's uid (for a listener that delivers its own refusal).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// What the client is told.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// One gate for every listener (the bincode socket and the HTTP API), so
/// the global cap and each user's share count connections on both. A
/// `std::sync::Mutex`: an admission is a few integer operations and one
/// `getsockopt`, with no `.await`.
#[derive(Clone)]
pub struct SharedGate(Arc<Mutex<Gate>>);

impl SharedGate {
    /// A gate for `max` places (`limits.max_connections` at start).
    pub fn new(max: usize) -> SharedGate {
        SharedGate(Arc::new(Mutex::new(Gate::new(max))))
    }

    pub fn lock(&self) -> MutexGuard<'_, Gate> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lets one log line through per [`WARN_EVERY`] and counts the rest.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(refusals not logged since the last line)` when a line may be
    /// written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Tells a client that gets no place why, instead of leaving it hanging.
async fn refuse_busy(mut stream: Stream, message: String) {
    let t = Duration::from_millis(500);
    let _ = tokio::time::timeout(
        t,
        tokend_proto::read_frame_async::<tokend_proto::Hello>(&mut stream),
    )
    .await;
    let reply = HelloReply {
        version: PROTOCOL_VERSION,
        accepted: false,
        message,
    };
    let _ = tokio::time::timeout(t, tokend_proto::write_frame_async(&mut stream, &reply)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_logs_one_line() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..1500 {
            assert_eq!(throttle.allow(), None);
        }
        throttle.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(
            throttle.allow(),
            Some(1500),
            "the next line counts the rest"
        );
    }
}
