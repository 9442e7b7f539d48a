//! The pace of forced refreshes: a local user who may use a credential but
//! is not an admin can ask for a refresh (`tokenctl refresh`, a `reject`,
//! whether it names a token or not: a loop of `token` then `reject` of the
//! token just served would otherwise be a refresh per turn) or a `check`
//! as often as it likes, and each would otherwise be a call to the
//! provider or the API. One call per credential per
//! `refresh.min_forced_interval_secs` is what such a user gets; within it
//! the answer is the credential's current state, so a loop of requests
//! costs the provider nothing (docs/SECURITY.md, "Forced refreshes").

use crate::state::Shared;
use crate::state::credential::{Credential, Live, format_time};
use tokend_proto::CredentialState;

/// Who asked for the refresh, as far as its pace is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forcer {
    /// The daemon's user, root or the admin group: never held back.
    Admin,
    /// The credential's owner: held back like a user, but may mark its
    /// bearer token rejected (git's `erase`).
    Owner,
    /// Anyone else the credential's allow list lets in.
    User,
}

/// Whether a forced refresh by `forcer` may start a provider call now. For
/// a user it also takes the interval's one call at once (under the live
/// lock), so that requests arriving together start one call between them.
/// `Err`: the answer to give instead, the credential's current state.
pub fn admit(shared: &Shared, cred: &Credential, forcer: Forcer) -> Result<(), String> {
    if forcer == Forcer::Admin {
        return Ok(());
    }
    let interval_ms = shared
        .config()
        .refresh
        .min_forced_interval_secs
        .saturating_mul(1000);
    let interval_ms = i64::try_from(interval_ms).unwrap_or(i64::MAX);
    let mono = shared.clock.mono_ms();
    let waited = cred.with_live(|l| {
        let since = mono.saturating_sub(l.last_call_mono);
        if l.last_call_mono != 0 && since < interval_ms {
            return Some((since, current_state(l, shared.clock.now())));
        }
        l.last_call_mono = mono.max(1);
        None
    });
    match waited {
        None => Ok(()),
        Some((since_ms, state)) => {
            let left = (interval_ms - since_ms + 999) / 1000;
            Err(format!(
                "not refreshing credential {:?} now: tokend asked its provider for a token {} s ago, and a refresh asked by a user who is not an admin waits {} s between calls (the next one may start in {left} s); it is {state}",
                cred.name,
                since_ms / 1000,
                interval_ms / 1000,
            ))
        }
    }
}

/// Notes that a call to the provider for a new token starts now: a forced
/// refresh by a user within the interval starts none.
pub fn note_call(shared: &Shared, cred: &Credential) {
    let mono = shared.clock.mono_ms().max(1);
    cred.with_live(|l| l.last_call_mono = mono);
}

/// The state as `show` would say it, in a phrase.
fn current_state(l: &Live, now: i64) -> String {
    let why = l
        .reason
        .as_deref()
        .or(l.last_error.as_deref())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match l.state {
        CredentialState::Ready => match l.expires_at.get() {
            Some(at) if l.access_token.is_some() && at > now => {
                format!("ready, its token valid until {}", format_time(at))
            }
            _ if l.access_token.is_some() => "ready".to_string(),
            _ => format!("ready, with no token held yet{why}"),
        },
        state => format!("{}{why}", state.as_str()),
    }
}
