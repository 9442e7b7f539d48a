//! The listening socket and the accept loop, which gives each connection
//! a place under the global cap and its user's share (`quota.rs`), or
//! tells the client why not.

use crate::access::Peer;
use crate::quota::{Admitted, Quota, Refusal, Shares};
use crate::state::Shared;
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokend_proto::{HelloReply, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another tokend is already running at {0} (stop it first, or pick another --socket)")]
    AlreadyRunning(String),
    #[error("cannot create the socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Binds the socket at `path` with `mode`. A socket file nobody answers on is
/// a leftover from a crash and is replaced; a live one is left alone.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<Listener, BindError> {
    let io = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if mode & 0o070 == 0 {
            crate::paths::ensure_private_dir(dir, 0o700).map_err(io)?;
        } else {
            crate::paths::ensure_trusted_dir(dir).map_err(io)?;
        }
    }
    if path.exists() || path.symlink_metadata().is_ok() {
        if is_live(path) {
            return Err(BindError::AlreadyRunning(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let name = path.to_fs_name::<GenericFilePath>().map_err(io)?;
    let options = ListenerOptions::new().name(name).reclaim_name(true);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(mode as _)
    };
    let listener = options.create_tokio().map_err(io)?;
    set_socket_access(path, mode, group).map_err(io)?;
    Ok(listener)
}

#[cfg(unix)]
fn is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[cfg(not(unix))]
fn is_live(_path: &Path) -> bool {
    false
}

/// Sets the mode (and, in system mode, the group) even under a loose umask.
#[cfg(unix)]
fn set_socket_access(path: &Path, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    // Only chown when needed: under systemd the socket usually has the right
    // group already, and the unit may forbid chown altogether.
    let current = std::fs::metadata(path)?.gid();
    if let Some(gid) = group.filter(|&g| g != current) {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(std::io::Error::from)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_socket_access(_path: &Path, _mode: u32, _group: Option<u32>) -> std::io::Result<()> {
    Ok(())
}

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

/// Accepts connections until shutdown, then waits (up to `grace`) for the
/// connections to finish the request they are on.
pub async fn run(
    listener: Listener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut gate = Gate::new(shared.config().limits.max_connections);
    // Each connection task holds a sender; all dropped means all finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => match gate.admit(&stream, &shared) {
                    Ok((peer, place)) => {
                        let (shared, shutdown, done) = (shared.clone(), shutdown.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            crate::connection::serve(stream, peer, shared, shutdown).await;
                            drop((place, done));
                        });
                    }
                    Err(Some(refused)) => gate.refuse(stream, refused),
                    Err(None) => drop(stream),
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(done_tx);
    let _ = tokio::time::timeout(grace, done_rx.recv()).await;
}

/// Decides, at accept time, whether a connection gets a place.
struct Gate {
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
struct Place {
    _share: Admitted,
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    fn new(max: usize) -> Gate {
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
    fn admit(
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
    fn refuse(&self, stream: Stream, refused: Refused) {
        if let Ok(slot) = self.refusing.admit(refused.uid, false, REFUSING) {
            tokio::spawn(async move {
                refuse_busy(stream, refused.message).await;
                drop(slot);
            });
        }
    }
}

/// A connection that gets no place: whose, and what it is told.
struct Refused {
    uid: u32,
    message: String,
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
