//! The authorization-code login (docs/DESIGN.md §3): build the authorize URL with a
//! fresh `state` (and PKCE verifier), then complete from the redirect URL.
//!
//! A pending login is bound to its `state` and to the very credential it
//! started for: a redirect without the right `state` (anyone on the machine
//! can hit the loopback listener) changes nothing, and a credential removed
//! or replaced meanwhile is never completed into.
//!
//! The device authorization grant (RFC 8628) is in `device.rs`.

pub mod device;

use crate::error::Error;
use crate::provider::{self, Grant, TokenSet};
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::state::logins::Pending;
use crate::token::{Origin, commit_and_publish, token_update};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokend_proto::{CredentialSpec, LoginChallenge, OAuth2Spec, Secret};

/// Seconds `LoginFinish` may take beyond one provider request: the wait for
/// a refresh in flight on the same credential, and the commit.
const FINISH_MARGIN_SECS: u64 = 10;

fn gone(name: &str) -> Error {
    Error::InvalidArgument(format!(
        "credential {name:?} was removed or replaced since this login started; run `tokenctl login {name}` again"
    ))
}

/// `n` bytes from the OS RNG, base64url without padding.
fn random_token(n: usize) -> Result<String, Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness from the OS: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Starts a login: the authorize URL the user must open.
pub fn start(
    shared: &Shared,
    cred: &Arc<Credential>,
    redirect_override: Option<String>,
    uid: u32,
) -> Result<LoginChallenge, Error> {
    crate::token::trusted(cred)?;
    let spec = cred.spec();
    let CredentialSpec::OAuth2(spec) = &spec else {
        return Err(Error::InvalidArgument(format!(
            "credential {:?} is {}: only oauth2 (authorization code) credentials log in",
            cred.name,
            spec.kind()
        )));
    };
    // Better said now than after the user has been through the browser.
    shared.http()?;
    let redirect_uri = redirect_override.or_else(|| spec.redirect_uri.clone()).ok_or_else(|| {
        Error::InvalidArgument("no redirect URI: add the credential with --redirect-uri, or let tokenctl run a loopback listener".into())
    })?;
    crate::provider::http::validate_url(&redirect_uri, "the redirect URI")?;
    let limits = shared.config().limits.clone();
    let state = random_token(24)?;
    let verifier = spec.pkce.then(|| random_token(32)).transpose()?;
    let login_id = random_token(16)?;
    let url = authorize_url(spec, &redirect_uri, &state, verifier.as_deref())?;
    let mut logins = shared.logins.lock();
    let now = Instant::now();
    logins.retain(|_, p| p.expires > now);
    if logins.len() >= limits.max_logins {
        return Err(Error::Busy(format!(
            "{} logins are already waiting; try again later",
            logins.len()
        )));
    }
    logins.insert(
        login_id.clone(),
        Pending {
            name: cred.name.to_string(),
            cred: Arc::downgrade(cred),
            state: Secret::new(state),
            verifier: verifier.map(Secret::new),
            redirect_uri: redirect_uri.clone(),
            expires: now + Duration::from_secs(limits.login_timeout_secs),
            uid,
        },
    );
    tracing::info!(credential = %cred.name, uid, "login started");
    Ok(LoginChallenge {
        login_id,
        authorize_url: url.to_string(),
        redirect_uri,
        expires_at: shared.clock.now() + limits.login_timeout_secs as i64,
    })
}

/// The URL the user opens: the credential's authorize URL with the
/// request's parameters (RFC 6749 §4.1.1, RFC 7636 §4.3 for PKCE) and the
/// credential's extra ones.
fn authorize_url(
    spec: &OAuth2Spec,
    redirect_uri: &str,
    state: &str,
    verifier: Option<&str>,
) -> Result<url::Url, Error> {
    let mut url = url::Url::parse(&spec.auth_url)
        .map_err(|e| Error::InvalidArgument(format!("the authorize URL is invalid: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        q.append_pair("client_id", &spec.client_id);
        q.append_pair("redirect_uri", redirect_uri);
        q.append_pair("state", state);
        if !spec.scopes.is_empty() {
            q.append_pair("scope", &spec.scopes.join(" "));
        }
        if let Some(v) = verifier {
            q.append_pair(
                "code_challenge",
                &URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())),
            );
            q.append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &spec.extra_params {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

/// What the provider put on the redirect.
enum Redirect {
    Code {
        code: String,
        state: String,
    },
    Refused {
        error: String,
        description: Option<String>,
        state: Option<String>,
    },
}

impl Redirect {
    /// The `state` the redirect carries, if any.
    fn state(&self) -> Option<&str> {
        match self {
            Redirect::Code { state, .. } => Some(state),
            Redirect::Refused { state, .. } => state.as_deref(),
        }
    }
}

fn parse_redirect(redirect_url: &str) -> Result<Redirect, Error> {
    let url = url::Url::parse(redirect_url.trim()).map_err(|e| {
        Error::InvalidArgument(format!("that is not the redirect URL ({e}); paste the whole address from the browser's address bar"))
    })?;
    let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let clean = |s: &str| {
        s.chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect::<String>()
    };
    if let Some(error) = params.get("error") {
        return Ok(Redirect::Refused {
            error: clean(error),
            description: params.get("error_description").map(|d| clean(d)),
            state: params.get("state").cloned(),
        });
    }
    match (params.get("code"), params.get("state")) {
        (Some(code), Some(state)) => Ok(Redirect::Code { code: code.clone(), state: state.clone() }),
        (None, _) => Err(Error::InvalidArgument("the redirect URL carries no `code`; paste the URL the browser ended on after you approved".into())),
        (Some(_), None) => Err(Error::InvalidArgument("the redirect URL carries no `state`; it was refused".into())),
    }
}

/// Completes a login from the URL the provider redirected to. Answers
/// within `refresh.http_timeout_secs` + [`FINISH_MARGIN_SECS`]: neither a
/// refresh holding the credential's lock nor a slow provider keeps the
/// client waiting without bound.
pub async fn finish(
    shared: &Arc<Shared>,
    login_id: &str,
    redirect_url: &str,
    uid: u32,
) -> Result<String, Error> {
    let redirect = parse_redirect(redirect_url)?;
    let (pending, cred) = take_pending(shared, login_id, &redirect, uid)?;
    let code = match redirect {
        Redirect::Refused {
            error, description, ..
        } => {
            tracing::warn!(credential = %pending.name, error = %error, "login refused by the provider");
            let detail = description.map(|d| format!(" ({d})")).unwrap_or_default();
            return Err(Error::Provider(format!(
                "the provider refused the login: {error}{detail}"
            )));
        }
        Redirect::Code { code, .. } => code,
    };
    let http_timeout = Duration::from_secs(shared.config().refresh.http_timeout_secs);
    let budget = http_timeout + Duration::from_secs(FINISH_MARGIN_SECS);
    let deadline = tokio::time::Instant::now() + budget;
    let name = pending.name.clone();
    // The exchange and its commit run in their own task: neither a client
    // that hangs up nor the deadline below may cancel them half-way between
    // the provider's answer and the commit.
    let shared = shared.clone();
    let lock_deadline = deadline - http_timeout;
    let task =
        tokio::spawn(async move { exchange(&shared, &cred, &code, &pending, lock_deadline).await });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(joined) => joined.map_err(|e| Error::Internal(format!("login task failed: {e}")))?,
        Err(_) => {
            tracing::warn!(credential = %name, "login still running at its deadline; it goes on in the background");
            Err(Error::Timeout(format!(
                "the login of credential {name:?} did not finish within {} s; the code exchange goes on in the background: check `tokenctl show {name}` and run `tokenctl login {name}` again if it is not ready",
                budget.as_secs()
            )))
        }
    }
}

/// Takes the pending login `redirect` answers, with the credential it will
/// complete into. A redirect without this login's `state` leaves the login
/// in place: it is not the provider's answer, and the real one may follow.
fn take_pending(
    shared: &Shared,
    login_id: &str,
    redirect: &Redirect,
    uid: u32,
) -> Result<(Pending, Arc<Credential>), Error> {
    let pending = {
        let mut logins = shared.logins.lock();
        let Some(p) = logins.get(login_id) else {
            return Err(Error::InvalidArgument(
                "no such login in progress (it may have expired, or its credential was removed); run `tokenctl login NAME` again"
                    .into(),
            ));
        };
        if p.uid != uid && uid != 0 {
            return Err(Error::PermissionDenied(format!(
                "uid {uid} did not start this login"
            )));
        }
        if p.expires <= Instant::now() {
            logins.remove(login_id);
            return Err(Error::Timeout(
                "the login session expired; run `tokenctl login NAME` again".into(),
            ));
        }
        let answers_this_login = redirect
            .state()
            .is_some_and(|s| s.as_bytes() == p.state.expose().as_bytes());
        if !answers_this_login {
            tracing::warn!(credential = %p.name, uid, "login redirect without this login's state ignored");
            return Err(Error::InvalidArgument(match redirect {
                Redirect::Code { .. } => "the redirect's `state` does not match this login: refused (was the URL from another login attempt?)".into(),
                Redirect::Refused { .. } => "the error redirect does not carry this login's `state`: ignored, the login goes on".into(),
            }));
        }
        logins.remove(login_id).expect("checked above")
    };
    let cred = pending
        .cred
        .upgrade()
        .filter(|c| shared.registry.is_current(c))
        .ok_or_else(|| gone(&pending.name))?;
    Ok((pending, cred))
}

/// Exchanges the code and commits the tokens, under the credential's refresh
/// lock. Gives up before contacting the provider if the lock is not had by
/// `lock_deadline` or the credential was removed or replaced meanwhile.
async fn exchange(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    code: &str,
    pending: &Pending,
    lock_deadline: tokio::time::Instant,
) -> Result<String, Error> {
    crate::token::trusted(cred)?;
    let spec = cred.spec();
    let (CredentialSpec::OAuth2(_), Some(endpoint)) = (&spec, cred.endpoint(&spec)) else {
        return Err(Error::Internal(
            "credential kind changed during login".into(),
        ));
    };
    let Ok(_guard) = tokio::time::timeout_at(lock_deadline, cred.refresh_lock.lock()).await else {
        return Err(Error::Timeout(format!(
            "credential {:?} is busy with a refresh that did not end within {FINISH_MARGIN_SECS} s; run `tokenctl login {}` again",
            cred.name, cred.name
        )));
    };
    // `rm` takes this lock before it removes: checked under it, the
    // credential stays the registered one until the commit below.
    if !shared.registry.is_current(cred) {
        return Err(gone(&cred.name));
    }
    let policy = shared.config().refresh.clone();
    let grant = Grant::AuthorizationCode {
        code,
        redirect_uri: &pending.redirect_uri,
        verifier: pending.verifier.as_ref(),
    };
    let started_ms = shared.clock.now_ms();
    let set = provider::request(
        shared.http()?,
        &endpoint,
        &grant,
        Duration::from_secs(policy.http_timeout_secs),
    )
    .await
    .map_err(|e| Error::Provider(format!("the code exchange failed: {e}")))?;
    commit_login(shared, cred, set, started_ms).await
}

/// Commits the token set a login obtained (code exchange or device grant)
/// and publishes it, like a refresh (`Origin::Login`). The caller holds the
/// credential's refresh lock and checked that it is still the registered
/// one. Answers the sentence the user sees.
async fn commit_login(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    set: TokenSet,
    started_ms: i64,
) -> Result<String, Error> {
    let policy = shared.config().refresh.clone();
    let has_refresh = set.refresh_token.is_some();
    let update = token_update(cred, set, started_ms, &policy);
    let expires = update.expires_at;
    commit_and_publish(shared, cred, update, Origin::Login).await?;
    tracing::info!(credential = %cred.name, "login complete");
    let warning = if has_refresh {
        ""
    } else {
        " (the provider issued no refresh token: you will need to log in again when it expires)"
    };
    let valid = expires
        .map(|e| format!(", token valid for {} s", e - shared.clock.now()))
        .unwrap_or_default();
    Ok(format!(
        "logged in: credential {:?} is ready{valid}{warning}",
        cred.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_with_extra_parameters_is_accepted() {
        match parse_redirect(
            "http://127.0.0.1:5000/callback?code=abc&state=xyz&iss=http%3A%2F%2Fidp",
        )
        .unwrap()
        {
            Redirect::Code { code, state } => {
                assert_eq!((code.as_str(), state.as_str()), ("abc", "xyz"))
            }
            Redirect::Refused { .. } => panic!("expected a code"),
        }
    }

    #[test]
    fn error_redirect_is_reported() {
        match parse_redirect("http://127.0.0.1/cb?error=access_denied&state=s").unwrap() {
            Redirect::Refused { error, .. } => assert_eq!(error, "access_denied"),
            Redirect::Code { .. } => panic!("expected an error"),
        }
    }

    #[test]
    fn garbage_is_refused_with_advice() {
        let Err(e) = parse_redirect("not a url") else {
            panic!("accepted garbage")
        };
        assert!(e.to_string().contains("address bar"));
    }
}
