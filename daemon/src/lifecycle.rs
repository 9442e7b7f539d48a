//! The token lifecycle of DESIGN §4: serve a valid token, refresh ahead,
//! one refresh per credential at a time, commit before publishing, back off
//! on transient errors, stop on permanent ones.
//!
//! Every refresh runs in its own spawned task and callers await its handle:
//! a caller that gives up (timeout, disconnect) never cancels a refresh
//! half-way, between the provider's answer and the commit.

use crate::config::RefreshPolicy;
use crate::credential::{Credential, Live, Stamp};
use crate::error::Error;
use crate::handler::blocking;
use crate::provider::{self, Grant, ProviderError, TokenSet};
use crate::state::Shared;
use crate::store::{StateUpdate, TokenUpdate};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokend_proto::{CredentialSpec, CredentialState, Secret, TokenReply};

/// A token handed out must stay valid at least this long, whatever the
/// client asked: a token that dies in flight is useless.
const MIN_VALID_MS: i64 = 1_000;

fn valid_reply(live: &Live, now_ms: i64, min_valid_secs: u32) -> Option<TokenReply> {
    if live.state != CredentialState::Ready {
        return None;
    }
    let token = live.access_token.as_ref()?;
    let needed = (i64::from(min_valid_secs) * 1000).max(MIN_VALID_MS);
    if live
        .expires_at
        .get()
        .is_some_and(|e| e * 1000 - now_ms < needed)
    {
        return None;
    }
    Some(TokenReply {
        token: token.clone(),
        expires_at: live.expires_at.get(),
        generation: live.generation,
    })
}

/// A valid token for `cred`, refreshing first if the one held will not do.
pub async fn token(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    min_valid_secs: u32,
) -> Result<TokenReply, Error> {
    let now = shared.clock.now_ms();
    let fast = cred.with_live(|l| {
        let reply = valid_reply(l, now, min_valid_secs)?;
        Some((reply, l.note_use(now / 1000)))
    });
    if let Some((reply, first_use_this_second)) = fast {
        if first_use_this_second {
            shared.note_use();
        }
        return Ok(reply);
    }
    if let CredentialSpec::Bearer { .. } = cred.spec {
        return Err(not_usable(cred));
    }
    on_demand(shared, cred, min_valid_secs).await
}

fn not_usable(cred: &Credential) -> Error {
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

/// No valid token is held: wait for a refresh (ours or one in flight).
async fn on_demand(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    min_valid_secs: u32,
) -> Result<TokenReply, Error> {
    let deadline = Instant::now() + Duration::from_secs(shared.config().refresh.wait_secs);
    let mut refreshed = false;
    loop {
        let now = shared.clock.now_ms();
        let (reply, state, attempts, backoff_until) = cred.with_live(|l| {
            (
                valid_reply(l, now, min_valid_secs),
                l.state,
                l.attempts,
                l.retry_not_before_ms,
            )
        });
        if let Some(reply) = reply {
            if cred.note_use(now / 1000) {
                shared.note_use();
            }
            return Ok(reply);
        }
        if state != CredentialState::Ready || backoff_until > now {
            return Err(not_usable(cred));
        }
        if refreshed {
            return Err(Error::InvalidArgument(format!(
                "a fresh token of credential {:?} is not valid for {min_valid_secs} s; ask for less with --min-valid",
                cred.name
            )));
        }
        let task = tokio::spawn(refresh(shared.clone(), cred.clone(), attempts));
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
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Ok(Ok(()))) => refreshed = true,
        }
    }
}

/// "The API refused this token": refresh, unless the token named was already
/// replaced (DESIGN §4.7).
pub async fn reject(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    token: Option<&Secret>,
) -> Result<String, Error> {
    if let CredentialSpec::Bearer { check_url } = &cred.spec {
        if check_url.is_some() {
            let report = crate::check::run(shared, cred).await?;
            return Ok(format!(
                "bearer tokens cannot be refreshed; checked it: {}",
                report.message
            ));
        }
        return Err(Error::InvalidArgument(format!(
            "bearer credential {:?} cannot be refreshed: revoke the token at the provider and replace it with `tokenctl add bearer {} --replace`",
            cred.name, cred.name
        )));
    }
    let (current, attempts) = cred.with_live(|l| (l.access_token.clone(), l.attempts));
    if let Some(reported) = token
        && current.as_ref() != Some(reported)
    {
        return Ok("that token was already replaced; nothing to do".into());
    }
    run_now(shared, cred, attempts).await?;
    Ok(format!("refreshed credential {:?}", cred.name))
}

/// `tokenctl refresh NAME`: one refresh now, whatever the schedule says.
pub async fn force_refresh(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<String, Error> {
    if let CredentialSpec::Bearer { .. } = cred.spec {
        return Err(Error::InvalidArgument(format!(
            "bearer credential {:?} has nothing to refresh (use `tokenctl check {}` to test it)",
            cred.name, cred.name
        )));
    }
    let attempts = cred.with_live(|l| {
        // A forced refresh overrides backoff and retries a failing credential.
        l.retry_not_before_ms = 0;
        if l.state == CredentialState::Failing {
            l.state = CredentialState::Ready;
        }
        l.attempts
    });
    run_now(shared, cred, attempts).await?;
    let expires = cred
        .with_live(|l| l.expires_at.get())
        .map(|e| format!(" (valid until {e})"))
        .unwrap_or_default();
    Ok(format!("refreshed credential {:?}{expires}", cred.name))
}

async fn run_now(shared: &Arc<Shared>, cred: &Arc<Credential>, attempts: u64) -> Result<(), Error> {
    let wait = Duration::from_secs(shared.config().refresh.http_timeout_secs + 5);
    let task = tokio::spawn(refresh(shared.clone(), cred.clone(), attempts));
    match tokio::time::timeout(wait, task).await {
        Err(_) => Err(Error::Timeout(format!(
            "the refresh of {:?} is taking too long; it goes on in the background",
            cred.name
        ))),
        Ok(Err(e)) => Err(Error::Internal(format!("refresh task failed: {e}"))),
        Ok(Ok(result)) => result,
    }
}

/// One refresh attempt, unless another attempt ran since the caller looked
/// (`seen_attempts`). Holds the credential's refresh lock throughout.
pub async fn refresh(
    shared: Arc<Shared>,
    cred: Arc<Credential>,
    seen_attempts: u64,
) -> Result<(), Error> {
    let _guard = cred.refresh_lock.lock().await;
    if shared
        .registry
        .get(&cred.name)
        .is_none_or(|c| !Arc::ptr_eq(&c, &cred))
    {
        return Err(Error::UnknownCredential(cred.name.to_string()));
    }
    if let Some(update) = cred.with_live(|l| l.uncommitted.clone()) {
        return commit_and_publish(&shared, &cred, *update, Origin::Refresh).await;
    }
    let (attempts, refresh_token, state) =
        cred.with_live(|l| (l.attempts, l.refresh_token.clone(), l.state));
    if attempts != seen_attempts {
        // Someone else's attempt ran meanwhile: its outcome is ours.
        return cred
            .with_live(|l| l.access_token.is_some())
            .then_some(())
            .ok_or_else(|| not_usable(&cred));
    }
    if state != CredentialState::Ready {
        return Err(not_usable(&cred));
    }
    let _slot = shared
        .refresh_slots
        .acquire()
        .await
        .map_err(|_| Error::Busy("shutting down".into()))?;
    let policy = shared.config().refresh.clone();
    let started_ms = shared.clock.now_ms();
    cred.with_live(|l| l.refreshing = true);
    let result = match shared.http() {
        Err(message) => Err(ProviderError::Transient {
            message,
            retry_after: None,
        }),
        Ok(http) => match (&cred.spec, &refresh_token, cred.endpoint()) {
            (CredentialSpec::OAuth2(_), Some(rt), Some(endpoint)) => {
                match mark_in_flight(&shared, &cred).await {
                    Ok(()) => {
                        provider::request(
                            http,
                            &endpoint,
                            &Grant::RefreshToken(rt),
                            timeout(&policy),
                        )
                        .await
                    }
                    Err(message) => Err(ProviderError::Transient {
                        message,
                        retry_after: None,
                    }),
                }
            }
            (CredentialSpec::OAuth2(_), None, _) => Err(ProviderError::Permanent {
                error: "no refresh token".into(),
                description: Some("the provider did not issue one at login".into()),
            }),
            (CredentialSpec::ClientCredentials(spec), _, Some(endpoint)) => {
                let grant = Grant::ClientCredentials {
                    scopes: &spec.scopes,
                };
                provider::request(http, &endpoint, &grant, timeout(&policy)).await
            }
            // No token endpoint (a bearer token): nothing to refresh.
            (_, _, None) | (CredentialSpec::Bearer { .. }, _, _) => return Ok(()),
        },
    };
    cred.with_live(|l| l.refreshing = false);
    let outcome = match result {
        Ok(set) => {
            let update = token_update(&cred, set, started_ms, &policy);
            commit_and_publish(&shared, &cred, update, Origin::Refresh).await
        }
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) => transient(&shared, &cred, message, retry_after, &policy).await,
        Err(e) => permanent(&shared, &cred, &e).await,
    };
    // Counted once the outcome is visible: anyone who looked before now
    // takes this attempt's outcome instead of starting another.
    cred.with_live(|l| l.attempts += 1);
    outcome
}

/// Journals the refresh before the refresh token leaves the process.
async fn mark_in_flight(shared: &Arc<Shared>, cred: &Credential) -> Result<(), String> {
    let store = shared.store.clone();
    let (name, at) = (cred.name.clone(), shared.clock.now());
    blocking(move || store.mark_refresh_in_flight(&name, at))
        .await
        .map_err(|e| format!("refresh not attempted, the store is not writable: {e}"))
}

fn timeout(policy: &RefreshPolicy) -> Duration {
    Duration::from_secs(policy.http_timeout_secs)
}

/// Builds the store update for a token set received at `started_ms` (the
/// request's start, so the computed expiry is never later than the real one).
pub fn token_update(
    cred: &Credential,
    set: TokenSet,
    started_ms: i64,
    policy: &RefreshPolicy,
) -> TokenUpdate {
    let lifetime_ms = set
        .expires_in
        .unwrap_or(policy.default_lifetime_secs)
        .max(1) as i64
        * 1000;
    let expires_ms = started_ms + lifetime_ms;
    let margin = margin_override(cred).unwrap_or(policy.margin_secs) as i64 * 1000;
    let next_ms = plan_refresh(started_ms, lifetime_ms, margin, policy);
    TokenUpdate {
        access_token: set.access_token,
        refresh_token: set.refresh_token,
        generation: cred.with_live(|l| l.generation) + 1,
        expires_at: Some(expires_ms / 1000),
        refreshed_at: started_ms / 1000,
        next_refresh_at: Some(next_ms),
    }
}

fn margin_override(cred: &Credential) -> Option<u64> {
    match &cred.spec {
        CredentialSpec::OAuth2(s) => s.refresh_margin_secs.map(u64::from),
        CredentialSpec::ClientCredentials(s) => s.refresh_margin_secs.map(u64::from),
        CredentialSpec::Bearer { .. } => None,
    }
}

/// When to refresh a token issued at `issued_ms` (Unix ms) living
/// `lifetime_ms`: at `ahead_ratio` of its life, give or take the jitter, and
/// never later than `margin_ms` before expiry (the margin shrinks to a
/// quarter of the lifetime for short-lived tokens, but not below
/// [`MIN_VALID_MS`]).
pub fn plan_refresh(
    issued_ms: i64,
    lifetime_ms: i64,
    margin_ms: i64,
    policy: &RefreshPolicy,
) -> i64 {
    let jitter = (lifetime_ms as f64 * policy.jitter_ratio * (random_unit() * 2.0 - 1.0)) as i64;
    let ahead = issued_ms + (lifetime_ms as f64 * policy.ahead_ratio) as i64 + jitter;
    // The margin shrinks for short-lived tokens, but never below the
    // validity a handed-out token must still have.
    let latest = issued_ms + lifetime_ms - margin_ms.min(lifetime_ms / 4).max(MIN_VALID_MS);
    ahead.min(latest).max(issued_ms + 200)
}

/// A uniform number in [0, 1) from the OS RNG (for jitter only).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a new token set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A refresh: recovering from a bad state is news for the notify command.
    Refresh,
    /// A login: the user is watching; no notification.
    Login,
}

/// Commits a new token set, then (and only then) lets anyone see it.
/// Must be called with the credential's refresh lock held.
pub async fn commit_and_publish(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    update: TokenUpdate,
    origin: Origin,
) -> Result<(), Error> {
    let store = shared.store.clone();
    let (name, saved) = (cred.name.clone(), update.clone());
    // The due time in the store is in seconds; in memory it is ms.
    let mut stored = saved;
    stored.next_refresh_at = update.next_refresh_at.map(|ms| ms / 1000);
    if let Err(e) = blocking(move || store.save_tokens(&name, &stored)).await {
        // The provider has already rotated: keep the new pair in memory (never
        // send the old refresh token again) and retry the commit soon.
        tracing::error!(credential = %cred.name, error = %e, "new tokens could not be saved; retrying in 5 s");
        let reason = format!("new tokens could not be saved ({e}); retrying");
        cred.with_live(|l| {
            l.uncommitted = Some(Box::new(update));
            l.last_error = Some(reason.into());
        });
        shared
            .scheduler
            .schedule(&cred.name, shared.clock.now_ms() + 5_000);
        return Err(Error::Internal(format!("credential {:?}: {e}", cred.name)));
    }
    let next_ms = update.next_refresh_at;
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.access_token = Some(update.access_token);
        if update.refresh_token.is_some() {
            l.refresh_token = update.refresh_token;
        }
        l.generation = update.generation;
        l.expires_at = update.expires_at.into();
        l.last_refresh_at = Some(update.refreshed_at).into();
        l.next_refresh_at = next_ms.map(|ms| ms / 1000).into();
        l.state = CredentialState::Ready;
        l.reason = None;
        l.last_error = None;
        l.failures = 0;
        l.retry_not_before_ms = 0;
        l.uncommitted = None;
        l.interrupted = false;
        previous
    });
    if let Some(due) = next_ms {
        shared.scheduler.schedule(&cred.name, due);
    }
    tracing::info!(credential = %cred.name, generation = update.generation, expires_at = ?update.expires_at, "new token");
    if previous != CredentialState::Ready && origin == Origin::Refresh {
        crate::notify::transition(shared, &cred.name, CredentialState::Ready, None);
    }
    Ok(())
}

/// A transient failure: keep the token, retry with capped exponential backoff
/// and jitter, honouring `Retry-After`. The caller learns of the failure
/// either way; token requests still get the held token while it is valid.
async fn transient(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    message: String,
    retry_after: Option<Duration>,
    policy: &RefreshPolicy,
) -> Result<(), Error> {
    let failures = cred.with_live(|l| {
        l.failures += 1;
        l.failures
    });
    let exp = policy
        .min_backoff_secs
        .saturating_mul(1u64 << (failures - 1).min(20))
        .min(policy.max_backoff_secs);
    let mut delay_ms = (exp as f64 * 1000.0 * (0.8 + 0.4 * random_unit())) as i64;
    if let Some(ra) = retry_after {
        delay_ms = delay_ms.max(ra.as_millis().min(3_600_000) as i64);
    }
    let now = shared.clock.now_ms();
    let due = now + delay_ms;
    let reason = format!(
        "refresh failed, retry {failures} in {} s: {message}",
        (delay_ms + 999) / 1000
    );
    tracing::warn!(credential = %cred.name, failures, retry_in_ms = delay_ms, "refresh failed: {message}");
    let (still_valid, update) = cred.with_live(|l| {
        l.retry_not_before_ms = due;
        l.last_error = Some(reason.as_str().into());
        l.next_refresh_at = Some(due / 1000).into();
        let valid = l.access_token.is_some() && l.expires_at.get().is_none_or(|e| e * 1000 > now);
        (
            valid,
            StateUpdate {
                state: l.state,
                reason: l.reason.as_deref().map(Into::into),
                last_error: l.last_error.as_deref().map(Into::into),
                next_refresh_at: l.next_refresh_at.get(),
            },
        )
    });
    shared.scheduler.schedule(&cred.name, due);
    let store = shared.store.clone();
    let name = cred.name.clone();
    if let Err(e) = blocking(move || store.save_state(&name, &update, false)).await {
        tracing::warn!(credential = %cred.name, error = %e, "could not record the refresh failure");
    }
    if still_valid {
        Err(Error::Provider(format!(
            "{reason}; the current token stays in use until it expires"
        )))
    } else {
        Err(Error::NotUsable {
            name: cred.name.to_string(),
            state: CredentialState::Ready,
            reason: Some(reason),
        })
    }
}

/// A permanent failure: stop retrying, say why, notify once.
async fn permanent(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    e: &ProviderError,
) -> Result<(), Error> {
    let needs_login = e.needs_login()
        || matches!(e, ProviderError::Permanent { error, .. } if error == "no refresh token");
    let (state, drop_grant) = match cred.spec {
        CredentialSpec::OAuth2(_) if needs_login => (CredentialState::NeedsLogin, true),
        _ => (CredentialState::Failing, false),
    };
    let mut reason = e.to_string();
    if needs_login && cred.with_live(|l| l.interrupted) {
        reason.push_str(
            " (tokend was stopped after the provider had rotated the refresh token but before the new one was saved)",
        );
    }
    tracing::warn!(credential = %cred.name, state = state.as_str(), "refresh refused: {reason}");
    let update = StateUpdate {
        state,
        reason: Some(reason.clone()),
        last_error: Some(reason.clone()),
        next_refresh_at: None,
    };
    let store = shared.store.clone();
    let name = cred.name.clone();
    if let Err(err) = blocking(move || store.save_state(&name, &update, drop_grant)).await {
        tracing::error!(credential = %cred.name, error = %err, "could not record the refresh failure");
    }
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.state = state;
        l.reason = Some(reason.as_str().into());
        l.last_error = Some(reason.as_str().into());
        l.next_refresh_at = Stamp::default();
        if drop_grant {
            l.refresh_token = None;
            l.access_token = None;
            l.expires_at = Stamp::default();
        }
        previous
    });
    shared.scheduler.unschedule(&cred.name);
    if previous != state {
        crate::notify::transition(shared, &cred.name, state, Some(&reason));
    }
    Err(not_usable(cred))
}

/// Puts every loaded credential on the schedule. Those already due are
/// spread over the start-up window instead of all refreshing at once.
pub fn schedule_loaded(shared: &Shared) {
    let policy = shared.config().refresh.clone();
    let now = shared.clock.now_ms();
    let spread_ms = (policy.startup_spread_secs * 1000) as f64;
    for cred in shared.registry.unordered() {
        let due = cred.with_live(|l| {
            if l.state != CredentialState::Ready {
                return None;
            }
            match cred.spec {
                CredentialSpec::Bearer { .. } => None,
                CredentialSpec::OAuth2(_) if l.refresh_token.is_none() => None,
                _ => {
                    let planned = match (l.next_refresh_at.get(), l.access_token.is_some()) {
                        (Some(at), true) => at * 1000,
                        _ => now,
                    };
                    Some(if planned <= now {
                        now + (spread_ms * random_unit()) as i64
                    } else {
                        planned
                    })
                }
            }
        });
        if let Some(due) = due {
            shared.scheduler.schedule(&cred.name, due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_planned_at_three_quarters_within_jitter() {
        let p = RefreshPolicy::default();
        for _ in 0..100 {
            let at = plan_refresh(0, 3_600_000, 30_000, &p);
            assert!((2_520_000..=2_880_000).contains(&at), "{at}");
        }
    }

    #[test]
    fn margin_caps_the_refresh_time() {
        let p = RefreshPolicy {
            ahead_ratio: 0.95,
            jitter_ratio: 0.0,
            ..RefreshPolicy::default()
        };
        assert_eq!(plan_refresh(0, 100_000, 30_000, &p), 75_000);
    }

    #[test]
    fn short_tokens_are_refreshed_before_expiry() {
        let p = RefreshPolicy::default();
        for _ in 0..100 {
            let at = plan_refresh(1_000, 5_000, 30_000, &p);
            assert!(at > 1_000 && at <= 1_000 + 3_750 + 250, "{at}");
        }
    }
}
