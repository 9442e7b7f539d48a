//! Last-use times: noted in memory on every token handed out, written to
//! the store in one batch a minute (a token request must not wait on fsync).

use crate::state::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Writes last-use times every minute, if any changed.
pub(super) async fn flush_uses(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => save_uses(&shared).await,
            _ = shutdown.changed() => return,
        }
    }
}

pub(super) async fn save_uses(shared: &Arc<Shared>) {
    if !shared.uses_dirty.swap(false, Ordering::Relaxed) {
        return;
    }
    // Only the credentials used since the last flush: rewriting every
    // credential ever used would be an O(N) fsync'd transaction a minute.
    let uses: Vec<(String, i64, i64)> = shared
        .registry
        .unordered()
        .iter()
        .filter_map(|c| {
            c.with_live(|l| {
                let unsaved = std::mem::take(&mut l.use_unsaved);
                unsaved.then_some(l.last_use_at.get()).flatten()
            })
            .map(|t| (c.name.to_string(), c.incarnation, t))
        })
        .collect();
    if uses.is_empty() {
        return;
    }
    let store = shared.store.clone();
    let result = tokio::task::spawn_blocking(move || (store.save_last_use(&uses), uses)).await;
    match result {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), uses)) => {
            tracing::warn!(error = %e, "could not save last-use times; will retry");
            for cred in uses
                .iter()
                .filter_map(|(name, _, _)| shared.registry.get(name))
            {
                cred.with_live(|l| l.use_unsaved = true);
            }
            shared.note_use();
        }
        Err(e) => tracing::warn!(error = %e, "the last-use flush failed"),
    }
}
