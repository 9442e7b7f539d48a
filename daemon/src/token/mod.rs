//! The token lifecycle of DESIGN §4 and docs/RULES.md: serve a valid token,
//! refresh ahead, one refresh per credential at a time, commit before
//! publishing, back off on transient errors, stop on permanent ones, and
//! never send a refresh token whose fate is unknown.
//!
//! Every refresh runs in its own spawned task and callers await its handle:
//! a caller that gives up (timeout, disconnect) never cancels a refresh
//! half-way, between the provider's answer and the commit.

pub mod check;
pub mod notify;
pub mod refresher;

use crate::config::RefreshPolicy;
use crate::error::Error;
use crate::provider::{self, Endpoint, ExpiresIn, Grant, ProviderError, TokenSet};
use crate::state::Shared;
use crate::state::credential::{Credential, Live, Stamp};
use crate::store::{GrantChange, StateUpdate, StoreError, TokenUpdate, blocking};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokend_proto::{CredentialSpec, CredentialState, Secret, TokenReply};

/// A token handed out must stay valid at least this long, whatever the
/// client asked: a token that dies in flight is useless.
const MIN_VALID_MS: i64 = 1_000;

/// An `expires_in` of zero or less is read as this many seconds: long
/// enough not to refresh in a loop, short enough not to serve a dead token
/// for long (docs/RULES.md, "Token responses").
pub const MIN_LIFETIME_SECS: i64 = 60;

/// Longer lifetimes (`expires_in` of 1e15 and the like) are cut to a year.
pub const MAX_LIFETIME_SECS: i64 = 365 * 24 * 3600;

/// After an answer with no known outcome (a 200 without a token, a refresh
/// token in doubt that introspection could not settle), the next attempt
/// waits at least this long, so an odd provider sees a few requests a
/// minute at most.
const ODD_ANSWER_BACKOFF_SECS: u64 = 30;

/// Why a held refresh token is never sent again after a stop mid-refresh
/// when the provider offers no introspection.
const STOPPED_IN_DOUBT: &str = "tokend stopped during a refresh; the provider may have rotated the refresh token, so it will not be sent again";

/// Why it is never sent again when introspection says it is dead.
const ROTATED_IN_DOUBT: &str = "the provider rotated the refresh token during a refresh whose answer was lost (introspection says the held one is no longer active), so it will not be sent again";

/// A token the held state lets us hand out: any state but `failing` (a
/// credential that needs a login may still hold a token from before an
/// in-doubt refresh, which the provider still accepts), valid on both
/// clocks for the time asked.
fn valid_reply(live: &Live, now_ms: i64, mono_ms: i64, min_valid_secs: u32) -> Option<TokenReply> {
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
fn valid_for(live: &Live, now_ms: i64, mono_ms: i64, needed_ms: i64) -> bool {
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

/// A valid token for `cred`, refreshing first if the one held will not do.
pub async fn token(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    min_valid_secs: u32,
) -> Result<TokenReply, Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let fast = cred.with_live(|l| {
        let reply = valid_reply(l, now, mono, min_valid_secs)?;
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
            if cred.note_use(now / 1000) {
                shared.note_use();
            }
            return Ok(reply);
        }
        if state != CredentialState::Ready || backoff_until > mono {
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
            let report = crate::token::check::run(shared, cred).await?;
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
        && !current.as_ref().is_some_and(|c| same_secret(c, reported))
    {
        return Ok("that token was already replaced; nothing to do".into());
    }
    respect_backoff(shared, cred)?;
    run_now(shared, cred, attempts).await?;
    Ok(format!("refreshed credential {:?}", cred.name))
}

/// Compares two tokens in time that does not depend on where they differ:
/// a local caller must not learn the held token byte by byte from `reject`.
fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.expose().as_bytes().ct_eq(b.expose().as_bytes()).into()
}

/// `tokenctl refresh NAME`: one refresh now, whatever the schedule says,
/// but never sooner than the provider allowed.
pub async fn force_refresh(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<String, Error> {
    if let CredentialSpec::Bearer { .. } = cred.spec {
        return Err(Error::InvalidArgument(format!(
            "bearer credential {:?} has nothing to refresh (use `tokenctl check {}` to test it)",
            cred.name, cred.name
        )));
    }
    respect_backoff(shared, cred)?;
    let attempts = cred.with_live(|l| {
        // A forced refresh retries a failing credential: its cause may be fixed.
        if l.state == CredentialState::Failing {
            l.state = CredentialState::Ready;
        }
        l.attempts
    });
    run_now(shared, cred, attempts).await?;
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
fn respect_backoff(shared: &Shared, cred: &Credential) -> Result<(), Error> {
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
        "not refreshing credential {:?} yet: the provider asked tokend to wait; the next attempt is in {wait_secs} s, at {at}{why}",
        cred.name
    )))
}

async fn run_now(shared: &Arc<Shared>, cred: &Arc<Credential>, attempts: u64) -> Result<(), Error> {
    let wait = Duration::from_secs(2 * shared.config().refresh.http_timeout_secs + 5);
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
    if !shared.registry.is_current(&cred) {
        return Err(Error::UnknownCredential(cred.name.to_string()));
    }
    if cred.with_live(|l| l.uncommitted.is_some()) {
        return save_uncommitted(&shared, &cred).await;
    }
    let (attempts, state) = cred.with_live(|l| (l.attempts, l.state));
    if attempts != seen_attempts {
        // Someone else's attempt ran meanwhile: its outcome is ours.
        return cred
            .with_live(|l| l.last_error.clone())
            .map_or(Ok(()), |e| Err(Error::Provider(e.into())));
    }
    if state != CredentialState::Ready {
        return Err(not_usable(&cred));
    }
    let _slot = shared
        .refresh_slots
        .acquire()
        .await
        .map_err(|_| Error::Busy("shutting down".into()))?;
    let outcome = attempt(&shared, &cred).await;
    // Counted once the outcome is visible: anyone who looked before now
    // takes this attempt's outcome instead of starting another.
    cred.with_live(|l| l.attempts += 1);
    outcome
}

/// One attempt at a new token, by the credential's grant.
async fn attempt(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    let http = match shared.http() {
        Ok(http) => http,
        Err(message) => return transient(shared, cred, message, None, Pace::Normal).await,
    };
    let Some(endpoint) = cred.endpoint() else {
        // A bearer token: nothing to refresh.
        return Ok(());
    };
    let grant = match &cred.spec {
        CredentialSpec::OAuth2(_) => return refresh_grant(shared, cred, http, &endpoint).await,
        CredentialSpec::ClientCredentials(spec) => Grant::ClientCredentials {
            scopes: &spec.scopes,
        },
        CredentialSpec::Bearer { .. } => return Ok(()),
    };
    let result = send(shared, cred, http, &endpoint, &grant).await;
    conclude(shared, cred, result, None).await
}

/// Sends one grant with the `refreshing` flag up, and turns a token set
/// into the update to commit.
async fn send(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    grant: &Grant<'_>,
) -> Result<TokenUpdate, ProviderError> {
    let started_ms = shared.clock.now_ms();
    cred.with_live(|l| l.refreshing = true);
    let result = provider::request(http, endpoint, grant, timeout(shared)).await;
    cred.with_live(|l| l.refreshing = false);
    result.map(|set| token_update(cred, set, started_ms, &shared.config().refresh))
}

/// What an attempt's answer leads to. `rotating` is the endpoint of a
/// refresh-token grant, for which an answer with no known outcome puts the
/// refresh token in doubt; in the other grants nothing rotates, and such an
/// answer is only odd.
async fn conclude(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    result: Result<TokenUpdate, ProviderError>,
    rotating: Option<&Endpoint<'_>>,
) -> Result<(), Error> {
    match result {
        Ok(update) => commit_and_publish(shared, cred, update, Origin::Refresh).await,
        // The provider answered with an error, or nothing was sent: nothing rotated.
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) => transient(shared, cred, message, retry_after, Pace::Normal).await,
        Err(ProviderError::Unknown { message }) => match rotating {
            Some(endpoint) => no_answer(shared, cred, endpoint, message).await,
            None => transient(shared, cred, message, None, Pace::Odd).await,
        },
        Err(e) => permanent(shared, cred, &e).await,
    }
}

/// The refresh-token grant, the one whose every step guards the promise
/// that a refresh token is never sent twice (docs/RULES.md).
async fn refresh_grant(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
) -> Result<(), Error> {
    let Some(refresh_token) = cred.with_live(|l| l.refresh_token.clone()) else {
        return without_refresh_token(shared, cred).await;
    };
    if cred.with_live(|l| l.in_doubt) {
        settle_doubt(shared, cred, http, endpoint, &refresh_token).await?;
    }
    if let Err(message) = mark_in_flight(shared, cred).await {
        return transient(shared, cred, message, None, Pace::Normal).await;
    }
    let grant = Grant::RefreshToken(&refresh_token);
    let result = send(shared, cred, http, endpoint, &grant).await;
    conclude(shared, cred, result, Some(endpoint)).await
}

/// A refresh sent without a known outcome: the held refresh token is now in
/// doubt. With introspection, it is asked about after a pause (the provider
/// may still be working on the request); without, it is never sent again.
async fn no_answer(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    endpoint: &Endpoint<'_>,
    message: String,
) -> Result<(), Error> {
    cred.with_live(|l| l.in_doubt = true);
    tracing::warn!(credential = %cred.name, "a refresh ended without an answer: {message}");
    if endpoint.introspection_url.is_none() {
        let reason = format!(
            "a refresh ended without a usable answer ({message}); the provider may have rotated the refresh token, so it will not be sent again"
        );
        return spent(shared, cred, &reason).await;
    }
    let message = format!(
        "{message}; the refresh token is in doubt and is introspected before it is sent again"
    );
    transient(shared, cred, message, None, Pace::InDoubt).await
}

/// Resolves a refresh token in doubt without sending it (RFC 7662): still
/// active, the provider never rotated and the refresh goes on (`Ok`); not
/// active, it did and the answer was lost: a login is needed. No answer
/// leaves it in doubt, retried later.
async fn settle_doubt(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    refresh_token: &Secret,
) -> Result<(), Error> {
    if endpoint.introspection_url.is_none() {
        return spent(shared, cred, STOPPED_IN_DOUBT).await;
    }
    match provider::introspect(http, endpoint, refresh_token, timeout(shared)).await {
        Ok(true) => {
            tracing::info!(credential = %cred.name, "introspection: the refresh token in doubt is still active; refreshing");
            cred.with_live(|l| l.in_doubt = false);
            Ok(())
        }
        Ok(false) => spent(shared, cred, ROTATED_IN_DOUBT).await,
        Err(message) => {
            let message =
                format!("the refresh token is in doubt and could not be introspected: {message}");
            transient(shared, cred, message, None, Pace::InDoubt).await
        }
    }
}

/// The held refresh token may be spent: forget it and ask for a login. The
/// access token from before stays served until it expires: nothing was
/// reused, so the provider has not revoked it.
async fn spent(shared: &Arc<Shared>, cred: &Arc<Credential>, why: &str) -> Result<(), Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let served_until = cred.with_live(|l| {
        valid_for(l, now, mono, MIN_VALID_MS)
            .then(|| l.expires_at.get())
            .flatten()
    });
    let until = served_until
        .map(|e| {
            format!(
                "; the current token is served until it expires at {}, log in before then",
                crate::state::credential::format_time(e)
            )
        })
        .unwrap_or_default();
    let reason = format!("{why}{until}");
    set_state(
        shared,
        cred,
        CredentialState::NeedsLogin,
        &reason,
        GrantChange::DropRefreshToken,
    )
    .await;
    Err(not_usable(cred))
}

/// An authorization-code grant that came without a refresh token: its
/// access token is served until it expires (the scheduler brings us here
/// at that moment), then the credential needs a login. Nothing is sent.
async fn without_refresh_token(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let (alive, expires) =
        cred.with_live(|l| (valid_for(l, now, mono, MIN_VALID_MS), l.expires_at.get()));
    if alive && let Some(e) = expires {
        shared
            .scheduler
            .schedule(&cred.name, e.saturating_mul(1000));
        return Err(Error::NotUsable {
            name: cred.name.to_string(),
            state: CredentialState::Ready,
            reason: Some(format!(
                "the provider issued no refresh token, so the token held (valid until {}) cannot be renewed; log in again for a new one",
                crate::state::credential::format_time(e)
            )),
        });
    }
    let reason = "the access token expired and the provider issued no refresh token to renew it";
    set_state(
        shared,
        cred,
        CredentialState::NeedsLogin,
        reason,
        GrantChange::DropAll,
    )
    .await;
    Err(not_usable(cred))
}

/// Moves `cred` to `state` (needs-login or failing), in the store and in
/// memory, stops its schedule and notifies once per change.
async fn set_state(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    state: CredentialState,
    reason: &str,
    grant: GrantChange,
) {
    tracing::warn!(credential = %cred.name, state = state.as_str(), "{reason}");
    let update = StateUpdate {
        state,
        reason: Some(reason.to_string()),
        last_error: Some(reason.to_string()),
        next_refresh_at: None,
        grant,
    };
    save_state(shared, cred, update).await;
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.state = state;
        l.reason = Some(reason.into());
        l.last_error = Some(reason.into());
        l.next_refresh_at = Stamp::default();
        l.in_doubt = false;
        if matches!(grant, GrantChange::DropRefreshToken | GrantChange::DropAll) {
            l.refresh_token = None;
        }
        if grant == GrantChange::DropAll {
            l.access_token = None;
            l.expires_at = Stamp::default();
            l.expires_mono = Stamp::default();
        }
        previous
    });
    shared.scheduler.unschedule(&cred.name);
    if previous != state {
        crate::token::notify::transition(shared, &cred.name, state, Some(reason));
    }
}

/// Writes a state change, unless the credential was replaced meanwhile.
/// A failure is logged: memory holds the truth until the next write.
async fn save_state(shared: &Arc<Shared>, cred: &Credential, update: StateUpdate) {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.clone(), cred.incarnation);
    match blocking(move || store.save_state(&name, incarnation, &update)).await {
        Ok(()) | Err(StoreError::Gone(_)) => {}
        Err(e) => {
            tracing::error!(credential = %cred.name, error = %e, "could not record the state change")
        }
    }
}

/// Journals the refresh before the refresh token leaves the process.
async fn mark_in_flight(shared: &Arc<Shared>, cred: &Credential) -> Result<(), String> {
    let store = shared.store.clone();
    let (name, incarnation, at) = (cred.name.clone(), cred.incarnation, shared.clock.now());
    blocking(move || store.mark_refresh_in_flight(&name, incarnation, at))
        .await
        .map_err(|e| format!("refresh not attempted, the store is not writable: {e}"))
}

fn timeout(shared: &Shared) -> Duration {
    Duration::from_secs(shared.config().refresh.http_timeout_secs)
}

/// A token's lifetime from its `expires_in`, within documented bounds.
fn lifetime_secs(cred: &Credential, expires_in: ExpiresIn, policy: &RefreshPolicy) -> i64 {
    let default = i64::try_from(policy.default_lifetime_secs).unwrap_or(MAX_LIFETIME_SECS);
    let (secs, odd) = match expires_in {
        ExpiresIn::Missing => return default.clamp(1, MAX_LIFETIME_SECS),
        ExpiresIn::Unreadable => (default, "is not a number"),
        ExpiresIn::Secs(s) if s <= 0 => (MIN_LIFETIME_SECS, "is not a lifetime"),
        ExpiresIn::Secs(s) if s > MAX_LIFETIME_SECS => (MAX_LIFETIME_SECS, "is absurdly long"),
        ExpiresIn::Secs(s) => return s,
    };
    let said = match expires_in {
        ExpiresIn::Secs(s) => s.to_string(),
        _ => "the value".into(),
    };
    tracing::warn!(credential = %cred.name, "the provider's expires_in ({said}) {odd}; taking {secs} s");
    secs.clamp(1, MAX_LIFETIME_SECS)
}

/// Builds the store update for a token set received at `started_ms` (the
/// request's start, so the computed expiry is never later than the real one).
pub fn token_update(
    cred: &Credential,
    set: TokenSet,
    started_ms: i64,
    policy: &RefreshPolicy,
) -> TokenUpdate {
    let lifetime_ms = lifetime_secs(cred, set.expires_in, policy).saturating_mul(1000);
    let expires_ms = started_ms.saturating_add(lifetime_ms);
    let margin = margin_override(cred).unwrap_or(policy.margin_secs);
    let margin_ms = i64::try_from(margin).unwrap_or(i64::MAX / 1000) * 1000;
    let next_ms = plan_refresh(started_ms, lifetime_ms, margin_ms, policy);
    TokenUpdate {
        access_token: set.access_token,
        refresh_token: set.refresh_token,
        new_grant: false,
        generation: cred.with_live(|l| l.generation) + 1,
        expires_at: Some(expires_ms.div_euclid(1000)),
        refreshed_at: started_ms.div_euclid(1000),
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
/// [`MIN_VALID_MS`]); and never sooner than a second after issue, whatever
/// the provider said.
pub fn plan_refresh(
    issued_ms: i64,
    lifetime_ms: i64,
    margin_ms: i64,
    policy: &RefreshPolicy,
) -> i64 {
    let jitter = (lifetime_ms as f64 * policy.jitter_ratio * (random_unit() * 2.0 - 1.0)) as i64;
    let ahead = issued_ms
        .saturating_add((lifetime_ms as f64 * policy.ahead_ratio) as i64)
        .saturating_add(jitter);
    let latest = issued_ms
        .saturating_add(lifetime_ms)
        .saturating_sub(margin_ms.min(lifetime_ms / 4).max(MIN_VALID_MS));
    ahead.min(latest).max(issued_ms.saturating_add(1_000))
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
    if origin == Origin::Login {
        update.new_grant = true;
    }
    let held_after = update.refresh_token.is_some()
        || (!update.new_grant && cred.with_live(|l| l.refresh_token.is_some()));
    if matches!(cred.spec, CredentialSpec::OAuth2(_)) && !held_after {
        // Nothing can renew it: come back when it expires (docs/RULES.md).
        update.next_refresh_at = update.expires_at.map(|e| e.saturating_mul(1000));
    }
    match save_tokens(shared, cred, &update).await {
        Ok(()) => publish(shared, cred, update, origin, None),
        Err(StoreError::Gone(_)) => {
            tracing::info!(credential = %cred.name, "the credential was removed or replaced during the refresh; its new tokens are discarded");
            return Err(Error::UnknownCredential(cred.name.to_string()));
        }
        Err(e) => {
            tracing::error!(credential = %cred.name, error = %e, "new tokens could not be saved; serving them from memory and retrying the save in 5 s");
            let reason = format!("new tokens could not be saved ({e}); retrying");
            publish(shared, cred, update, origin, Some(reason));
            shared
                .scheduler
                .schedule(&cred.name, shared.clock.now_ms() + 5_000);
        }
    }
    Ok(())
}

async fn save_tokens(
    shared: &Arc<Shared>,
    cred: &Credential,
    update: &TokenUpdate,
) -> Result<(), StoreError> {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.clone(), cred.incarnation);
    // The due time in the store is in seconds; in memory it is ms.
    let mut stored = update.clone();
    stored.next_refresh_at = update.next_refresh_at.map(|ms| ms.div_euclid(1000));
    blocking(move || store.save_tokens(&name, incarnation, &stored)).await
}

/// Makes a new token set the one served. `unsaved` says why it is not in
/// the store yet, if it is not.
fn publish(
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
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.access_token = Some(update.access_token.clone());
        if update.new_grant || update.refresh_token.is_some() {
            l.refresh_token = update.refresh_token.clone();
        }
        l.generation = update.generation;
        l.expires_at = update.expires_at.into();
        l.expires_mono = expires_mono.into();
        l.last_refresh_at = Some(update.refreshed_at).into();
        l.next_refresh_at = next_ms.map(|ms| ms.div_euclid(1000)).into();
        l.state = CredentialState::Ready;
        l.reason = None;
        l.last_error = unsaved.as_deref().map(Into::into);
        l.failures = 0;
        l.retry_not_before_ms = 0;
        l.in_doubt = false;
        l.uncommitted = unsaved.is_some().then(|| Box::new(update.clone()));
        previous
    });
    if unsaved.is_none()
        && let Some(due) = next_ms
    {
        shared.scheduler.schedule(&cred.name, due);
    }
    tracing::info!(credential = %cred.name, generation, expires_at = ?update.expires_at, "new token");
    if previous != CredentialState::Ready && origin == Origin::Refresh {
        crate::token::notify::transition(shared, &cred.name, CredentialState::Ready, None);
    }
}

/// Retries the save of a token set the store refused earlier. Must be
/// called with the refresh lock held.
async fn save_uncommitted(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    let Some(update) = cred.with_live(|l| l.uncommitted.clone()) else {
        return Ok(());
    };
    match save_tokens(shared, cred, &update).await {
        Ok(()) => {
            tracing::info!(credential = %cred.name, "the new tokens are saved now");
            cred.with_live(|l| {
                l.uncommitted = None;
                l.last_error = None;
            });
            if let Some(due) = update.next_refresh_at {
                shared.scheduler.schedule(&cred.name, due);
            }
            Ok(())
        }
        Err(StoreError::Gone(_)) => Err(Error::UnknownCredential(cred.name.to_string())),
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
        if cred.with_live(|l| l.uncommitted.is_none()) {
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

/// How soon a failed attempt may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// The provider answered with an error, or nothing was sent: the
    /// journal is settled, and the usual exponential backoff applies.
    Normal,
    /// An odd answer (a 200 without a token): at least
    /// [`ODD_ANSWER_BACKOFF_SECS`] between attempts.
    Odd,
    /// The refresh token is in doubt: the journal stays set, and the same
    /// pause as for an odd answer applies before it is introspected.
    InDoubt,
}

/// A transient failure: keep the token, retry with capped exponential backoff
/// and jitter, honouring `Retry-After`. The caller learns of the failure
/// either way; token requests still get the held token while it is valid.
async fn transient(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    message: String,
    retry_after: Option<Duration>,
    pace: Pace,
) -> Result<(), Error> {
    let policy = shared.config().refresh.clone();
    let failures = cred.with_live(|l| {
        l.failures = l.failures.saturating_add(1);
        l.failures
    });
    let mut exp = policy
        .min_backoff_secs
        .saturating_mul(1u64 << (failures - 1).min(20))
        .min(policy.max_backoff_secs);
    if pace != Pace::Normal {
        exp = exp.max(ODD_ANSWER_BACKOFF_SECS.min(policy.max_backoff_secs));
    }
    let mut delay_ms = (exp as f64 * 1000.0 * (0.8 + 0.4 * random_unit())) as i64;
    if let Some(ra) = retry_after {
        delay_ms = delay_ms.max(ra.as_millis().min(3_600_000) as i64);
    }
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let due = now + delay_ms;
    let reason = format!(
        "refresh failed, retry {failures} in {} s: {message}",
        (delay_ms + 999) / 1000
    );
    tracing::warn!(credential = %cred.name, failures, retry_in_ms = delay_ms, "refresh failed: {message}");
    let grant = if pace == Pace::InDoubt {
        GrantChange::InDoubt
    } else {
        GrantChange::Settled
    };
    let (still_valid, update) = cred.with_live(|l| {
        l.retry_not_before_ms = mono + delay_ms;
        l.last_error = Some(reason.as_str().into());
        l.next_refresh_at = Some(due.div_euclid(1000)).into();
        (
            valid_for(l, now, mono, MIN_VALID_MS),
            StateUpdate {
                state: l.state,
                reason: l.reason.as_deref().map(Into::into),
                last_error: l.last_error.as_deref().map(Into::into),
                next_refresh_at: l.next_refresh_at.get(),
                grant,
            },
        )
    });
    shared.scheduler.schedule(&cred.name, due);
    save_state(shared, cred, update).await;
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
    let (state, grant) = match cred.spec {
        CredentialSpec::OAuth2(_) if e.needs_login() => {
            (CredentialState::NeedsLogin, GrantChange::DropAll)
        }
        _ => (CredentialState::Failing, GrantChange::Settled),
    };
    set_state(shared, cred, state, &e.to_string(), grant).await;
    Err(not_usable(cred))
}

/// Puts every loaded credential on the schedule, with its monotonic expiry
/// taken from the wall clock now. Those already due are spread over the
/// start-up window instead of all refreshing at once; a refresh token in
/// doubt is settled at once (no network is needed when there is no
/// introspection endpoint).
pub fn schedule_loaded(shared: &Shared) {
    let policy = shared.config().refresh.clone();
    let now = shared.clock.now_ms();
    let spread_ms = (policy.startup_spread_secs * 1000) as f64;
    for cred in shared.registry.unordered() {
        let due = cred.with_live(|l| {
            l.expires_mono = l
                .expires_at
                .get()
                .map(|e| shared.clock.mono_at(e.saturating_mul(1000)))
                .into();
            loaded_due(&cred.spec, l, now)
        });
        if let Some(due) = due {
            let due = if due <= now {
                now + (spread_ms * random_unit()) as i64
            } else {
                due
            };
            shared.scheduler.schedule(&cred.name, due);
        }
    }
}

/// When a loaded credential is next due (Unix ms), if ever.
fn loaded_due(spec: &CredentialSpec, l: &Live, now: i64) -> Option<i64> {
    if l.state != CredentialState::Ready {
        return None;
    }
    match spec {
        CredentialSpec::Bearer { .. } => None,
        CredentialSpec::OAuth2(_) if l.in_doubt => Some(now),
        CredentialSpec::OAuth2(_) if l.refresh_token.is_none() => {
            l.expires_at.get().map(|e| e.saturating_mul(1000))
        }
        _ => match (l.next_refresh_at.get(), l.access_token.is_some()) {
            (Some(at), true) => Some(at.saturating_mul(1000)),
            _ => Some(now),
        },
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
