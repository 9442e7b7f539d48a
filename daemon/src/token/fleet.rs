//! Refreshing in a fleet: members sharing a PostgreSQL store take the
//! credential's cross-member lock before anything is sent, and adopt what
//! another member already did (docs/ARCHITECTURE.md, "The fleet store";
//! docs/RULES.md, "Fleets").
//!
//! On a single host every function here is a no-op.

use super::outcome::database_down;
use super::plan::loaded_due;
use super::validity::{MIN_VALID_MS, valid_for};
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Journal};
use crate::store::{Claim, Store, StoreError, StoredCredential, blocking};
use std::sync::Arc;
use tokend_proto::CredentialState;

/// After a scheduled refresh found another member refreshing, look again
/// this much later (its notification usually comes first and reschedules).
const BUSY_RETRY_MS: i64 = 2_000;

/// Who asked for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule: when another member holds the lock, it is doing this
    /// very refresh; don't wait, look again later.
    Schedule,
    /// A client waiting for a token: wait (bounded) for the other member.
    Demand,
}

/// The cross-member lock, released when dropped (unless a write already
/// committed and released it).
#[derive(Debug)]
pub struct FleetGuard {
    store: Store,
    name: Box<str>,
    incarnation: i64,
}

impl Drop for FleetGuard {
    fn drop(&mut self) {
        self.store.unlock_refresh(&self.name, self.incarnation);
    }
}

/// How a refresh goes on after [`enter`].
pub(super) enum Entry {
    /// Go on and talk to the provider, holding this lock (`None`: one host).
    Proceed(Option<FleetGuard>),
    /// Done without the provider: another member's result was adopted, or
    /// the lock could not be had.
    Done(Result<(), Error>),
}

/// Takes the fleet's lock for a refresh of `cred` and re-reads it. If
/// another member rotated meanwhile and its token is good, that token is
/// adopted and nothing is sent.
pub(super) async fn enter(shared: &Arc<Shared>, cred: &Arc<Credential>, trigger: Trigger) -> Entry {
    if !shared.store.is_shared() {
        return Entry::Proceed(None);
    }
    let (guard, row) = match lock(shared, cred, trigger == Trigger::Demand).await {
        Ok(Locked::Held(guard, row)) => (guard, row),
        Ok(Locked::Alone) => return Entry::Proceed(None),
        Ok(Locked::Busy) => return Entry::Done(busy(shared, cred, trigger)),
        Err(StoreError::Gone(_)) => {
            return Entry::Done(Err(Error::UnknownCredential(cred.name.to_string())));
        }
        Err(e) => {
            let message =
                format!("no refresh happens without the fleet's lock, held in the database: {e}");
            return Entry::Done(database_down(shared, cred, message).await);
        }
    };
    if cred.with_live(|l| l.journal.unsaved().is_some()) {
        // Our tokens are newer than the row: the caller saves them.
        return Entry::Proceed(Some(guard));
    }
    let before = cred.with_live(|l| l.generation);
    adopt(shared, cred, &row, true);
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let (generation, state, good) =
        cred.with_live(|l| (l.generation, l.state, valid_for(l, now, mono, MIN_VALID_MS)));
    if state != CredentialState::Ready {
        return Entry::Done(Err(super::validity::not_usable(cred)));
    }
    if generation != before && good {
        tracing::debug!(credential = %cred.name, generation, "another member of the fleet refreshed; its token is taken");
        return Entry::Done(Ok(()));
    }
    // The schedule decided from what was in memory when the credential
    // came due; another member's refresh may have been applied here since
    // (so `before` already is its generation). The row read under the lock
    // decides: a good token not yet due is left alone.
    let due = cred.with_live(|l| loaded_due(&cred.spec, l, now));
    if trigger == Trigger::Schedule && good && due.is_some_and(|at| at > now) {
        tracing::debug!(credential = %cred.name, generation, "not due any more: another member of the fleet refreshed it before this one took the lock");
        return Entry::Done(Ok(()));
    }
    Entry::Proceed(Some(guard))
}

/// Takes the lock before a login's tokens are committed, so that they do
/// not race another member's refresh of the grant they replace. `Err` says
/// why it could not be had.
pub(super) async fn enter_for_login(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
) -> Result<Option<FleetGuard>, String> {
    if !shared.store.is_shared() {
        return Ok(None);
    }
    match lock(shared, cred, true).await {
        Ok(Locked::Held(guard, row)) => {
            adopt(shared, cred, &row, true);
            Ok(Some(guard))
        }
        Ok(Locked::Alone) => Ok(None),
        Ok(Locked::Busy) => Err("another member of the fleet held the credential too long".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What taking the lock gave.
enum Locked {
    Held(FleetGuard, Box<StoredCredential>),
    Busy,
    /// The store is not shared after all: nothing to take.
    Alone,
}

async fn lock(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    wait: bool,
) -> Result<Locked, StoreError> {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    let claim = blocking(move || store.lock_refresh(&name, incarnation, wait)).await?;
    Ok(match claim {
        Claim::Held(row) => {
            let guard = FleetGuard {
                store: shared.store.clone(),
                name: cred.name.clone(),
                incarnation: cred.incarnation,
            };
            Locked::Held(guard, row)
        }
        Claim::Busy => Locked::Busy,
        Claim::Local => Locked::Alone,
    })
}

/// Another member holds the lock.
fn busy(shared: &Arc<Shared>, cred: &Arc<Credential>, trigger: Trigger) -> Result<(), Error> {
    if trigger == Trigger::Schedule {
        shared
            .scheduler
            .schedule(&cred.name, shared.clock.now_ms() + BUSY_RETRY_MS);
    }
    Err(Error::Busy(format!(
        "another member of the fleet is refreshing credential {:?}; its token is served here as soon as it is saved",
        cred.name
    )))
}

/// Makes the in-memory credential what its row says (tokens, state, allow
/// list, schedule). `locked`: read under the fleet's lock, where a journal
/// mark means the last holder never saved its outcome (in doubt). Tokens
/// not yet saved here (`Journal::Unsaved`) are newer than any row: kept.
pub fn adopt(shared: &Shared, cred: &Credential, row: &StoredCredential, locked: bool) {
    let now = shared.clock.now_ms();
    let expires_mono = row
        .expires_at
        .map(|e| shared.clock.mono_at(e.saturating_mul(1000)));
    let due = cred.with_live(|l| {
        if l.journal.unsaved().is_some() {
            return None;
        }
        let moved = l.generation != row.generation || l.state != row.state;
        l.access_token = row.access_token.clone();
        l.refresh_token = row.refresh_token.clone();
        l.generation = row.generation;
        l.expires_at = row.expires_at.into();
        l.expires_mono = expires_mono.into();
        l.state = row.state;
        l.reason = row.reason.as_deref().map(Into::into);
        l.last_error = row.last_error.as_deref().map(Into::into);
        l.allowed = row.allowed.clone();
        l.last_refresh_at = row.last_refresh_at.into();
        l.next_refresh_at = row.next_refresh_at.into();
        l.last_check = row.last_check.clone().map(Box::new);
        if locked {
            l.journal = if row.refresh_interrupted {
                Journal::InDoubt
            } else {
                Journal::Settled
            };
        } else if moved {
            l.journal = Journal::Settled;
        }
        if moved {
            l.failures = 0;
            l.retry_not_before_ms = 0;
            // Another member's attempt completed: a refresh that was
            // started here before this was applied (spawned but not yet
            // holding the refresh lock) takes its outcome instead of
            // sending the refresh token this row now holds.
            l.attempts += 1;
        }
        Some(loaded_due(&cred.spec, l, now))
    });
    match due {
        Some(Some(at)) => shared.scheduler.schedule(&cred.name, at.max(now)),
        Some(None) => shared.scheduler.unschedule(&cred.name),
        None => {}
    }
}
