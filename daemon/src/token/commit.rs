//! Committing a new token set before anyone sees it, and what happens when
//! the store refuses the write (docs/RULES.md, "Store errors after a rotation").

use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Journal, Kind as CredKind};
use crate::state::events::Kind;
use crate::store::{StoreError, TokenUpdate, blocking};
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::CredentialState;

/// Where a new token set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A refresh: recovering from a bad state is news for the notify command.
    Refresh,
    /// A login: a new grant (its refresh token, or the lack of one, replaces
    /// the old grant's); the user is watching, so no notification.
    Login,
}

/// Commits a new token set, then (and only then) lets anyone see it.
/// Must be called with the credential's refresh lock held.
///
/// If the store refuses the write, the provider has already rotated: the new
/// pair is served from memory (never the spent one), the save is retried,
/// and the store's refresh journal stays set, so that a restart before the
/// save succeeds treats the stored refresh token as in doubt.
pub async fn commit_and_publish(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    mut update: TokenUpdate,
    origin: Origin,
) -> Result<(), Error> {
    let _hold = if origin == Origin::Login {
        update.new_grant = true;
        match super::claim::enter_for_login(shared, cred).await {
            Ok(hold) => {
                // Another member's refresh may have moved the count on.
                update.generation = cred.with_live(|l| l.generation) + 1;
                Some(hold)
            }
            Err(why) => {
                let e = format!("the credential's row could not be read under its lock: {why}");
                keep_unsaved(shared, cred, update, origin, &e);
                return Ok(());
            }
        }
    } else {
        None
    };
    super::forecast::settle(shared, cred, &mut update);
    let held_after = update.refresh_token.is_some()
        || (!update.new_grant && cred.with_live(|l| l.refresh_token.is_some()));
    if cred.kind == CredKind::OAuth2 && !held_after {
        // Nothing can renew it: come back when it expires (docs/RULES.md).
        update.next_refresh_at = update.expires_at.map(|e| e.saturating_mul(1000));
    }
    match save_tokens(shared, cred, &update).await {
        Ok(()) => publish(shared, cred, update, origin, None),
        Err(StoreError::Gone(_)) => {
            tracing::info!(credential = %cred.name, "the credential was removed or replaced during the refresh; its new tokens are discarded");
            return Err(Error::UnknownCredential(cred.name.to_string()));
        }
        Err(StoreError::Moved(_)) => return moved(shared, cred, update, origin).await,
        Err(e) => keep_unsaved(shared, cred, update, origin, &e.to_string()),
    }
    Ok(())
}

/// A commit found the row moved past the generation it was fenced by.
/// Someone wrote after this member read it: a member that settled this
/// member's mark after its lease ran out (the database was away, the
/// answer came late), another member's refresh or login, or this member's
/// own commit whose answer was lost. The row is read again; the pair in
/// hand is still the newest when no pair was committed since the one it
/// replaces (`generation`) and, for a refresh, no other refresh is in
/// flight: the refresh token it replaces is spent (the provider answered),
/// and nobody else holds the new one, so it is written at the row's
/// generation. Otherwise the row is taken and the pair dropped, never
/// written over a newer one: a login that lost to a refresh of the grant
/// it replaced costs another login, never a second send.
async fn moved(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    update: TokenUpdate,
    origin: Origin,
) -> Result<(), Error> {
    for _ in 0..MOVED_TRIES {
        let store = shared.store.clone();
        let names = vec![cred.name.to_string()];
        let row = match blocking(move || store.load_named(&names)).await {
            Ok(rows) => rows.into_iter().find(|r| r.incarnation == cred.incarnation),
            Err(e) => {
                keep_unsaved(shared, cred, update, origin, &e.to_string());
                return Ok(());
            }
        };
        let Some(row) = row else {
            return Err(Error::UnknownCredential(cred.name.to_string()));
        };
        let now = shared.clock.now_ms();
        let in_flight = row.fence.mark.is_some_and(|m| m.lease_left_ms(now) > 0);
        if row.generation >= update.generation || (in_flight && !update.new_grant) {
            return overtaken(shared, cred, &row);
        }
        tracing::info!(credential = %cred.name, generation = row.fence.generation, "the credential's row moved on, but these tokens are still the newest: written over it");
        cred.with_live(|l| l.fence = row.fence.generation);
        match save_tokens(shared, cred, &update).await {
            Ok(()) => {
                publish(shared, cred, update, origin, None);
                return Ok(());
            }
            Err(StoreError::Gone(_)) => {
                return Err(Error::UnknownCredential(cred.name.to_string()));
            }
            // Moved again (another write came between the read and this
            // one): judged again on the row as it is now.
            Err(StoreError::Moved(_)) => {}
            Err(e) => {
                keep_unsaved(shared, cred, update, origin, &e.to_string());
                return Ok(());
            }
        }
    }
    super::adopt::reread(shared, cred).await;
    served_or_not(shared, cred)
}

/// How many times a pair that is still the newest is tried against a row
/// that keeps moving before it is given up.
const MOVED_TRIES: usize = 3;

/// The row moved on past the tokens in hand: it is taken, they are dropped.
fn overtaken(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    row: &crate::store::StoredCredential,
) -> Result<(), Error> {
    tracing::warn!(credential = %cred.name, "the credential's row moved on while its tokens were being committed; the stored one is taken and these are dropped");
    cred.with_live(|l| l.journal = Journal::Settled);
    super::adopt::adopt(shared, cred, row, super::adopt::Read::Locked);
    served_or_not(shared, cred)
}

/// `Ok` when the credential now serves a good token, else why not.
fn served_or_not(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    if cred.with_live(|l| {
        l.state == CredentialState::Ready && super::validity::valid_for(l, now, mono, 1_000)
    }) {
        return Ok(());
    }
    Err(super::validity::not_usable(cred))
}

/// The store refused a token set the provider already issued: serve it
/// from memory (never the spent one) and retry the save in 5 s.
fn keep_unsaved(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    update: TokenUpdate,
    origin: Origin,
    error: &str,
) {
    tracing::error!(credential = %cred.name, error = %error, "new tokens could not be saved; serving them from memory and retrying the save in 5 s");
    let reason = format!("new tokens could not be saved ({error}); retrying");
    publish(shared, cred, update, origin, Some(reason));
    shared
        .scheduler
        .schedule(&cred.name, shared.clock.now_ms() + 5_000);
}

/// The fenced write of a token set: at the generation last read or
/// written here, which moves on when it succeeds.
async fn save_tokens(
    shared: &Arc<Shared>,
    cred: &Credential,
    update: &TokenUpdate,
) -> Result<(), StoreError> {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.clone(), cred.incarnation);
    let fence = cred.with_live(|l| l.fence);
    // The due time in the store is in seconds; in memory it is ms.
    let mut stored = update.clone();
    stored.next_refresh_at = update.next_refresh_at.map(|ms| ms.div_euclid(1000));
    let fence = blocking(move || store.save_tokens(&name, incarnation, fence, &stored)).await?;
    cred.with_live(|l| l.fence = fence);
    Ok(())
}

/// Makes a new token set the one served. `unsaved` says why it is not in
/// the store yet, if it is not.
pub(super) fn publish(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    update: TokenUpdate,
    origin: Origin,
    unsaved: Option<String>,
) {
    let next_ms = update.next_refresh_at;
    let expires_mono = update
        .expires_at
        .map(|e| shared.clock.mono_at(e.saturating_mul(1000)));
    let generation = update.generation;
    let state = match update.unusable {
        Some(_) => CredentialState::Failing,
        None => CredentialState::Ready,
    };
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.access_token = update.access_token.clone();
        if update.new_grant || update.refresh_token.is_some() {
            l.refresh_token = update.refresh_token.clone();
        }
        l.generation = update.generation;
        l.expires_at = update.expires_at.into();
        l.expires_mono = expires_mono.into();
        l.last_refresh_at = Some(update.refreshed_at).into();
        l.next_refresh_at = next_ms.map(|ms| ms.div_euclid(1000)).into();
        l.state = state;
        l.reason = update.unusable.as_deref().map(Into::into);
        l.last_error = unsaved
            .as_deref()
            .or(update.unusable.as_deref())
            .map(Into::into);
        l.failures = 0;
        l.retry_not_before_ms = 0;
        l.forecast = update.forecast.into();
        l.journal = match unsaved {
            Some(_) => Journal::Unsaved(Box::new(update.clone())),
            None => Journal::Settled,
        };
        previous
    });
    if unsaved.is_none()
        && let Some(due) = next_ms
    {
        shared.scheduler.schedule(&cred.name, due);
    }
    super::forecast::after_commit(shared, cred, &update);
    if let Some(why) = &update.unusable {
        shared.scheduler.unschedule(&cred.name);
        tracing::warn!(credential = %cred.name, generation, "{why}");
    } else {
        tracing::info!(credential = %cred.name, generation, expires_at = ?update.expires_at, "new token");
        shared.events.publish(&cred.name, Kind::Refreshed);
    }
    if previous == state {
        return;
    }
    if origin == Origin::Refresh || state != CredentialState::Ready {
        crate::token::notify::transition(shared, &cred.name, state, update.unusable.as_deref());
    } else {
        // A login the user watches: no notify command, but the streams hear.
        shared.events.publish(&cred.name, Kind::State);
    }
}

/// Retries the save of a token set the store refused earlier. Must be
/// called with the refresh lock held.
pub(super) async fn save_uncommitted(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
) -> Result<(), Error> {
    // The forecast as it is now, not as it was at the publish: an
    // introspection or a warning since then must not be written back over.
    let Some(update) = cred.with_live(|l| {
        l.journal.unsaved().cloned().map(|mut u| {
            u.forecast = l.forecast.get();
            u
        })
    }) else {
        return Ok(());
    };
    match save_tokens(shared, cred, &update).await {
        Ok(()) => {
            tracing::info!(credential = %cred.name, "the new tokens are saved now");
            cred.with_live(|l| {
                l.journal = Journal::Settled;
                l.last_error = None;
            });
            if let Some(due) = update.next_refresh_at {
                shared.scheduler.schedule(&cred.name, due);
            }
            Ok(())
        }
        Err(StoreError::Gone(_)) => Err(Error::UnknownCredential(cred.name.to_string())),
        Err(StoreError::Moved(_)) => {
            let origin = if update.new_grant {
                Origin::Login
            } else {
                Origin::Refresh
            };
            moved(shared, cred, update, origin).await
        }
        Err(e) => {
            shared
                .scheduler
                .schedule(&cred.name, shared.clock.now_ms() + 5_000);
            Err(Error::Internal(format!(
                "credential {:?}: new tokens still not saved: {e}",
                cred.name
            )))
        }
    }
}

/// At a graceful stop: a few more tries to save token sets the store
/// refused, so that a stop does not turn a passing store error into a lost
/// grant. Must be called with every refresh lock held.
pub async fn save_before_stop(shared: &Arc<Shared>) {
    for cred in shared.registry.unordered() {
        if cred.with_live(|l| l.journal.unsaved().is_none()) {
            continue;
        }
        for attempt in 1..=3 {
            if save_uncommitted(shared, &cred).await.is_ok() {
                break;
            }
            if attempt == 3 {
                tracing::error!(credential = %cred.name, "new tokens could not be saved before the stop; the next start treats the stored refresh token as in doubt");
            } else {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
