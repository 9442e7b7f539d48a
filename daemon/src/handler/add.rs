//! `tokenctl add`: a new credential from a preset, discovery and flags,
//! checked, stored, and swapped in for the one it replaces.

use super::admin::wait_for_refresh;
use crate::config::access::Peer;
use crate::config::preset;
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::{Credential, Kind};
use crate::store::StoredCredential;
use crate::store::blocking;
use std::sync::Arc;
use tokend_proto::{
    AddCredential, AddKind, ClientCredentialsSpec, CredentialSpec, CredentialState, OAuth2Request,
    OAuth2Spec, Response, Secret, Upstream,
};

/// Adds (or, with `replace`, replaces) a credential for `peer`, its owner.
pub(super) async fn add_credential(
    shared: &Arc<Shared>,
    peer: &Peer,
    add: AddCredential,
) -> Result<Response, Error> {
    tokend_proto::validate_name(&add.name).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    check_description(&add.description)?;
    let spec = resolve_spec(shared, add.kind).await?;
    let spec = super::git_hosts::with_git_hosts(spec, add.git_hosts)?;
    let spec = super::upstream::with_upstream(spec, add.upstream)?;
    check_secret(&spec, &add.secret)?;
    let now = shared.clock.now();
    let stored = new_credential(add.name, add.description, spec, add.secret, peer.uid, now);
    let cred = install(shared, stored, add.replace).await?;
    let kind = cred.spec().kind();
    tracing::info!(credential = %cred.name, kind, owner = peer.uid, "credential added");
    if cred.kind == Kind::ClientCredentials {
        // Fetch the first token now, so the first `token` call is fast.
        shared.scheduler.schedule(&cred.name, now * 1000);
    }
    let next = match cred.kind {
        Kind::OAuth2 => format!("; run `tokenctl login {}` next", cred.name),
        _ => String::new(),
    };
    Ok(Response::Message(format!(
        "added {kind} credential {:?}{next}",
        cred.name
    )))
}

/// A description is one line of at most 1024 bytes.
pub(super) fn check_description(description: &str) -> Result<(), Error> {
    if description.len() > 1024 || description.contains(['\n', '\r']) {
        return Err(Error::InvalidArgument(
            "the description must be one line of at most 1024 bytes".into(),
        ));
    }
    Ok(())
}

/// The secret must be the bare value, and present unless the credential is
/// a public authorization-code client.
fn check_secret(spec: &CredentialSpec, secret: &Secret) -> Result<(), Error> {
    if secret.expose().trim() != secret.expose() || secret.expose().contains(char::is_control) {
        return Err(Error::InvalidArgument(
            "the secret has surrounding whitespace or control characters; it must be the bare value".into(),
        ));
    }
    let what = match spec {
        CredentialSpec::OAuth2(_) => return Ok(()),
        CredentialSpec::Bearer { .. } => "token",
        CredentialSpec::ClientCredentials(_) => "client secret",
    };
    if secret.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the {what} is empty; nothing was stored"
        )));
    }
    Ok(())
}

/// The row of a new credential: a bearer token is ready at once, an
/// authorization-code app needs a login, a client-credentials app fetches
/// its first token.
fn new_credential(
    name: String,
    description: String,
    spec: CredentialSpec,
    secret: Secret,
    owner_uid: u32,
    now: i64,
) -> StoredCredential {
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
    StoredCredential {
        name,
        description,
        spec,
        owner_uid,
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
        fence: crate::store::Fence::default(),
        change: 0,
        untrusted: false,
        forecast: Default::default(),
        names: None,
        incarnation: crate::store::new_incarnation(),
    }
}

/// Stores `stored` and swaps it in for any credential of that name.
///
/// A refresh of the credential being replaced finishes first (or, past the
/// wait, finds its writes fenced off): its tokens belong to the old
/// credential and must never land in the new one. Pending logins of the old
/// one are cancelled.
async fn install(
    shared: &Arc<Shared>,
    stored: StoredCredential,
    replace: bool,
) -> Result<Arc<Credential>, Error> {
    let old = replace.then(|| shared.registry.get(&stored.name)).flatten();
    let _old_refresh = match &old {
        Some(old) => wait_for_refresh(shared, old).await,
        None => None,
    };
    let store = shared.store.clone();
    let to_store = stored.clone();
    blocking(move || store.insert(&to_store, replace)).await?;
    let cred = Arc::new(Credential::from_stored(stored));
    if let Some(old) = shared.registry.remove(&cred.name) {
        shared.scheduler.unschedule(&old.name);
        shared.warnings.unschedule(&old.name);
        shared.logins.cancel(&old.name);
        shared.metrics.forget(&old);
        shared.announce_removed(&old);
    }
    shared.registry.insert(cred.clone());
    shared
        .events
        .publish(&cred.name, crate::state::events::Kind::Added);
    Ok(cred)
}

async fn resolve_spec(shared: &Shared, kind: AddKind) -> Result<CredentialSpec, Error> {
    match kind {
        AddKind::Bearer { check_url, preset } => {
            let check_url = match (check_url, &preset) {
                (Some(url), _) => Some(url),
                (None, Some(p)) => Some(preset::bearer_check_url(p)?.to_string()),
                (None, None) => None,
            };
            if let Some(url) = &check_url {
                crate::provider::http::validate_endpoint_url(url, "the check URL")?;
            }
            // The flags' `--api-url` goes over the preset's (`with_upstream`).
            let upstream = match preset {
                Some(p) => Some(Box::new(Upstream {
                    api_url: Some(preset::bearer_api_url(&p)?.to_string()),
                    retry_on: None,
                })),
                None => None,
            };
            Ok(CredentialSpec::Bearer {
                check_url: check_url.map(Into::into),
                git_hosts: Vec::new(),
                upstream,
            })
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
                    refresh_warn_before_secs: None,
                    endpoints: r.endpoints,
                    git_hosts: Vec::new(),
                    upstream: None,
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
        Some(name) => Some(preset::lookup(&config, name)?),
        None => None,
    };
    if req.client_id.trim().is_empty() {
        return Err(invalid("--client-id must not be empty".into()));
    }
    if let Some(uri) = &req.redirect_uri {
        crate::provider::http::validate_url(uri, "the redirect URI")?;
    }
    // After the cheap checks: discovery may fetch a document.
    let timeout = std::time::Duration::from_secs(config.refresh.http_timeout_secs);
    let http = || shared.http();
    let resolved =
        crate::handler::endpoints::resolve(&req, preset.as_ref(), needs_auth_url, http, timeout)
            .await?;
    let extra_params = extra_params(preset.as_ref(), req.extra_params)?;
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
        refresh_warn_before_secs: None,
        endpoints: resolved.endpoints,
        git_hosts: Vec::new(),
        upstream: None,
    })
}

/// The preset's extra authorize parameters, overridden by `--param`s; the
/// ones tokend sets itself cannot be overridden.
fn extra_params(
    preset: Option<&crate::config::PresetConfig>,
    given: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Error> {
    const RESERVED: &[&str] = &[
        "client_id",
        "redirect_uri",
        "response_type",
        "state",
        "code_challenge",
        "code_challenge_method",
        "scope",
    ];
    let mut params: Vec<(String, String)> = preset
        .map(|p| p.extra_params.clone().into_iter().collect())
        .unwrap_or_default();
    for (k, v) in given {
        if RESERVED.contains(&k.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "--param {k} is set by tokend itself and cannot be overridden"
            )));
        }
        params.retain(|(key, _)| *key != k);
        params.push((k, v));
    }
    Ok(params)
}
