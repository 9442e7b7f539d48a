//! Making the credential held in memory what its row in the store says:
//! after the row is re-read under the refresh lock, after a fenced write
//! found a newer row, and when another member of a fleet changed it.

use super::plan::loaded_due;
use crate::state::Shared;
use crate::state::credential::{Credential, Journal, Watch};
use crate::state::events::Kind;
use crate::store::binding::TAMPERED;
use crate::store::{StoredCredential, blocking};
use tokend_proto::CredentialState;

/// How the row was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Under the refresh lock (or after a fenced write lost): the row is
    /// the truth, its journal mark included.
    Locked,
    /// By the fleet task, outside the lock: a journal mark in it may be
    /// another member's refresh in flight, judged later under the lock.
    Unlocked,
}

/// Makes the in-memory credential what its row says (settings, tokens,
/// state, allow list, refresh generation, schedule). A journal mark makes the refresh
/// token in doubt. Tokens not yet saved here (`Journal::Unsaved`) are
/// newer than any row a write of theirs has not yet been compared with:
/// kept (their fenced save decides).
pub fn adopt(shared: &Shared, cred: &Credential, row: &StoredCredential, read: Read) {
    if row.untrusted {
        distrust(shared, cred, row.reason.as_deref().unwrap_or(TAMPERED));
        return;
    }
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let expires_mono = row
        .expires_at
        .map(|e| shared.clock.mono_at(e.saturating_mul(1000)));
    let due = cred.with_live(|l| {
        // Settings an admin edited (on any member) hold at once.
        if l.spec != row.spec {
            l.spec = row.spec.clone();
        }
        if *l.description != *row.description {
            l.description = row.description.as_str().into();
        }
        if l.journal.unsaved().is_some() {
            return None;
        }
        let moved = l.generation != row.generation || l.state != row.state;
        // Another member's refresh or state change: this member's event
        // streams hear of it too.
        if l.generation != row.generation && row.access_token.is_some() {
            shared.events.publish(&cred.name, Kind::Refreshed);
        }
        if l.state != row.state {
            shared.events.publish(&cred.name, Kind::State);
        }
        l.access_token = row.access_token.clone();
        l.refresh_token = row.refresh_token.clone();
        l.generation = row.generation;
        l.fence = row.fence.generation;
        l.expires_at = row.expires_at.into();
        l.expires_mono = expires_mono.into();
        l.state = row.state;
        l.reason = row.reason.as_deref().map(Into::into);
        l.last_error = row.last_error.as_deref().map(Into::into);
        l.allowed = row.allowed.clone();
        l.last_refresh_at = row.last_refresh_at.into();
        l.next_refresh_at = row.next_refresh_at.into();
        l.last_check = row.last_check.clone().map(Box::new);
        l.forecast = row.forecast.into();
        if read == Read::Locked || moved {
            l.journal = if row.fence.mark.is_some() {
                Journal::InDoubt
            } else {
                Journal::Settled
            };
        }
        if moved {
            l.failures = 0;
            l.retry_not_before_ms = 0;
            // Another attempt completed elsewhere: a refresh that was
            // started here before this was applied (spawned but not yet
            // holding the refresh lock) takes its outcome instead of
            // starting another.
            l.attempts = l.attempts.wrapping_add(1);
        }
        // A backoff set by any member holds here too.
        if let Some(retry) = row.fence.retry {
            let left = Watch::bound(&mut l.retry_watch, retry.at_ms, retry.left_ms(now), mono);
            l.retry_not_before_ms = l.retry_not_before_ms.max(mono.saturating_add(left));
        }
        Some(loaded_due(cred.kind, l, now))
    });
    match due {
        Some(Some(at)) => shared.scheduler.schedule(&cred.name, at.max(now)),
        Some(None) => shared.scheduler.unschedule(&cred.name),
        None => {}
    }
    super::forecast::watch_warning(shared, cred);
}

/// Stops using a credential whose row the key does not vouch for: its
/// tokens are dropped (unsaved ones too: the row they would be saved into
/// is not trusted), it is `failing` with `why`, off the schedule, its
/// login cancelled, and nothing is sent for it from now on (every path
/// that talks to a provider checks [`Credential::untrusted`]). Logged and
/// notified once, when it stops being trusted.
pub fn distrust(shared: &Shared, cred: &Credential, why: &str) {
    let first = cred.with_live(|l| {
        let first = !l.untrusted;
        l.untrusted = true;
        // The row's allow list may be the writer's; the one held stops too.
        l.allowed.clear();
        l.access_token = None;
        l.refresh_token = None;
        l.journal = Journal::Settled;
        l.state = CredentialState::Failing;
        l.reason = Some(why.into());
        l.last_error = Some(why.into());
        l.next_refresh_at = None.into();
        first
    });
    shared.scheduler.unschedule(&cred.name);
    shared.logins.cancel(&cred.name);
    if first {
        warn_untrusted(&cred.name, why);
        crate::token::notify::transition(shared, &cred.name, CredentialState::Failing, Some(why));
    }
}

/// The log line for a credential found untrusted.
pub fn warn_untrusted(name: &str, why: &str) {
    tracing::warn!(credential = %tokend_proto::logged(name), reason = %tokend_proto::logged(why), "credential not used; nothing is sent or served for it until an admin adds it again with --replace");
}

/// A fenced write found a newer row than the one it was fenced by: what
/// this host held is dropped (unsaved tokens included: the row moved past
/// them, so they are older or were saved already) and the row is taken.
/// Must be called with the credential's refresh lock held.
pub(super) async fn reread(shared: &Shared, cred: &Credential) {
    let store = shared.store.clone();
    let names = vec![cred.name.to_string()];
    match blocking(move || store.load_named(&names)).await {
        Ok(rows) => {
            let Some(row) = rows.into_iter().find(|r| r.incarnation == cred.incarnation) else {
                return;
            };
            tracing::info!(credential = %cred.name, generation = row.fence.generation, "the credential changed in the store meanwhile; the stored one is taken");
            cred.with_live(|l| l.journal = Journal::Settled);
            adopt(shared, cred, &row, Read::Locked);
        }
        Err(e) => {
            tracing::warn!(credential = %cred.name, error = %e, "could not re-read a credential that changed in the store; the next refresh will");
        }
    }
}
