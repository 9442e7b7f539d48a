//! The arithmetic of token lifetimes and refresh times, and putting the
//! loaded credentials on the schedule at start-up.

use super::validity::MIN_VALID_MS;
use crate::config::RefreshPolicy;
use crate::provider::{ExpiresIn, TokenSet};
use crate::state::Shared;
use crate::state::credential::{Credential, Kind, Live};
use crate::store::TokenUpdate;
use tokend_proto::{CredentialSpec, CredentialState};

/// An `expires_in` of zero or less is read as this many seconds: long
/// enough not to refresh in a loop, short enough not to serve a dead token
/// for long (docs/RULES.md, "Token responses").
pub const MIN_LIFETIME_SECS: i64 = 60;

/// Longer lifetimes (`expires_in` of 1e15 and the like) are cut to a year.
pub const MAX_LIFETIME_SECS: i64 = 365 * 24 * 3600;

/// A token's lifetime from its `expires_in`, within documented bounds.
pub(super) fn lifetime_secs(
    cred: &Credential,
    expires_in: ExpiresIn,
    policy: &RefreshPolicy,
) -> i64 {
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
    let (forecast_at, ask_introspection) =
        super::forecast::from_answer(set.refresh_expires_in, started_ms);
    TokenUpdate {
        access_token: Some(set.access_token),
        refresh_token: set.refresh_token,
        new_grant: false,
        generation: cred.with_live(|l| l.generation) + 1,
        expires_at: Some(expires_ms.div_euclid(1000)),
        refreshed_at: started_ms.div_euclid(1000),
        next_refresh_at: Some(next_ms),
        unusable: None,
        forecast: crate::store::Forecast {
            at: forecast_at,
            warned: false,
        },
        ask_introspection,
    }
}

pub(super) fn margin_override(cred: &Credential) -> Option<u64> {
    match &cred.spec() {
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
            loaded_due(cred.kind, l, now)
        });
        if let Some(due) = due {
            let due = if due <= now {
                now + (spread_ms * random_unit()) as i64
            } else {
                due
            };
            shared.scheduler.schedule(&cred.name, due);
        }
        super::forecast::watch_warning(shared, &cred);
    }
}

/// When a loaded credential is next due (Unix ms), if ever.
pub(super) fn loaded_due(kind: Kind, l: &Live, now: i64) -> Option<i64> {
    if l.state != CredentialState::Ready {
        return None;
    }
    match kind {
        Kind::Bearer => None,
        Kind::OAuth2 if l.journal.in_doubt() => Some(now),
        Kind::OAuth2 if l.refresh_token.is_none() => {
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
