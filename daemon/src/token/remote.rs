//! Applying what other members of a fleet wrote: a credential added,
//! replaced, removed or changed elsewhere is re-read and made the one
//! served here (docs/ARCHITECTURE.md, "The fleet store").
//!
//! A row is read only once this member's refresh lock of the credential is
//! held, so a row read before a local commit can never overwrite it; a
//! credential whose lock is busy is done on its own once the lock is free.

use super::adopt::{Read, adopt, warn_untrusted};
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::binding::TAMPERED;
use crate::store::{StoreError, StoredCredential, blocking};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the fleet's resync knows of each stored credential: its
/// incarnation and change number as last applied here.
pub type Versions = HashMap<String, (i64, i64)>;

/// Re-reads the named credentials and applies them here; updates `known`.
pub async fn apply(
    shared: &Arc<Shared>,
    names: Vec<String>,
    known: &mut Versions,
) -> Result<(), StoreError> {
    let creds: Vec<Arc<Credential>> = names
        .iter()
        .filter_map(|n| shared.registry.get(n))
        .collect();
    let mut guards = Vec::with_capacity(creds.len());
    let mut busy = HashSet::new();
    for cred in &creds {
        match cred.refresh_lock.try_lock() {
            Ok(guard) => guards.push(guard),
            Err(_) => {
                busy.insert(cred.name.to_string());
            }
        }
    }
    let wanted: Vec<String> = names.into_iter().filter(|n| !busy.contains(n)).collect();
    let store = shared.store.clone();
    let asked = wanted.clone();
    let rows = blocking(move || store.load_named(&asked)).await?;
    let mut found = HashSet::with_capacity(rows.len());
    for row in rows {
        found.insert(row.name.clone());
        known.insert(row.name.clone(), (row.incarnation, row.change));
        apply_row(shared, row);
    }
    for name in wanted.iter().filter(|n| !found.contains(*n)) {
        known.remove(name);
        remove_here(shared, name);
    }
    drop(guards);
    for name in busy {
        let shared = shared.clone();
        tokio::spawn(async move { apply_when_free(&shared, name).await });
    }
    Ok(())
}

/// A credential busy with a local refresh or login: applied once that is
/// done (which has itself re-read the row under the fleet's lock, so this
/// mostly finds nothing new).
async fn apply_when_free(shared: &Arc<Shared>, name: String) {
    let Some(cred) = shared.registry.get(&name) else {
        return;
    };
    let _guard = cred.refresh_lock.lock().await;
    let store = shared.store.clone();
    let asked = vec![name.clone()];
    match blocking(move || store.load_named(&asked)).await {
        Ok(rows) => match rows.into_iter().next() {
            Some(row) => apply_row(shared, row),
            None => remove_here(shared, &name),
        },
        Err(e) => {
            tracing::warn!(credential = %tokend_proto::logged(&name), error = %e, "could not re-read a credential another member changed; the next resync will")
        }
    }
}

/// Applies one row; the caller holds the credential's refresh lock if it
/// exists here.
fn apply_row(shared: &Arc<Shared>, row: StoredCredential) {
    match shared.registry.get(&row.name) {
        // An untrusted credential is never trusted again in place (its
        // settings may be the untrusted row's): a trusted row replaces it.
        Some(cred)
            if cred.incarnation == row.incarnation && (row.untrusted || !cred.untrusted()) =>
        {
            adopt(shared, &cred, &row, Read::Unlocked)
        }
        existing => {
            // A journal mark in the row may be a live member's refresh: its
            // lease, read again under the lock, decides (claim.rs).
            let cred = Arc::new(Credential::from_stored(row.clone()));
            if let Some(old) = existing {
                shared.logins.cancel(&old.name);
                shared.metrics.forget(&old);
                shared.announce_removed(&old);
                tracing::info!(credential = %tokend_proto::logged(&cred.name), "credential replaced by another member of the fleet");
            } else {
                tracing::info!(credential = %tokend_proto::logged(&cred.name), "credential added by another member of the fleet");
            }
            if row.untrusted {
                warn_untrusted(&cred.name, row.reason.as_deref().unwrap_or(TAMPERED));
            }
            shared.registry.insert(cred.clone());
            shared
                .events
                .publish(&cred.name, crate::state::events::Kind::Added);
            adopt(shared, &cred, &row, Read::Unlocked);
        }
    }
}

/// Another member removed the credential.
fn remove_here(shared: &Shared, name: &str) {
    if let Some(gone) = shared.registry.remove(name) {
        shared.announce_removed(&gone);
        shared.scheduler.unschedule(name);
        shared.warnings.unschedule(name);
        shared.logins.cancel(name);
        shared.metrics.forget(&gone);
        tracing::info!(credential = %tokend_proto::logged(name), "credential removed by another member of the fleet");
    }
}

/// Compares everything with the store and applies what differs: rows
/// whose incarnation or change number moved, rows new here, and
/// credentials no longer stored.
pub async fn resync(shared: &Arc<Shared>, known: &mut Versions) -> Result<usize, StoreError> {
    let store = shared.store.clone();
    let versions = blocking(move || store.versions()).await?;
    let stored: HashSet<&str> = versions.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut changed: Vec<String> = versions
        .iter()
        .filter(|(n, inc, change)| known.get(n) != Some(&(*inc, *change)))
        .map(|(n, _, _)| n.clone())
        .collect();
    changed.extend(
        shared
            .registry
            .unordered()
            .iter()
            .filter(|c| !stored.contains(&*c.name))
            .map(|c| c.name.to_string()),
    );
    let count = changed.len();
    for batch in changed.chunks(1_000) {
        apply(shared, batch.to_vec(), known).await?;
    }
    Ok(count)
}
