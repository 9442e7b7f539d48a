//! `tokenctl check`: probe a bearer credential's check URL with its token and
//! record what the API said.

use crate::error::Error;
use crate::provider::http::describe;
use crate::provider::http::host_of;
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::StateUpdate;
use crate::store::blocking;
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{CheckReport, CredentialSpec, CredentialState, Secret};

/// [`run`] for `forcer`, at a user's pace (`forced.rs`): within the
/// interval, the last report, or why there is none yet.
pub async fn paced(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    forcer: crate::token::Forcer,
) -> Result<CheckReport, Error> {
    crate::token::trusted(cred)?;
    match super::forced::admit(shared, cred, forcer) {
        Ok(()) => run(shared, cred).await,
        Err(state) => cred
            .with_live(|l| l.last_check.as_deref().cloned())
            .ok_or(Error::Busy(state)),
    }
}

/// Probes the check URL, records the report, and sets the state: 2xx → ready,
/// 401/403 → `failing: rejected by HOST`, anything else leaves the state alone.
pub async fn run(shared: &Arc<Shared>, cred: &Arc<Credential>) -> Result<CheckReport, Error> {
    crate::token::trusted(cred)?;
    let CredentialSpec::Bearer {
        check_url: Some(url),
        ..
    } = cred.spec()
    else {
        return Err(Error::InvalidArgument(format!(
            "credential {:?} has no check URL (add it with --check-url)",
            cred.name
        )));
    };
    let token = cred
        .with_live(|l| l.access_token.clone())
        .ok_or_else(|| Error::Internal("the credential holds no token".into()))?;
    let report = probe(shared, &url, &token).await?;
    let (state, reason) = match report.status {
        Some(200..=299) => (CredentialState::Ready, None),
        Some(401 | 403) => (CredentialState::Failing, Some(report.message.clone())),
        _ => cred.with_live(|l| (l.state, l.reason.as_deref().map(Into::into))),
    };
    let update = StateUpdate {
        state,
        reason: reason.clone(),
        last_error: (!report.ok).then(|| report.message.clone()),
        next_refresh_at: None,
        grant: crate::store::GrantChange::Settled,
        retry: None,
    };
    let store = shared.store.clone();
    let (name, incarnation, saved) = (cred.name.clone(), cred.incarnation, report.clone());
    blocking(move || store.save_check(&name, incarnation, &saved, &update)).await?;
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.state = state;
        l.reason = reason.as_deref().map(Into::into);
        l.last_error = (!report.ok).then(|| report.message.as_str().into());
        l.last_check = Some(Box::new(report.clone()));
        previous
    });
    if previous != state {
        crate::token::notify::transition(shared, &cred.name, state, reason.as_deref());
    }
    tracing::info!(credential = %cred.name, status = ?report.status, "check: {}", report.message);
    Ok(report)
}

/// One GET of the check URL with the token, and what its answer says.
async fn probe(shared: &Shared, url: &str, token: &Secret) -> Result<CheckReport, Error> {
    let timeout = Duration::from_secs(shared.config().refresh.http_timeout_secs);
    let answer = shared
        .http()?
        .get(url)
        .bearer_auth(token.expose())
        .timeout(timeout)
        .send()
        .await;
    let host = host_of(url);
    let (status, ok, message) = match answer {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let ok = resp.status().is_success();
            let message = match code {
                _ if ok => format!("accepted by {host} (HTTP {code})"),
                401 | 403 => format!("rejected by {host} (HTTP {code})"),
                _ => format!("inconclusive: {host} answered HTTP {code}"),
            };
            (Some(code), ok, message)
        }
        Err(e) => (
            None,
            false,
            format!("inconclusive: no answer from {host}: {}", describe(&e)),
        ),
    };
    Ok(CheckReport {
        at: shared.clock.now(),
        status,
        ok,
        message,
    })
}
