//! The graceful stop: no refresh starts any more, those in flight finish
//! and commit, token sets
//! the store refused get a last try, last-use times and the audit trail's
//! queue are written, the WAL is
//! folded in, and the socket file goes.

use super::audit::save_audit;
use super::uses::save_uses;
use crate::state::Shared;
use crate::token;
use std::sync::Arc;
use std::time::Duration;

/// Graceful stop: refreshes in flight finish and commit, last-use times are
/// written, the WAL is folded in, and the socket file goes.
pub(super) async fn stop(shared: &Arc<Shared>) {
    shared.begin_stop();
    // The whole of a refresh in flight: the fleet's lock wait, an
    // introspection, the request, the commit.
    let config = shared.config();
    let deadline =
        Duration::from_secs(config.fleet.lock_wait_secs + 2 * config.refresh.http_timeout_secs + 5);
    let creds = shared.registry.all();
    let mut held = Vec::new();
    for cred in &creds {
        match tokio::time::timeout(deadline, cred.refresh_lock.lock()).await {
            Ok(guard) => held.push(guard),
            Err(_) => {
                tracing::warn!(credential = %cred.name, "a refresh did not finish before shutdown")
            }
        }
    }
    token::save_before_stop(shared).await;
    save_uses(shared).await;
    save_audit(shared).await;
    if let Err(e) = shared.store.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
    }
    if !shared.paths.socket.as_os_str().is_empty() && service_owns_socket() {
        let _ = std::fs::remove_file(&shared.paths.socket);
    }
    tracing::info!("stopped");
    drop(held);
}

/// The audit trail's last write, once every listener (the HTTP API's, the
/// proxy's) has drained: their last requests are recorded. Bounded: a
/// store that does not answer cannot hold up the stop.
pub(super) async fn last_audit_write(shared: &Arc<Shared>) {
    let write = async {
        save_audit(shared).await;
        if let Err(e) = shared.store.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .is_err()
    {
        tracing::warn!("the audit trail's last write did not finish in time");
    }
}

/// A socket passed by systemd belongs to systemd: it is not removed.
fn service_owns_socket() -> bool {
    std::env::var_os("LISTEN_FDS").is_none()
}
