//! Turns one request from one peer into one response: access checks first,
//! then the operation. Every failure becomes a typed error with a sentence.

pub mod endpoints;

use crate::config::access::Peer;
use crate::config::preset;
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::StoredCredential;
use crate::store::blocking;
use crate::token::check;
use crate::{login, token};
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{
    AddCredential, AddKind, ClientCredentialsSpec, CredentialSpec, CredentialState, DaemonStatus,
    OAuth2Request, OAuth2Spec, Principal, Request, Response,
};

/// Handles one request. Never panics on client input; errors are answers.
pub async fn handle(shared: &Arc<Shared>, peer: &Peer, request: Request) -> Response {
    // Borrowed, not consumed: the error log below names the credential
    // without a copy of the name on every (successful) request.
    match dispatch(shared, peer, &request).await {
        Ok(response) => response,
        Err(e) => {
            let (verb, name) = (request.verb(), request.credential());
            if let Error::PermissionDenied(_) = e {
                tracing::warn!(uid = peer.uid, pid = ?peer.pid, request = verb, credential = ?name, "permission denied");
            } else {
                tracing::debug!(uid = peer.uid, request = verb, credential = ?name, error = %e, "request failed");
            }
            Response::Error(e.to_remote())
        }
    }
}

async fn dispatch(shared: &Arc<Shared>, peer: &Peer, request: &Request) -> Result<Response, Error> {
    match request {
        Request::Token {
            name,
            min_valid_secs,
        } => {
            let cred = usable(shared, peer, name)?;
            let reply = token::token(shared, &cred, *min_valid_secs).await?;
            Ok(Response::Token(reply))
        }
        Request::Reject { name, token } => {
            let cred = usable(shared, peer, name)?;
            let message = token::reject(shared, &cred, token.as_ref()).await?;
            Ok(Response::Message(message))
        }
        Request::Refresh { name } => {
            let cred = usable(shared, peer, name)?;
            Ok(Response::Message(
                token::force_refresh(shared, &cred).await?,
            ))
        }
        Request::Check { name } => {
            let cred = usable(shared, peer, name)?;
            Ok(Response::Check(check::run(shared, &cred).await?))
        }
        Request::Show { name } => {
            let cred = usable(shared, peer, name)?;
            Ok(Response::Credential(Box::new(
                cred.info(shared.clock.now()),
            )))
        }
        Request::List => Ok(Response::List(
            visible(shared, peer)
                .iter()
                .map(|c| c.info(shared.clock.now()))
                .collect(),
        )),
        Request::Status => Ok(Response::Status(status(shared, peer))),
        Request::Add(add) => {
            admin(shared, peer)?;
            add_credential(shared, peer, (**add).clone()).await
        }
        Request::Remove { name } => {
            admin(shared, peer)?;
            remove(shared, name).await
        }
        Request::Allow { name, principal } => {
            admin(shared, peer)?;
            change_allowed(shared, name, *principal, true).await
        }
        Request::Deny { name, principal } => {
            admin(shared, peer)?;
            change_allowed(shared, name, *principal, false).await
        }
        Request::LoginStart { name, redirect_uri } => {
            admin(shared, peer)?;
            let cred = known(shared, name)?;
            Ok(Response::Login(login::start(
                shared,
                &cred,
                redirect_uri.clone(),
                peer.uid,
            )?))
        }
        Request::LoginFinish {
            login_id,
            redirect_url,
        } => {
            admin(shared, peer)?;
            Ok(Response::Message(
                login::finish(shared, login_id, redirect_url, peer.uid).await?,
            ))
        }
    }
}

fn admin(shared: &Shared, peer: &Peer) -> Result<(), Error> {
    if shared.policy().is_admin(peer) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "uid {} may not change credentials (only the daemon's user, root or the admin group may)",
        peer.uid
    )))
}

fn known(shared: &Shared, name: &str) -> Result<Arc<Credential>, Error> {
    shared
        .registry
        .get(name)
        .ok_or_else(|| Error::UnknownCredential(name.to_string()))
}

/// The credential, if this peer may use it. An unknown name and a forbidden
/// one answer differently: hiding existence would only confuse admins, and
/// names are not secrets.
fn usable(shared: &Shared, peer: &Peer, name: &str) -> Result<Arc<Credential>, Error> {
    let cred = known(shared, name)?;
    let allowed = cred.with_live(|l| shared.policy().may_use(peer, cred.owner_uid, &l.allowed));
    if !allowed {
        return Err(Error::PermissionDenied(format!(
            "uid {} is not allowed to use credential {name:?} (an admin can run `tokenctl allow {name} --user USER`)",
            peer.uid
        )));
    }
    Ok(cred)
}

fn visible(shared: &Shared, peer: &Peer) -> Vec<Arc<Credential>> {
    let policy = shared.policy();
    shared
        .registry
        .all()
        .into_iter()
        .filter(|c| c.with_live(|l| policy.may_use(peer, c.owner_uid, &l.allowed)))
        .collect()
}

fn status(shared: &Shared, peer: &Peer) -> DaemonStatus {
    let now = shared.clock.now();
    DaemonStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: shared.started.elapsed().as_secs(),
        socket: shared.paths.socket.display().to_string(),
        database: shared.paths.db.display().to_string(),
        connections: shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        credentials: visible(shared, peer)
            .iter()
            .map(|c| c.summary(now))
            .collect(),
    }
}

async fn add_credential(
    shared: &Arc<Shared>,
    peer: &Peer,
    add: AddCredential,
) -> Result<Response, Error> {
    tokend_proto::validate_name(&add.name).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if add.description.len() > 1024 || add.description.contains(['\n', '\r']) {
        return Err(Error::InvalidArgument(
            "the description must be one line of at most 1024 bytes".into(),
        ));
    }
    let spec = resolve_spec(shared, add.kind).await?;
    let secret = add.secret;
    if secret.expose().trim() != secret.expose() || secret.expose().contains(char::is_control) {
        return Err(Error::InvalidArgument(
            "the secret has surrounding whitespace or control characters; it must be the bare value".into(),
        ));
    }
    let needs_secret = !matches!(spec, CredentialSpec::OAuth2(_));
    if secret.is_empty() && needs_secret {
        let what = if let CredentialSpec::Bearer { .. } = spec {
            "token"
        } else {
            "client secret"
        };
        return Err(Error::InvalidArgument(format!(
            "the {what} is empty; nothing was stored"
        )));
    }
    let now = shared.clock.now();
    let (access_token, client_secret, state, generation) = match spec {
        CredentialSpec::Bearer { .. } => (Some(secret), None, CredentialState::Ready, 1),
        CredentialSpec::OAuth2(_) => (
            None,
            Some(secret).filter(|s| !s.is_empty()),
            CredentialState::NeedsLogin,
            0,
        ),
        CredentialSpec::ClientCredentials(_) => (None, Some(secret), CredentialState::Ready, 0),
    };
    let stored = StoredCredential {
        name: add.name.clone(),
        description: add.description,
        spec,
        owner_uid: peer.uid,
        allowed: Vec::new(),
        client_secret,
        access_token,
        refresh_token: None,
        generation,
        expires_at: None,
        state,
        reason: (state == CredentialState::NeedsLogin).then(|| "not logged in yet".to_string()),
        created_at: now,
        last_refresh_at: None,
        last_use_at: None,
        next_refresh_at: None,
        last_error: None,
        last_check: None,
        refresh_interrupted: false,
        incarnation: crate::store::new_incarnation(),
    };
    // A refresh of the credential being replaced finishes first (or, past
    // the wait, finds its writes fenced off): its tokens belong to the old
    // credential and must never land in the new one.
    let old = add
        .replace
        .then(|| shared.registry.get(&stored.name))
        .flatten();
    let _old_refresh = match &old {
        Some(old) => wait_for_refresh(shared, old).await,
        None => None,
    };
    let store = shared.store.clone();
    let to_store = stored.clone();
    let replace = add.replace;
    blocking(move || store.insert(&to_store, replace)).await?;
    let cred = Arc::new(Credential::from_stored(stored));
    if let Some(old) = shared.registry.remove(&cred.name) {
        shared.scheduler.unschedule(&old.name);
        // A login started for the old credential must not finish into this one.
        shared.logins.cancel(&old.name);
    }
    shared.registry.insert(cred.clone());
    tracing::info!(credential = %cred.name, kind = cred.spec.kind(), owner = peer.uid, "credential added");
    if let CredentialSpec::ClientCredentials(_) = cred.spec {
        // Fetch the first token now, so the first `token` call is fast.
        shared.scheduler.schedule(&cred.name, now * 1000);
    }
    let next = match cred.spec {
        CredentialSpec::OAuth2(_) => format!("; run `tokenctl login {}` next", cred.name),
        _ => String::new(),
    };
    Ok(Response::Message(format!(
        "added {} credential {:?}{next}",
        cred.spec.kind(),
        cred.name
    )))
}

async fn resolve_spec(shared: &Shared, kind: AddKind) -> Result<CredentialSpec, Error> {
    let invalid = Error::InvalidArgument;
    match kind {
        AddKind::Bearer { check_url, preset } => {
            let check_url = match (check_url, preset) {
                (Some(url), _) => Some(url),
                (None, Some(p)) => Some(preset::bearer_check_url(&p).map_err(invalid)?.to_string()),
                (None, None) => None,
            };
            if let Some(url) = &check_url {
                crate::provider::http::validate_endpoint_url(url, "the check URL")
                    .map_err(invalid)?;
            }
            Ok(CredentialSpec::Bearer { check_url })
        }
        AddKind::OAuth2(req) => {
            let r = resolve_oauth(shared, req, true).await?;
            Ok(CredentialSpec::OAuth2(Box::new(r)))
        }
        AddKind::ClientCredentials(req) => {
            let r = resolve_oauth(shared, req, false).await?;
            Ok(CredentialSpec::ClientCredentials(Box::new(
                ClientCredentialsSpec {
                    token_url: r.token_url,
                    client_id: r.client_id,
                    scopes: r.scopes,
                    client_auth: r.client_auth,
                    refresh_margin_secs: None,
                    endpoints: r.endpoints,
                },
            )))
        }
    }
}

/// Applies a preset, the issuer's discovery document and the explicit
/// overrides (flag > discovery > preset, see [`crate::handler::endpoints`]), and
/// validates the result.
async fn resolve_oauth(
    shared: &Shared,
    req: OAuth2Request,
    needs_auth_url: bool,
) -> Result<OAuth2Spec, Error> {
    let invalid = Error::InvalidArgument;
    let config = shared.config();
    let preset = match &req.preset {
        Some(name) => Some(preset::lookup(&config, name).map_err(invalid)?),
        None => None,
    };
    if req.client_id.trim().is_empty() {
        return Err(invalid("--client-id must not be empty".into()));
    }
    if let Some(uri) = &req.redirect_uri {
        crate::provider::http::validate_url(uri, "the redirect URI").map_err(invalid)?;
    }
    // After the cheap checks: discovery may fetch a document.
    let timeout = std::time::Duration::from_secs(config.refresh.http_timeout_secs);
    let http = || shared.http();
    let resolved =
        crate::handler::endpoints::resolve(&req, preset.as_ref(), needs_auth_url, http, timeout)
            .await?;
    let mut extra_params: Vec<(String, String)> = preset
        .as_ref()
        .map(|p| p.extra_params.clone().into_iter().collect())
        .unwrap_or_default();
    for (k, v) in req.extra_params {
        const RESERVED: &[&str] = &[
            "client_id",
            "redirect_uri",
            "response_type",
            "state",
            "code_challenge",
            "code_challenge_method",
            "scope",
        ];
        if RESERVED.contains(&k.as_str()) {
            return Err(invalid(format!(
                "--param {k} is set by tokend itself and cannot be overridden"
            )));
        }
        extra_params.retain(|(key, _)| *key != k);
        extra_params.push((k, v));
    }
    let scopes = if req.scopes.is_empty() {
        preset
            .as_ref()
            .map(|p| p.scopes.clone())
            .unwrap_or_default()
    } else {
        req.scopes
    };
    Ok(OAuth2Spec {
        auth_url: resolved.auth_url,
        token_url: resolved.token_url,
        client_id: req.client_id,
        scopes,
        redirect_uri: req.redirect_uri,
        client_auth: req.client_auth.unwrap_or_default(),
        pkce: req.pkce,
        extra_params,
        refresh_margin_secs: None,
        endpoints: resolved.endpoints,
    })
}

/// Waits (bounded) for a refresh of `cred` in flight to end, and keeps
/// others out while the guard lives. Past the wait the caller goes on:
/// store writes are conditioned on the credential's incarnation, so a
/// refresh that outlives it cannot write into what replaces it.
async fn wait_for_refresh<'a>(
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

async fn remove(shared: &Arc<Shared>, name: &str) -> Result<Response, Error> {
    let cred = known(shared, name)?;
    let _refresh = wait_for_refresh(shared, &cred).await;
    let store = shared.store.clone();
    let (owned, incarnation) = (name.to_string(), cred.incarnation);
    if !blocking(move || store.remove(&owned, incarnation)).await? {
        return Err(Error::InvalidArgument(format!(
            "credential {name:?} was replaced meanwhile; nothing was removed (run `tokenctl rm {name}` again to remove the new one)"
        )));
    }
    if let Some(current) = shared.registry.remove(name)
        && !Arc::ptr_eq(&current, &cred)
    {
        shared.registry.insert(current);
    }
    shared.scheduler.unschedule(name);
    shared.logins.cancel(name);
    tracing::info!(credential = %name, "credential removed");
    Ok(Response::Message(format!("removed credential {name:?}")))
}

async fn change_allowed(
    shared: &Arc<Shared>,
    name: &str,
    principal: Principal,
    allow: bool,
) -> Result<Response, Error> {
    let cred = known(shared, name)?;
    let mut list = cred.with_live(|l| l.allowed.clone());
    list.retain(|p| *p != principal);
    if allow {
        list.push(principal);
        list.sort();
    }
    let store = shared.store.clone();
    let (owned, saved) = (name.to_string(), list.clone());
    blocking(move || store.save_allowed(&owned, &saved)).await?;
    cred.with_live(|l| l.allowed = list);
    let who = match principal {
        Principal::User(u) => format!("user {u}"),
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
