//! Removing credentials and changing who may use them.

use super::known;
use crate::config::access::user_sid;
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::{blocking, names};
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{NamedPrincipal, Principal, Response};

/// Waits (bounded) for a refresh of `cred` in flight to end, and keeps
/// others out while the guard lives. Past the wait the caller goes on:
/// store writes are conditioned on the credential's incarnation, so a
/// refresh that outlives it cannot write into what replaces it.
pub(super) async fn wait_for_refresh<'a>(
    shared: &Shared,
    cred: &'a Credential,
) -> Option<tokio::sync::MutexGuard<'a, ()>> {
    let wait = Duration::from_secs(2 * shared.config().refresh.http_timeout_secs + 5);
    let guard = tokio::time::timeout(wait, cred.refresh_lock.lock())
        .await
        .ok();
    if guard.is_none() {
        tracing::warn!(credential = %cred.name, "a refresh is still in flight; going on without it (its result will be discarded)");
    }
    guard
}

pub(super) async fn remove(shared: &Arc<Shared>, name: &str) -> Result<Response, Error> {
    let cred = known(shared, name)?;
    let _refresh = wait_for_refresh(shared, &cred).await;
    let store = shared.store.clone();
    let (owned, incarnation) = (name.to_string(), cred.incarnation);
    if !blocking(move || store.remove(&owned, incarnation)).await? {
        return Err(Error::InvalidArgument(format!(
            "credential {name:?} was replaced meanwhile; nothing was removed (run `tokenctl rm {name}` again to remove the new one)"
        )));
    }
    if let Some(current) = shared.registry.remove(name) {
        if Arc::ptr_eq(&current, &cred) {
            shared.metrics.forget(&cred);
        } else {
            shared.registry.insert(current);
        }
    }
    shared.announce_removed(&cred);
    shared.scheduler.unschedule(name);
    shared.warnings.unschedule(name);
    shared.logins.cancel(name);
    tracing::info!(credential = %name, "credential removed");
    Ok(Response::Message(format!("removed credential {name:?}")))
}

/// The user or group a client named, as this host knows it (a look-up
/// that may be slow: off the async workers).
pub(super) async fn resolve(named: NamedPrincipal) -> Result<Principal, Error> {
    tokio::task::spawn_blocking(move || names::principal_named(&named))
        .await
        .map_err(|e| Error::Internal(format!("the name look-up failed: {e}")))?
        .map_err(Error::InvalidArgument)
}

pub(super) async fn change_allowed(
    shared: &Arc<Shared>,
    name: &str,
    principal: Principal,
    allow: bool,
) -> Result<Response, Error> {
    let cred = known(shared, name)?;
    if allow {
        names::check_allowable(principal).map_err(Error::InvalidArgument)?;
    }
    let store = shared.store.clone();
    let (owned, incarnation) = (name.to_string(), cred.incarnation);
    let list =
        blocking(move || store.change_allowed(&owned, incarnation, principal, allow)).await?;
    cred.with_live(|l| l.allowed = list);
    let who = match principal {
        Principal::User(u) => format!("user {}", user_sid(u).unwrap_or(u.to_string())),
        Principal::Group(g) => format!("group {g}"),
    };
    tracing::info!(credential = %name, principal = %who, allow, "allow list changed");
    let verb = if allow {
        "may now use"
    } else {
        "may no longer use"
    };
    Ok(Response::Message(format!(
        "{who} {verb} credential {name:?}"
    )))
}
