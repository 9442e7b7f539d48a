//! Whether an accepted connection gets a place: under the global cap
//! (`limits.max_connections`) and its user's share of it (`quota.rs`), or
//! the client is told why not, politely and without letting a flood of
//! refusals exhaust descriptors or fill the log.

use crate::config::access::Peer;
use crate::server::quota::{Admitted, Quota, Refusal, Shares};
use crate::state::Shared;
use crate::state::metrics::Refused as Reason;
use crate::state::throttle::{Rate, Throttle, Verdict};
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

/// At most one warning per kind of refusal every ten seconds: a user
/// opening thousands of connections must not write thousands of log lines.
const WARN_RATE: Rate = Rate {
    lines: 1,
    every: Duration::from_secs(10),
};

/// The kinds of refusal at accept time, each with its own warnings: a
/// flood of one kind does not hide the first line of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Warn {
    Full,
    PerUser,
    Others,
}

/// Decides, at accept time, whether a connection gets a place.
pub struct Gate {
    /// The global cap, `limits.max_connections` (fixed at start).
    places: Arc<Semaphore>,
    max: usize,
    /// The per-user and reserved shares of it.
    quota: Arc<Quota>,
    /// Refusals in flight, per uid (see [`REFUSING`]).
    refusing: Arc<Quota>,
    /// The warnings' share of the log, per kind of refusal.
    warnings: Throttle<Warn>,
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
            warnings: Throttle::default(),
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
        self.admit_peer(peer, shared)
    }

    /// [`Gate::admit`] for a peer identified otherwise (the proxy's TCP
    /// listener reads it from the kernel's socket table).
    pub fn admit_peer(
        &mut self,
        peer: Peer,
        shared: &Shared,
    ) -> Result<(Peer, Place), Option<Refused>> {
        let admitted = self.place_for(peer, shared);
        if admitted.is_err() {
            shared.metrics.refused(Reason::ConnectionLimit);
        }
        admitted
    }

    fn place_for(&mut self, peer: Peer, shared: &Shared) -> Result<(Peer, Place), Option<Refused>> {
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
            if let Some(more) = self.warn(Warn::Full) {
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

    /// `Some(refusals of this kind not logged since its last line)` when a
    /// line may be written now. The count comes with the next line of the
    /// kind (a connection flood goes on long enough to get one).
    fn warn(&mut self, kind: Warn) -> Option<u64> {
        match self.warnings.allow(kind, WARN_RATE, Instant::now()) {
            Verdict::Log { suppressed } => Some(suppressed),
            Verdict::Quiet { .. } => None,
        }
    }

    fn warn_refused(&mut self, uid: u32, refusal: Refusal) {
        match refusal {
            Refusal::PerUser(limit) => {
                if let Some(more) = self.warn(Warn::PerUser) {
                    tracing::warn!(
                        uid,
                        limit,
                        more,
                        "per-user connection limit reached; refusing a client of this user"
                    );
                }
            }
            Refusal::Others(limit) => {
                if let Some(more) = self.warn(Warn::Others) {
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
    fn a_flood_of_refusals_logs_one_line_per_kind() {
        let mut gate = Gate::new(4);
        assert_eq!(gate.warn(Warn::PerUser), Some(0));
        for _ in 0..1500 {
            assert_eq!(gate.warn(Warn::PerUser), None);
        }
        assert_eq!(
            gate.warn(Warn::Full),
            Some(0),
            "another kind has its own line"
        );
    }
}
