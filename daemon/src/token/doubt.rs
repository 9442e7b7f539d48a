//! Refresh tokens in doubt (docs/RULES.md, "In-doubt refreshes") and grants
//! that cannot be renewed: never send a refresh token whose fate is unknown.

use super::outcome::{Pace, set_state, transient};
use super::validity::{MIN_VALID_MS, not_usable, timeout, valid_for};
use crate::error::Error;
use crate::provider::{self, Endpoint};
use crate::state::Shared;
use crate::state::credential::{Credential, Journal};
use crate::state::metrics::Doubt;
use crate::store::GrantChange;
use std::sync::Arc;
use tokend_proto::{CredentialState, Secret};

/// Why a held refresh token is never sent again after a stop mid-refresh
/// when the provider offers no introspection.
pub(super) const STOPPED_IN_DOUBT: &str = "tokend stopped during a refresh; the provider may have rotated the refresh token, so it will not be sent again";

/// Why it is never sent again when introspection says it is dead.
pub(super) const ROTATED_IN_DOUBT: &str = "the provider rotated the refresh token during a refresh whose answer was lost (introspection says the held one is no longer active), so it will not be sent again";

/// A refresh sent without a known outcome: the held refresh token is now in
/// doubt. With introspection, it is asked about after a pause (the provider
/// may still be working on the request); without, it is never sent again.
pub(super) async fn no_answer(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    endpoint: &Endpoint<'_>,
    message: String,
) -> Result<(), Error> {
    cred.with_live(|l| l.journal = Journal::InDoubt);
    tracing::warn!(credential = %cred.name, "a refresh ended without an answer: {message}");
    if endpoint.introspection_url.is_none() {
        shared.count_doubt(cred, Doubt::NoIntrospection);
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
pub(super) async fn settle_doubt(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    refresh_token: &Secret,
) -> Result<(), Error> {
    if endpoint.introspection_url.is_none() {
        shared.count_doubt(cred, Doubt::NoIntrospection);
        return spent(shared, cred, STOPPED_IN_DOUBT).await;
    }
    let answer = provider::introspect(http, endpoint, refresh_token, timeout(shared)).await;
    let outcome = match &answer {
        Ok(i) if i.active => Doubt::Active,
        Ok(_) => Doubt::Rotated,
        Err(_) => Doubt::Unanswered,
    };
    shared.count_doubt(cred, outcome);
    match answer {
        Ok(i) if i.active => {
            tracing::info!(credential = %cred.name, "introspection: the refresh token in doubt is still active; refreshing");
            cred.with_live(|l| l.journal = Journal::Settled);
            Ok(())
        }
        Ok(_) => spent(shared, cred, ROTATED_IN_DOUBT).await,
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
pub(super) async fn spent(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    why: &str,
) -> Result<(), Error> {
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
pub(super) async fn without_refresh_token(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
) -> Result<(), Error> {
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
