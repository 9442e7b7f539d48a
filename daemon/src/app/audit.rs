//! The audit trail's writer: what the request path queued
//! (`state/audit.rs`) goes to the store in one transaction a second, or
//! as soon as a batch is full, so a token request never waits on the
//! disk; and once a minute entries past `[audit] keep_days` or over
//! `max_rows` are deleted.

use crate::state::Shared;
use crate::store::audit::Retention;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often what is queued is written, at the latest.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Writes queued entries until shutdown (`app/stop.rs` writes the last,
/// once every listener has drained).
pub(super) async fn write_audit(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut pruned = None::<Instant>;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
            _ = shared.audit.batch_ready() => {}
            _ = shutdown.changed() => return,
        }
        save_audit(&shared).await;
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            prune(&shared).await;
            pruned = Some(Instant::now());
        }
    }
}

/// Writes what is queued; a failure keeps it queued for the next try.
pub(super) async fn save_audit(shared: &Arc<Shared>) {
    let dropped = shared.audit.take_dropped();
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "audit entries were dropped: the trail's queue was full (the store is slow or away), or the database refused them"
        );
    }
    let writer = shared.clone();
    let result =
        tokio::task::spawn_blocking(move || writer.audit.write_queued(&writer.store)).await;
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not write the audit trail; will retry"),
        Err(e) => tracing::warn!(error = %e, "the audit trail's writer failed"),
    }
}

/// Deletes the entries `[audit]` no longer keeps.
async fn prune(shared: &Arc<Shared>) {
    let config = shared.config();
    // How old is old goes by the store's clock (the database's in a fleet).
    let keep = Retention {
        keep_ms: config.audit.keep_ms(),
        max_rows: config.audit.max_rows,
    };
    let store = shared.store.clone();
    match crate::store::blocking(move || store.prune_audit(&keep)).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deleted = n, "old audit entries deleted"),
        Err(e) => tracing::warn!(error = %e, "could not prune the audit trail"),
    }
}
