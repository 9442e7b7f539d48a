//! The device authorization grant (RFC 8628): for a host without a browser.
//!
//! `start` asks the credential's device authorization endpoint for a device
//! code and a user code, keeps the device code (it never leaves the daemon)
//! and answers what the user must open and type. `finish` polls the token
//! endpoint with the device code until the provider answers with tokens or
//! an error that ends the login, the device code expires, or the client's
//! deadline passes. Each poll runs under the credential's refresh lock and
//! checks that the credential is still the one the login started for, so
//! the grant is committed exactly like a code-flow login's, and a credential
//! removed or replaced meanwhile (which cancels the login) is never
//! completed into.

use super::{commit_login, gone, random_token};
use crate::error::Error;
use crate::provider::{self, Grant, ProviderError};
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::state::logins::DevicePending;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokend_proto::{CredentialSpec, DeviceChallenge, Secret};

/// The longest a device login waits, whatever the provider's `expires_in`.
const MAX_LIFETIME_SECS: u64 = 1800;
/// RFC 8628 §3.5: every `slow_down` adds five seconds to the interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest interval honoured between two polls.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest: a provider asking for 0 s is not polled in a busy loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a poll waits for a refresh in flight on the same credential.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Starts a device login: asks the provider for the codes.
pub async fn start(
    shared: &Shared,
    cred: &Arc<Credential>,
    uid: u32,
) -> Result<DeviceChallenge, Error> {
    crate::token::trusted(cred)?;
    let settings = cred.spec();
    let CredentialSpec::OAuth2(spec) = &settings else {
        return Err(Error::InvalidArgument(format!(
            "credential {:?} is {}: only oauth2 credentials log in",
            cred.name,
            settings.kind()
        )));
    };
    let Some(url) = spec.endpoints.device_authorization_url.as_deref() else {
        return Err(Error::InvalidArgument(format!(
            "credential {name:?} has no device authorization endpoint: add it again with --device-auth-url URL (or --issuer, if the provider's discovery document lists one), or log in without --device",
            name = cred.name
        )));
    };
    let endpoint = cred
        .endpoint(&settings)
        .ok_or_else(|| Error::Internal("an oauth2 credential without a token endpoint".into()))?;
    let limits = shared.config().limits.clone();
    // Said before anything is asked of the provider.
    if waiting(shared) >= limits.max_logins {
        return Err(Error::Busy(format!(
            "{} logins are already waiting; try again later",
            waiting(shared)
        )));
    }
    let timeout = Duration::from_secs(shared.config().refresh.http_timeout_secs);
    let auth =
        provider::device_authorization(shared.http()?, url, &endpoint, &spec.scopes, timeout)
            .await
            .map_err(|e| Error::Provider(format!("the device authorization failed: {e}")))?;
    let login_id = random_token(16)?;
    let lifetime = auth.expires_in.min(MAX_LIFETIME_SECS);
    let interval = Duration::from_secs(auth.interval).clamp(MIN_INTERVAL, MAX_INTERVAL);
    shared.logins.devices().insert(
        login_id.clone(),
        DevicePending {
            name: cred.name.to_string(),
            cred: Arc::downgrade(cred),
            device_code: auth.device_code,
            interval,
            expires: Instant::now() + Duration::from_secs(lifetime),
            uid,
            polling: false,
        },
    );
    tracing::info!(credential = %cred.name, uid, "device login started");
    Ok(DeviceChallenge {
        login_id,
        verification_uri: auth.verification_uri,
        verification_uri_complete: auth.verification_uri_complete,
        user_code: auth.user_code,
        expires_at: shared.clock.now() + lifetime as i64,
        interval_secs: interval.as_secs() as u32,
    })
}

/// Logins waiting, of both kinds; drops the expired device logins nobody
/// polls any more.
fn waiting(shared: &Shared) -> usize {
    let codes = shared.logins.lock().len();
    let mut devices = shared.logins.devices();
    let now = Instant::now();
    devices.retain(|_, p| p.polling || p.expires > now);
    codes + devices.len()
}

/// Waits for the user's approval, polling the token endpoint, for at most
/// `timeout_secs` and never past the device code's expiry. Answers the
/// sentence the user sees, or the error that ended the login (naming the
/// provider's `access_denied` or `expired_token`).
pub async fn finish(
    shared: &Arc<Shared>,
    login_id: &str,
    timeout_secs: u32,
    uid: u32,
) -> Result<String, Error> {
    let claimed = claim(shared, login_id, uid)?;
    let wait = u64::from(timeout_secs).min(MAX_LIFETIME_SECS);
    let deadline = Instant::now() + Duration::from_secs(wait);
    // The polls and the commit run in their own task: a client that hangs
    // up never cancels one between the provider's answer and the commit.
    // The task ends by itself at the deadline or the device code's expiry.
    let shared = shared.clone();
    let id = login_id.to_string();
    let task = tokio::spawn(async move {
        let outcome = poll_until(&shared, &id, &claimed, deadline).await;
        shared.logins.devices().remove(&id);
        outcome
    });
    task.await
        .map_err(|e| Error::Internal(format!("device login task failed: {e}")))?
}

/// What `finish` polls with, taken from the pending login.
struct Claimed {
    name: String,
    cred: Arc<Credential>,
    device_code: Secret,
    interval: Duration,
    expires: Instant,
}

/// Marks the pending device login as being polled, after checking who asks.
fn claim(shared: &Shared, login_id: &str, uid: u32) -> Result<Claimed, Error> {
    let mut devices = shared.logins.devices();
    let Some(p) = devices.get_mut(login_id) else {
        return Err(Error::InvalidArgument(
            "no such device login in progress (it may have expired, or its credential was removed); run `tokenctl login NAME --device` again"
                .into(),
        ));
    };
    if p.uid != uid && uid != 0 {
        return Err(Error::PermissionDenied(format!(
            "uid {uid} did not start this login"
        )));
    }
    if p.polling {
        return Err(Error::InvalidArgument(
            "this device login is already being waited for".into(),
        ));
    }
    let name = p.name.clone();
    let Some(cred) = p.cred.upgrade().filter(|c| shared.registry.is_current(c)) else {
        devices.remove(login_id);
        return Err(gone(&name));
    };
    p.polling = true;
    Ok(Claimed {
        name,
        cred,
        device_code: p.device_code.clone(),
        interval: p.interval,
        expires: p.expires,
    })
}

async fn poll_until(
    shared: &Arc<Shared>,
    login_id: &str,
    claimed: &Claimed,
    deadline: Instant,
) -> Result<String, Error> {
    let name = &claimed.name;
    let mut interval = claimed.interval;
    loop {
        let next = Instant::now() + interval;
        if next >= claimed.expires {
            tokio::time::sleep_until(claimed.expires.into()).await;
            return Err(Error::Provider(format!(
                "the device code expired (expired_token) before the login of credential {name:?} was approved; run `tokenctl login {name} --device` again"
            )));
        }
        if next >= deadline {
            tokio::time::sleep_until(deadline.into()).await;
            return Err(Error::Timeout(format!(
                "the device login of credential {name:?} was not approved within the timeout; run `tokenctl login {name} --device` again (with a longer --timeout)"
            )));
        }
        tokio::time::sleep_until(next.into()).await;
        if !shared.logins.devices().contains_key(login_id) {
            return Err(gone(name));
        }
        match poll(shared, &claimed.cred, &claimed.device_code).await? {
            Ok(message) => return Ok(message),
            Err(answer) => match after(&answer, interval, name) {
                Next::Poll(longer) => {
                    tracing::debug!(credential = %name, answer = %answer, "device login still waiting");
                    interval = longer;
                }
                Next::Stop(e) => {
                    tracing::warn!(credential = %name, error = %e, "device login ended");
                    return Err(e);
                }
            },
        }
    }
}

/// One poll of the token endpoint, under the credential's refresh lock;
/// tokens are committed before the lock is released. `Ok(Err(_))` is the
/// provider's answer without tokens, for [`after`] to judge.
async fn poll(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    device_code: &Secret,
) -> Result<Result<String, ProviderError>, Error> {
    crate::token::trusted(cred)?;
    let spec = cred.spec();
    let endpoint = cred
        .endpoint(&spec)
        .ok_or_else(|| Error::Internal("credential kind changed during login".into()))?;
    let Ok(_guard) = tokio::time::timeout(LOCK_WAIT, cred.refresh_lock.lock()).await else {
        // A refresh of the previous grant is slow: poll again later.
        return Ok(Err(ProviderError::Transient {
            message: "the credential is busy with a refresh".into(),
            retry_after: None,
        }));
    };
    // `rm` and `add --replace` take this lock before they remove: checked
    // under it, the credential stays the registered one until the commit.
    if !shared.registry.is_current(cred) {
        return Err(gone(&cred.name));
    }
    let timeout = Duration::from_secs(shared.config().refresh.http_timeout_secs);
    let started_ms = shared.clock.now_ms();
    let answer = provider::request(
        shared.http()?,
        &endpoint,
        &Grant::DeviceCode(device_code),
        timeout,
    )
    .await;
    match answer {
        Ok(set) => Ok(Ok(commit_login(shared, cred, set, started_ms).await?)),
        Err(e) => Ok(Err(e)),
    }
}

/// What a poll's answer without tokens means.
#[derive(Debug)]
enum Next {
    /// Poll again after this interval (which stays for the later polls).
    Poll(Duration),
    /// The login is over.
    Stop(Error),
}

/// Judges a poll's answer (RFC 8628 §3.5): `authorization_pending` keeps
/// the interval, `slow_down` adds five seconds, a transient failure (no
/// connection, 5xx, 429, a timeout) doubles it (at least the provider's
/// `Retry-After`); `access_denied`, `expired_token` and every other error
/// end the login, named.
fn after(answer: &ProviderError, interval: Duration, name: &str) -> Next {
    let again = format!("run `tokenctl login {name} --device` again");
    match answer {
        ProviderError::Permanent { error, .. } if error == "authorization_pending" => {
            Next::Poll(interval)
        }
        ProviderError::Permanent { error, .. } if error == "slow_down" => {
            Next::Poll((interval + SLOW_DOWN_STEP).min(MAX_INTERVAL))
        }
        ProviderError::Permanent { error, .. } if error == "access_denied" => {
            Next::Stop(Error::Provider(format!(
                "the device login of credential {name:?} was denied (access_denied); {again} to retry"
            )))
        }
        ProviderError::Permanent { error, .. } if error == "expired_token" => {
            Next::Stop(Error::Provider(format!(
                "the device code expired (expired_token) before the login of credential {name:?} was approved; {again}"
            )))
        }
        ProviderError::Unusable { .. } => Next::Stop(Error::Provider(format!(
            "the device login of credential {name:?} got tokens tokend cannot serve: {answer}; {again}"
        ))),
        ProviderError::Permanent { .. } => Next::Stop(Error::Provider(format!(
            "the device login of credential {name:?} failed: {answer}; {again}"
        ))),
        ProviderError::Unsent { .. } => Next::Poll((interval * 2).min(MAX_INTERVAL)),
        ProviderError::Transient { retry_after, .. } => {
            let doubled = (interval * 2).max(retry_after.unwrap_or_default());
            Next::Poll(doubled.min(MAX_INTERVAL))
        }
        // The poll may have reached the provider; had it issued tokens, the
        // next poll says so (`invalid_grant`) and ends the login.
        ProviderError::Unknown { .. } => Next::Poll((interval * 2).min(MAX_INTERVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(error: &str) -> ProviderError {
        ProviderError::Permanent {
            error: error.into(),
            description: None,
        }
    }

    fn polls_after(answer: &ProviderError, secs: u64) -> Duration {
        match after(answer, Duration::from_secs(secs), "up") {
            Next::Poll(d) => d,
            Next::Stop(e) => panic!("stopped: {e}"),
        }
    }

    fn stops_with(answer: &ProviderError) -> String {
        match after(answer, Duration::from_secs(5), "up") {
            Next::Poll(d) => panic!("polls again after {d:?}"),
            Next::Stop(e) => e.to_string(),
        }
    }

    #[test]
    fn authorization_pending_keeps_polling_at_the_interval() {
        assert_eq!(
            polls_after(&said("authorization_pending"), 5),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn slow_down_adds_five_seconds_each_time() {
        let once = polls_after(&said("slow_down"), 5);
        assert_eq!(once, Duration::from_secs(10));
        assert_eq!(
            polls_after(&said("slow_down"), once.as_secs()),
            Duration::from_secs(15)
        );
        assert_eq!(polls_after(&said("slow_down"), 58), MAX_INTERVAL);
    }

    #[test]
    fn access_denied_ends_the_login_naming_it() {
        let e = stops_with(&said("access_denied"));
        assert!(e.contains("access_denied") && e.contains("denied"), "{e}");
    }

    #[test]
    fn expired_token_ends_the_login_naming_it() {
        let e = stops_with(&said("expired_token"));
        assert!(e.contains("expired_token") && e.contains("--device"), "{e}");
    }

    #[test]
    fn any_other_error_ends_the_login_with_the_providers_words() {
        let e = stops_with(&ProviderError::Permanent {
            error: "invalid_client".into(),
            description: Some("bad secret".into()),
        });
        assert!(
            e.contains("invalid_client") && e.contains("bad secret"),
            "{e}"
        );
    }

    #[test]
    fn transient_failures_back_off_honouring_retry_after() {
        let busy = |retry_after| ProviderError::Transient {
            message: "HTTP 503".into(),
            retry_after,
        };
        assert_eq!(polls_after(&busy(None), 5), Duration::from_secs(10));
        assert_eq!(
            polls_after(&busy(Some(Duration::from_secs(30))), 5),
            Duration::from_secs(30)
        );
        assert_eq!(polls_after(&busy(None), 40), MAX_INTERVAL);
        let lost = ProviderError::Unknown {
            message: "timed out".into(),
        };
        assert_eq!(polls_after(&lost, 5), Duration::from_secs(10));
    }
}
