//! The refresh transaction: one attempt per credential at a time, under its
//! refresh lock, from the journal mark through the provider's answer to the
//! commit (docs/RULES.md).

use super::commit::{Origin, commit_and_publish, save_uncommitted};
use super::doubt::{no_answer, settle_doubt, without_refresh_token};
use super::fleet::{self, Entry, Trigger};
use super::outcome::{Pace, permanent, transient};
use super::plan::token_update;
use super::validity::{not_usable, timeout};
use crate::error::Error;
use crate::provider::{self, Endpoint, Grant, ProviderError};
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::{StoreError, TokenUpdate, blocking};
use std::sync::Arc;
use tokend_proto::{CredentialSpec, CredentialState};

/// One refresh attempt, unless another attempt ran since the caller looked
/// (`seen_attempts`). Holds the credential's refresh lock throughout, and in
/// a fleet the cross-member lock too (`fleet.rs`).
pub async fn refresh(
    shared: Arc<Shared>,
    cred: Arc<Credential>,
    seen_attempts: u64,
    trigger: Trigger,
) -> Result<(), Error> {
    let _guard = cred.refresh_lock.lock().await;
    if !shared.registry.is_current(&cred) {
        return Err(Error::UnknownCredential(cred.name.to_string()));
    }
    let unsaved = cred.with_live(|l| l.journal.unsaved().is_some());
    let (attempts, state) = cred.with_live(|l| (l.attempts, l.state));
    if !unsaved && attempts != seen_attempts {
        // Someone else's attempt ran meanwhile: its outcome is ours.
        return cred
            .with_live(|l| l.last_error.clone())
            .map_or(Ok(()), |e| Err(Error::Provider(e.into())));
    }
    if !unsaved && state != CredentialState::Ready {
        return Err(not_usable(&cred));
    }
    let _slot = shared
        .refresh_slots
        .acquire()
        .await
        .map_err(|_| Error::Busy("shutting down".into()))?;
    let outcome = match fleet::enter(&shared, &cred, trigger).await {
        Entry::Done(outcome) => outcome,
        Entry::Proceed(_fleet) if unsaved => save_uncommitted(&shared, &cred).await,
        Entry::Proceed(_fleet) => attempt(&shared, &cred).await,
    };
    // Counted once the outcome is visible: anyone who looked before now
    // takes this attempt's outcome instead of starting another.
    cred.with_live(|l| l.attempts += 1);
    outcome
}

/// One attempt at a new token, by the credential's grant.
pub(super) async fn attempt(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<(), Error> {
    let http = match shared.http() {
        Ok(http) => http,
        Err(e) => return transient(shared, cred, e.to_string(), None, Pace::Normal).await,
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
pub(super) async fn send(
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
pub(super) async fn conclude(
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
pub(super) async fn refresh_grant(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
) -> Result<(), Error> {
    let Some(refresh_token) = cred.with_live(|l| l.refresh_token.clone()) else {
        return without_refresh_token(shared, cred).await;
    };
    if cred.with_live(|l| l.journal.in_doubt()) {
        settle_doubt(shared, cred, http, endpoint, &refresh_token).await?;
    }
    if let Err(e) = mark_in_flight(shared, cred).await {
        let message = format!("refresh not attempted, the store is not writable: {e}");
        return transient(shared, cred, message, None, Pace::Normal).await;
    }
    let grant = Grant::RefreshToken(&refresh_token);
    let result = send(shared, cred, http, endpoint, &grant).await;
    conclude(shared, cred, result, Some(endpoint)).await
}

/// Journals the refresh before the refresh token leaves the process.
async fn mark_in_flight(shared: &Arc<Shared>, cred: &Credential) -> Result<(), StoreError> {
    let store = shared.store.clone();
    let (name, incarnation, at) = (cred.name.clone(), cred.incarnation, shared.clock.now());
    blocking(move || store.mark_refresh_in_flight(&name, incarnation, at)).await
}
