//! Taking a credential for a refresh: the store's refresh lock (across
//! hosts in a fleet; none on one host), the row re-read under it and
//! adopted, and the judgement of a journal mark by its lease
//! (docs/RULES.md, "Fencing"; docs/ARCHITECTURE.md, "The fleet store").
//!
//! The same code runs on one host and in a fleet: the row decides.

use super::adopt::{Read, adopt};
use super::outcome::database_down;
use super::plan::loaded_due;
use super::validity::{MIN_VALID_MS, not_usable, valid_for};
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Watch};
use crate::store::{Claim, Mark, Store, StoreError, StoredCredential, blocking};
use std::sync::Arc;
use tokend_proto::CredentialState;

/// After a scheduled refresh found another member refreshing, look again
/// this much later (its notification usually comes first and reschedules).
const BUSY_RETRY_MS: i64 = 2_000;

/// A token another member refreshed is taken instead of refreshing again
/// only if it stays valid this much longer than the caller needs.
const ADOPT_SLACK_MS: i64 = 1_000;

/// Who asked for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule: when another member holds the lock, it is doing this
    /// very refresh; don't wait, look again later.
    Schedule,
    /// A client waiting for a token valid at least `need_ms` more: wait
    /// (bounded) for the other member.
    Demand { need_ms: i64 },
    /// `tokenctl refresh`: like `Demand`, and a `failing` credential is
    /// tried again (its cause may be fixed).
    Force,
}

impl Trigger {
    /// How long a token that another attempt brought (here or on another
    /// member) must stay valid to be taken instead of refreshing: what
    /// the caller needs, with room to spare, because the caller looks at
    /// the token again a moment later and one that only just passed here
    /// may not pass there.
    pub(super) fn adopt_ms(self) -> i64 {
        match self {
            Trigger::Demand { need_ms } => need_ms.max(MIN_VALID_MS),
            Trigger::Schedule | Trigger::Force => MIN_VALID_MS,
        }
        .saturating_add(ADOPT_SLACK_MS)
    }
}

/// The store's refresh lock, released when dropped (unless a write
/// already committed and released it).
#[derive(Debug)]
pub struct Hold {
    store: Store,
    name: Box<str>,
    incarnation: i64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.store.unlock_refresh(&self.name, self.incarnation);
    }
}

/// How a refresh goes on after [`enter`].
pub(super) enum Entry {
    /// Go on and talk to the provider, holding the lock. The row was
    /// adopted: a journal mark in it (its lease over, not this process's
    /// unsent one) left the refresh token in doubt, to be settled before
    /// anything is sent.
    Proceed(Hold),
    /// Done without the provider: a result taken from the row, the lock
    /// not had, or a mark whose lease still runs.
    Done(Result<(), Error>),
}

/// Takes the store's lock for a refresh of `cred` and re-reads its row.
/// If another member rotated meanwhile and its token is good, that token
/// is adopted and nothing is sent. A journal mark whose lease still runs
/// (its author may still be talking to the provider) sends nothing and
/// introspects nothing: the refresh comes back when the lease ends.
pub(super) async fn enter(shared: &Arc<Shared>, cred: &Arc<Credential>, trigger: Trigger) -> Entry {
    let (hold, row) = match lock(shared, cred, trigger != Trigger::Schedule).await {
        Ok(Some(held)) => held,
        Ok(None) => return Entry::Done(busy(shared, cred)),
        Err(StoreError::Gone(_)) => {
            return Entry::Done(Err(Error::UnknownCredential(cred.name.to_string())));
        }
        Err(e) => {
            let message = format!("no refresh happens without reading the credential's row: {e}");
            return Entry::Done(database_down(shared, cred, message).await);
        }
    };
    if row.untrusted {
        adopt(shared, cred, &row, Read::Locked);
        return Entry::Done(Err(not_usable(cred)));
    }
    if cred.with_live(|l| l.journal.unsaved().is_some()) {
        // Our tokens may be newer than the row: their fenced save decides.
        return Entry::Proceed(hold);
    }
    let before = cred.with_live(|l| l.generation);
    adopt(shared, cred, &row, Read::Locked);
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let mark = row
        .fence
        .mark
        .filter(|m| !unsent(cred, m, row.fence.generation));
    if let Some(mark) = mark {
        let left = cred.with_live(|l| {
            Watch::bound(
                &mut l.lease_watch,
                mark.at_ms,
                mark.lease_left_ms(now),
                mono,
            )
        });
        if left > 0 {
            return Entry::Done(leased(shared, cred, left));
        }
    }
    if let Some(retry) = row.fence.retry {
        let left = cred
            .with_live(|l| Watch::bound(&mut l.retry_watch, retry.at_ms, retry.left_ms(now), mono));
        if left > 0 {
            return Entry::Done(held_off(shared, cred, left));
        }
    }
    let need = trigger.adopt_ms();
    let (generation, state, good) =
        cred.with_live(|l| (l.generation, l.state, valid_for(l, now, mono, need)));
    let retried = trigger == Trigger::Force && state == CredentialState::Failing;
    if state != CredentialState::Ready && !retried {
        return Entry::Done(Err(not_usable(cred)));
    }
    if generation != before && good {
        tracing::debug!(credential = %cred.name, generation, "another member of the fleet refreshed; its token is taken");
        return Entry::Done(Ok(()));
    }
    // In a fleet, the schedule decided from what was in memory when the
    // credential came due; another member's refresh may have been applied
    // here since (so `before` already is its generation). The row read
    // under the lock decides: a good token not yet due is left alone. (Only
    // saves a provider call: on one host the schedule is never stale, and
    // after a backwards clock step it is ahead of the row's due time.)
    let due = cred.with_live(|l| loaded_due(cred.kind, l, now));
    let stale =
        shared.store.is_shared() && mark.is_none() && good && due.is_some_and(|at| at > now);
    if trigger == Trigger::Schedule && stale {
        tracing::debug!(credential = %cred.name, generation, "not due any more: another member of the fleet refreshed it before this one took the lock");
        return Entry::Done(Ok(()));
    }
    Entry::Proceed(hold)
}

/// Whether the row's mark is one this process made and sent nothing
/// under (`Live::unsent_mark`): then the refresh token is not in doubt,
/// and the next mark replaces it.
fn unsent(cred: &Credential, mark: &Mark, generation: i64) -> bool {
    let unsent = mark.mine && cred.with_live(|l| l.unsent_mark.get()) == Some(generation);
    if unsent {
        cred.with_live(|l| l.journal = crate::state::credential::Journal::Settled);
    }
    unsent
}

/// Takes the lock before a login's tokens are committed, so that they do
/// not race another member's refresh of the grant they replace, and
/// re-reads the row (its generation fences the commit). `Err` says why it
/// could not be had.
pub(super) async fn enter_for_login(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
) -> Result<Hold, String> {
    match lock(shared, cred, true).await {
        Ok(Some((hold, row))) => {
            adopt(shared, cred, &row, Read::Locked);
            if cred.untrusted() {
                return Err(crate::store::binding::TAMPERED.into());
            }
            Ok(hold)
        }
        Ok(None) => Err("another member of the fleet held the credential too long".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The lock and the row read under it; `None`: another member holds it.
async fn lock(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    wait: bool,
) -> Result<Option<(Hold, Box<StoredCredential>)>, StoreError> {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    let took = std::time::Instant::now();
    let claim = blocking(move || store.lock_refresh(&name, incarnation, wait)).await?;
    shared
        .metrics
        .lock_wait_seconds
        .observe(took.elapsed().as_secs_f64());
    Ok(match claim {
        Claim::Held(row) => {
            let hold = Hold {
                store: shared.store.clone(),
                name: cred.name.clone(),
                incarnation: cred.incarnation,
            };
            Some((hold, row))
        }
        Claim::Busy => {
            shared.metrics.lock_busy();
            None
        }
    })
}

/// Another member holds the lock: looked at again later, whoever asked
/// (the schedule's own entry may have been taken by an attempt whose
/// outcome a client's request took over).
fn busy(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    shared
        .scheduler
        .schedule(&cred.name, shared.clock.now_ms() + BUSY_RETRY_MS);
    Err(Error::Busy(format!(
        "another member of the fleet is refreshing credential {:?}; its token is served here as soon as it is saved",
        cred.name
    )))
}

/// The row holds a backoff deadline not yet reached (a provider's
/// `Retry-After`, or the backoff after a failure, set by any member):
/// nothing is sent before it.
fn held_off(shared: &Arc<Shared>, cred: &Arc<Credential>, left_ms: i64) -> Result<(), Error> {
    let at = shared.clock.now_ms() + left_ms;
    let mono = shared.clock.mono_ms();
    shared.scheduler.schedule(&cred.name, at);
    let secs = (left_ms + 999) / 1000;
    let why = cred.with_live(|l| {
        l.retry_not_before_ms = l.retry_not_before_ms.max(mono + left_ms);
        l.last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    });
    Err(Error::Provider(format!(
        "not refreshing credential {:?} yet: the next attempt is in {secs} s, at {}{why}",
        cred.name,
        crate::state::credential::format_time((at + 999) / 1000)
    )))
}

/// The row holds a journal mark whose lease still runs: its author (this
/// process before a restart, or another member) may still be talking to
/// the provider. Nothing is sent or introspected before the lease ends;
/// the refresh comes back then.
fn leased(shared: &Arc<Shared>, cred: &Arc<Credential>, left_ms: i64) -> Result<(), Error> {
    let at = shared.clock.now_ms().saturating_add(left_ms + 50);
    let mono = shared.clock.mono_ms();
    shared.scheduler.schedule(&cred.name, at);
    let secs = (left_ms + 999) / 1000;
    let why = format!(
        "a refresh of credential {:?} was sent and its outcome is not known yet; its refresh token is not sent or introspected again before that refresh's lease ends, in {secs} s",
        cred.name
    );
    cred.with_live(|l| {
        l.next_refresh_at = Some(at.div_euclid(1000)).into();
        l.retry_not_before_ms = l.retry_not_before_ms.max(mono.saturating_add(left_ms + 50));
        l.last_error = Some(why.as_str().into());
    });
    Err(Error::Busy(why))
}
