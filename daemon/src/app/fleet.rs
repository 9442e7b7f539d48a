//! The fleet task of a daemon on a shared store: applies the other
//! members' changes as their notifications arrive, and compares everything
//! with the database every `fleet.resync_secs` and after a reconnection
//! (a notification sent while this member was not listening is lost).

use crate::state::Shared;
use crate::store::StoreEvent;
use crate::token::remote::{self, Versions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// Notifications applied together, at most: one read for many changes.
const BATCH: usize = 1_000;

/// Runs until shutdown. `known` is what was loaded at start-up.
pub async fn run(
    shared: Arc<Shared>,
    mut events: UnboundedReceiver<StoreEvent>,
    mut known: Versions,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = Duration::from_secs(shared.config().fleet.resync_secs);
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                let (names, full) = drain(event, &mut events);
                if full {
                    full_resync(&shared, &mut known).await;
                } else if let Err(e) = remote::apply(&shared, names.clone(), &mut known).await {
                    tracing::warn!(error = %e, "could not apply another member's change; the next resync will");
                }
            }
            _ = resync.tick() => full_resync(&shared, &mut known).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// This event and those already waiting behind it: the names changed, and
/// whether a full resync was asked for.
fn drain(first: StoreEvent, events: &mut UnboundedReceiver<StoreEvent>) -> (Vec<String>, bool) {
    let mut names = Vec::new();
    let mut full = false;
    let mut next = Some(first);
    while let Some(event) = next {
        match event {
            StoreEvent::Changed(name) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            StoreEvent::Resync => full = true,
        }
        if names.len() >= BATCH {
            break;
        }
        next = events.try_recv().ok();
    }
    (names, full)
}

async fn full_resync(shared: &Arc<Shared>, known: &mut Versions) {
    match remote::resync(shared, known).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(changed = n, "resynced with the database"),
        Err(e) => tracing::debug!(error = %e, "resync skipped: the database is unavailable"),
    }
}
