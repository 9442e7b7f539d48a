//! Serving tokens: the fast path from memory, waiting for a refresh when
//! none is valid, and the two ways a client asks for a new token now
//! (`reject`, `refresh`), which respect the provider's backoff.

use super::claim::Trigger;
use super::forced::{self, Forcer};
use super::refresh::refresh;
use super::validity::{not_usable, valid_reply};
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Kind, Live};
use crate::store::GrantChange;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokend_proto::{CredentialSpec, CredentialState, Secret, TokenReply};

/// A valid token for `cred`, refreshing first if the one held will not do.
pub async fn token(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    min_valid_secs: u32,
) -> Result<TokenReply, Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let fast = cred.with_live(|l| {
        let reply = valid_reply(l, now, mono, min_valid_secs)?;
        Some((reply, handed_out(shared, &cred.name, l, now / 1000)))
    });
    if let Some((reply, dirty)) = fast {
        if dirty {
            shared.note_use();
        }
        return Ok(reply);
    }
    if cred.kind == Kind::Bearer {
        return Err(not_usable(cred));
    }
    on_demand(shared, cred, min_valid_secs).await
}

/// A token of credential `name` is handed out (under its lock, `l`): it
/// is counted, and true says its last-use time now waits for the next
/// flush. A wrap of its count is counted under the same lock, so a scrape
/// never sees the one without the other.
fn handed_out(shared: &Shared, name: &str, l: &mut Live, now_secs: i64) -> bool {
    let used = l.note_use(now_secs);
    if used.served_wrapped {
        shared.metrics.served_wrapped(name);
    }
    used.dirty
}

/// The held token, if it may be handed out now, and nothing more: never
/// a refresh or a wait. For an event stream passing on the token a refresh
/// just brought (`GET /v1/events?include_token=true`); counted as a use.
pub fn held(shared: &Shared, cred: &Credential) -> Option<TokenReply> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let (reply, dirty) = cred.with_live(|l| {
        let reply = valid_reply(l, now, mono, 0)?;
        Some((reply, handed_out(shared, &cred.name, l, now / 1000)))
    })?;
    if dirty {
        shared.note_use();
    }
    Some(reply)
}

/// What a fresh token has lost of its lifetime by the time it is served
/// (the request's round trip, the expiry rounded down to the second), at
/// most: a request for more than the lifetime less this is refused.
const LIFETIME_MARGIN_SECS: i64 = 2;

/// How many refreshes a token request starts at most.
const MAX_ROUNDS: u32 = 3;

/// No valid token is held: wait for a refresh (ours or one in flight),
/// and for a retry already planned (a backoff, another refresh's lease)
/// when it comes within `refresh.wait_secs`.
pub(super) async fn on_demand(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    min_valid_secs: u32,
) -> Result<TokenReply, Error> {
    let deadline = Instant::now() + Duration::from_secs(shared.config().refresh.wait_secs);
    let mut refreshed = false;
    let mut rounds = 0;
    let mut last_error = None;
    loop {
        let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
        let (reply, state, attempts, backoff_until) = cred.with_live(|l| {
            (
                valid_reply(l, now, mono, min_valid_secs),
                l.state,
                l.attempts,
                l.retry_not_before_ms,
            )
        });
        if let Some(reply) = reply {
            if cred.with_live(|l| handed_out(shared, &cred.name, l, now / 1000)) {
                shared.note_use();
            }
            return Ok(reply);
        }
        if state != CredentialState::Ready {
            return Err(not_usable(cred));
        }
        if let Some(life) = cred.with_live(|l| l.lifetime_secs())
            && i64::from(min_valid_secs) + LIFETIME_MARGIN_SECS > life
        {
            // No refresh would help: each would spend a refresh token on
            // a token the client does not take.
            return Err(Error::InvalidArgument(format!(
                "tokens of credential {:?} last {life} s: a fresh one is not valid for the {min_valid_secs} s asked for; ask for at most {} with --min-valid",
                cred.name,
                (life - LIFETIME_MARGIN_SECS).max(0)
            )));
        }
        if backoff_until > mono {
            // A retry is planned: wait for it if it comes in time.
            let pause = Duration::from_millis((backoff_until - mono) as u64);
            if Instant::now() + pause >= deadline {
                return Err(last_error.unwrap_or_else(|| not_usable(cred)));
            }
            tokio::time::sleep(pause).await;
            continue;
        }
        if refreshed {
            return Err(Error::InvalidArgument(format!(
                "a fresh token of credential {:?} is not valid for {min_valid_secs} s; ask for less with --min-valid",
                cred.name
            )));
        }
        let generation = cred.with_live(|l| l.generation);
        rounds += 1;
        let task = tokio::spawn(refresh(
            shared.clone(),
            cred.clone(),
            attempts,
            Trigger::Demand {
                need_ms: i64::from(min_valid_secs) * 1000,
            },
        ));
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, task).await {
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "credential {:?} has no valid token: a refresh is still in flight after {} s",
                    cred.name,
                    shared.config().refresh.wait_secs
                )));
            }
            Ok(Err(e)) => return Err(Error::Internal(format!("refresh task failed: {e}"))),
            Ok(Ok(Err(e))) => {
                // Looked at again above: a retry planned within the wait
                // is waited for, anything else is the answer.
                let planned = cred.with_live(|l| l.retry_not_before_ms) > shared.clock.mono_ms();
                if !planned {
                    return Err(e);
                }
                last_error = Some(e);
            }
            // A refresh that changed nothing took the outcome of another
            // attempt that ran meanwhile, which may have been too early to
            // help: another round, a few at most.
            Ok(Ok(Ok(()))) => {
                refreshed = rounds >= MAX_ROUNDS || cred.with_live(|l| l.generation) != generation;
            }
        }
    }
}

/// "The API refused this token": refresh, unless the token named was already
/// replaced (docs/DESIGN.md §4.7). A bearer token named with the host that
/// refused it (`rejected_by`, git's `erase`) is marked failing.
pub async fn reject(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    token: Option<&Secret>,
    forcer: Forcer,
    rejected_by: Option<&str>,
) -> Result<String, Error> {
    crate::token::trusted(cred)?;
    let spec = cred.spec();
    if let (CredentialSpec::Bearer { .. }, Some(token), Some(host)) = (&spec, token, rejected_by)
        && forcer != Forcer::User
    {
        return rejected_bearer(shared, cred, token, host).await;
    }
    if let CredentialSpec::Bearer { check_url, .. } = &spec {
        if check_url.is_some() {
            // A user's word that the token was refused does not fail it
            // for everyone: the API is asked (at the user's pace).
            let report = crate::token::check::paced(shared, cred, forcer).await?;
            return Ok(format!(
                "bearer tokens cannot be refreshed; checked it: {}",
                report.message
            ));
        }
        if rejected_by.is_some() {
            return Ok(format!(
                "noted; bearer credential {:?} has no check URL to confirm it with, and only its owner or an admin marks it rejected for everyone",
                cred.name
            ));
        }
        return Err(Error::InvalidArgument(format!(
            "bearer credential {:?} cannot be refreshed: revoke the token at the provider and replace it with `tokenctl add bearer {} --replace`",
            cred.name, cred.name
        )));
    }
    let (current, attempts) = cred.with_live(|l| (l.access_token.clone(), l.attempts));
    if let Some(reported) = token
        && !current.as_ref().is_some_and(|c| same_secret(c, reported))
    {
        return Ok("that token was already replaced; nothing to do".into());
    }
    // Paced like `refresh`, named token or not (forced.rs).
    if let Err(state) = forced::admit(shared, cred, forcer) {
        return Ok(state);
    }
    respect_backoff(shared, cred)?;
    let need_ms = super::validity::MIN_VALID_MS;
    run_now(shared, cred, attempts, Trigger::Demand { need_ms }).await?;
    Ok(format!("refreshed credential {:?}", cred.name))
}

/// A bearer token that `host` refused (git's `erase`): it cannot be
/// refreshed, so it is marked `failing: rejected by HOST`, and is not
/// served until it is replaced (or a `check` finds it accepted). Only the
/// held token can be reported: one already replaced changes nothing.
async fn rejected_bearer(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    token: &Secret,
    host: &str,
) -> Result<String, Error> {
    let held = cred.with_live(|l| l.access_token.clone());
    if !held.as_ref().is_some_and(|h| same_secret(h, token)) {
        return Ok("that token was already replaced; nothing to do".into());
    }
    let reason = format!("rejected by {host} (git reported that it refused the token)");
    let _refresh = cred.refresh_lock.lock().await;
    super::outcome::set_state(
        shared,
        cred,
        CredentialState::Failing,
        &reason,
        GrantChange::Settled,
    )
    .await;
    Ok(format!(
        "bearer credential {:?} is now failing: {reason}; replace the token with `tokenctl add bearer {} --replace`",
        cred.name, cred.name
    ))
}

/// Compares two tokens in time that does not depend on where they differ:
/// a local caller must not learn the held token byte by byte from `reject`.
pub(super) fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.expose().as_bytes().ct_eq(b.expose().as_bytes()).into()
}

/// `tokenctl refresh NAME`: one refresh now, whatever the schedule says,
/// but never sooner than the provider allowed.
pub async fn force_refresh(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    forcer: Forcer,
) -> Result<String, Error> {
    // Before anything: a forced refresh makes a failing credential ready.
    crate::token::trusted(cred)?;
    if cred.kind == Kind::Bearer {
        return Err(Error::InvalidArgument(format!(
            "bearer credential {:?} has nothing to refresh (use `tokenctl check {}` to test it)",
            cred.name, cred.name
        )));
    }
    if let Err(state) = forced::admit(shared, cred, forcer) {
        return Ok(state);
    }
    respect_backoff(shared, cred)?;
    let attempts = cred.with_live(|l| {
        // A forced refresh retries a failing credential: its cause may be fixed.
        if l.state == CredentialState::Failing {
            l.state = CredentialState::Ready;
        }
        l.attempts
    });
    run_now(shared, cred, attempts, Trigger::Force).await?;
    let expires = cred
        .with_live(|l| l.expires_at.get())
        .map(|e| {
            format!(
                " (valid until {})",
                crate::state::credential::format_time(e)
            )
        })
        .unwrap_or_default();
    Ok(format!("refreshed credential {:?}{expires}", cred.name))
}

/// A forced refresh or a reject within a backoff or a provider's
/// `Retry-After` answers at once with the last error and when the next
/// attempt is, instead of sending a request the provider asked us not to.
pub(super) fn respect_backoff(shared: &Shared, cred: &Credential) -> Result<(), Error> {
    let mono = shared.clock.mono_ms();
    let (until, last_error) = cred.with_live(|l| {
        (
            l.retry_not_before_ms,
            l.last_error.as_deref().map(String::from),
        )
    });
    if until <= mono {
        return Ok(());
    }
    let wait_secs = (until - mono + 999) / 1000;
    let at = crate::state::credential::format_time(shared.clock.now() + wait_secs);
    let why = last_error
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default();
    Err(Error::Provider(format!(
        "not refreshing credential {:?} yet: the next attempt is in {wait_secs} s, at {at}{why}",
        cred.name
    )))
}

pub(super) async fn run_now(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    attempts: u32,
    trigger: Trigger,
) -> Result<(), Error> {
    let wait = Duration::from_secs(2 * shared.config().refresh.http_timeout_secs + 5);
    let task = tokio::spawn(refresh(shared.clone(), cred.clone(), attempts, trigger));
    match tokio::time::timeout(wait, task).await {
        Err(_) => Err(Error::Timeout(format!(
            "the refresh of {:?} is taking too long; it goes on in the background",
            cred.name
        ))),
        Ok(Err(e)) => Err(Error::Internal(format!("refresh task failed: {e}"))),
        Ok(Ok(result)) => result,
    }
}
