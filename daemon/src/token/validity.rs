//! When a held token may be handed out: valid on both clocks (docs/RULES.md,
//! "Two clocks") for at least the time asked, and the error that says why not.

use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Live};
use std::time::Duration;
use tokend_proto::{CredentialState, TokenReply};

/// A token handed out must stay valid at least this long, whatever the
/// client asked: a token that dies in flight is useless.
pub(super) const MIN_VALID_MS: i64 = 1_000;

/// A token the held state lets us hand out: any state but `failing` (a
/// credential that needs a login may still hold a token from before an
/// in-doubt refresh, which the provider still accepts), valid on both
/// clocks for the time asked.
pub(super) fn valid_reply(
    live: &Live,
    now_ms: i64,
    mono_ms: i64,
    min_valid_secs: u32,
) -> Option<TokenReply> {
    if live.state == CredentialState::Failing {
        return None;
    }
    let token = live.access_token.as_ref()?;
    let needed = (i64::from(min_valid_secs) * 1000).max(MIN_VALID_MS);
    if !valid_for(live, now_ms, mono_ms, needed) {
        return None;
    }
    Some(TokenReply {
        token: token.clone(),
        expires_at: live.expires_at.get(),
        generation: live.generation,
    })
}

/// The held token stays valid `needed_ms` more on the wall clock *and* on
/// the monotonic one (docs/RULES.md, "Two clocks").
pub(super) fn valid_for(live: &Live, now_ms: i64, mono_ms: i64, needed_ms: i64) -> bool {
    let wall = live
        .expires_at
        .get()
        .is_none_or(|e| e.saturating_mul(1000).saturating_sub(now_ms) >= needed_ms);
    let mono = live
        .expires_mono
        .get()
        .is_none_or(|e| e.saturating_sub(mono_ms) >= needed_ms);
    live.access_token.is_some() && wall && mono
}

pub(super) fn not_usable(cred: &Credential) -> Error {
    cred.with_live(|l| Error::NotUsable {
        name: cred.name.to_string(),
        state: l.state,
        reason: l
            .reason
            .as_deref()
            .or(l.last_error.as_deref())
            .map(Into::into),
    })
}

/// Refuses to talk to any provider for a credential whose row the key does
/// not vouch for (`store/binding.rs`): its settings may name an attacker's
/// endpoint.
pub fn trusted(cred: &Credential) -> Result<(), Error> {
    if cred.untrusted() {
        return Err(not_usable(cred));
    }
    Ok(())
}

pub(super) fn timeout(shared: &Shared) -> Duration {
    Duration::from_secs(shared.config().refresh.http_timeout_secs)
}
