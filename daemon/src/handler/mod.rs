//! Turns one request from one peer into one response: access checks first,
//! then the operation. Every failure becomes a typed error with a sentence.

mod add;
mod admin;
pub mod audit;
mod edit;
pub mod endpoints;
mod exposition;
mod git_hosts;
pub mod metrics;
mod process;
mod read_audit;
mod redact;
mod upstream;

use crate::config::access::Peer;
use crate::error::Error;
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::state::metrics::Refused;
use crate::state::refusals::Kind;
use crate::state::throttle::Rate;
use crate::token::check;
use crate::{login, token};
pub use audit::Via;
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{CredentialInfo, DaemonStatus, Request, Response, logged};

/// Handles one request from the main socket. Never panics on client
/// input; errors are answers.
pub async fn handle(shared: &Arc<Shared>, peer: &Peer, request: Request) -> Response {
    handle_via(shared, peer, Via::Socket, request).await
}

/// Handles one request that came `via` a socket, the HTTP API or the
/// proxy, and records it in the audit trail (`audit.rs`): every request
/// passes here, so every hand-out and change is recorded once.
pub async fn handle_via(shared: &Arc<Shared>, peer: &Peer, via: Via, request: Request) -> Response {
    // Borrowed, not consumed: the audit entry and the error log below
    // name the credential without a copy of the name on every request.
    let subject = audit::subject(shared, via, &request);
    if subject.is_some() {
        // The peer's executable, read before the answer (which may take
        // seconds): the process may exit, its pid be reused, meanwhile.
        shared.audit.note_peer(peer);
    }
    let result = dispatch(shared, peer, &request).await;
    if let Some(subject) = &subject {
        audit::record(shared, peer, subject, &result);
    }
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            log_refusal(shared, peer, &request, &e);
            Response::Error(e.to_remote())
        }
    };
    redact::for_peer(shared, peer, response).await
}

/// One line per refused request, within the peer's share of the log
/// ([`crate::state::refusals`]); the name as sent, cut and escaped (a
/// refused name was never validated), and so is the error's text, which
/// may quote the name again.
fn log_refusal(shared: &Shared, peer: &Peer, request: &Request, e: &Error) {
    shared.metrics.refused(reason_of(e));
    let kind = match e {
        Error::PermissionDenied(_) => Kind::Denied,
        _ => Kind::Failed,
    };
    if !shared.refusals.allow(peer.uid, kind, refusal_rate(shared)) {
        return;
    }
    let (verb, name) = (request.verb(), request.credential().map(logged));
    match kind {
        Kind::Denied => {
            tracing::warn!(uid = peer.uid, pid = ?peer.pid, request = verb, credential = ?name, "permission denied")
        }
        Kind::Failed => {
            tracing::debug!(uid = peer.uid, request = verb, credential = ?name, error = %logged(&e.to_string()), "request failed")
        }
    }
}

/// The `reason` label of `tokend_requests_refused_total` for an error answer.
fn reason_of(e: &Error) -> Refused {
    match e {
        Error::PermissionDenied(_) => Refused::PermissionDenied,
        Error::UnknownCredential(_) => Refused::UnknownCredential,
        Error::NotUsable { .. } => Refused::NotUsable,
        Error::InvalidArgument(_) | Error::AlreadyExists(_) | Error::Url(_) | Error::Preset(_) => {
            Refused::InvalidArgument
        }
        Error::Busy(_) | Error::Timeout(_) => Refused::Busy,
        Error::Provider(_) | Error::Internal(_) | Error::HttpClient(_) => Refused::Other,
    }
}

/// How many refusals of one uid the log shows (`[log]` in the config).
pub fn refusal_rate(shared: &Shared) -> Rate {
    let log = &shared.config().log;
    Rate {
        lines: log.refusal_lines,
        every: Duration::from_secs(log.refusal_interval_secs),
    }
}

async fn dispatch(shared: &Arc<Shared>, peer: &Peer, request: &Request) -> Result<Response, Error> {
    match request {
        Request::Token {
            name,
            min_valid_secs,
        }
        | Request::TokenFor {
            name,
            min_valid_secs,
            ..
        } => {
            let cred = usable(shared, peer, name).await?;
            let reply = token::token(shared, &cred, *min_valid_secs).await?;
            Ok(Response::Token(reply))
        }
        Request::Reject {
            name,
            token,
            rejected_by,
        } => {
            let cred = usable(shared, peer, name).await?;
            let by = rejected_by
                .as_deref()
                .map(git_hosts::normalize)
                .transpose()?;
            let forcer = forcer(shared, peer, &cred).await;
            let message =
                token::reject(shared, &cred, token.as_ref(), forcer, by.as_deref()).await?;
            Ok(Response::Message(message))
        }
        Request::Refresh { name } => {
            let cred = usable(shared, peer, name).await?;
            Ok(Response::Message(
                token::force_refresh(shared, &cred, forcer(shared, peer, &cred).await).await?,
            ))
        }
        Request::Check { name } => {
            let cred = usable(shared, peer, name).await?;
            let forcer = forcer(shared, peer, &cred).await;
            Ok(Response::Check(check::paced(shared, &cred, forcer).await?))
        }
        Request::Show { name } => {
            let cred = usable(shared, peer, name).await?;
            let mut info = cred.info(shared.clock.now());
            with_names(shared, &cred, &mut info).await;
            Ok(Response::Credential(Box::new(info)))
        }
        Request::List => Ok(Response::List(
            visible(shared, peer)
                .await
                .iter()
                .map(|c| c.info(shared.clock.now()))
                .collect(),
        )),
        Request::Status => Ok(Response::Status(status(shared, peer).await)),
        Request::Audit(query) => read_audit::read(shared, peer, query).await,
        _ => {
            admin(shared, peer).await?;
            administer(shared, peer, request).await
        }
    }
}

/// The requests that change credentials: for admins only (checked by the
/// caller).
async fn administer(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: &Request,
) -> Result<Response, Error> {
    match request {
        Request::Add(add) => add::add_credential(shared, peer, (**add).clone()).await,
        Request::Remove { name } => admin::remove(shared, name).await,
        Request::Edit(edit) => edit::edit_credential(shared, (**edit).clone()).await,
        Request::Allow { name, principal } => {
            admin::change_allowed(shared, name, *principal, true).await
        }
        Request::Deny { name, principal } => {
            admin::change_allowed(shared, name, *principal, false).await
        }
        Request::AllowNamed { name, principal } => {
            let principal = admin::resolve(principal.clone()).await?;
            admin::change_allowed(shared, name, principal, true).await
        }
        Request::DenyNamed { name, principal } => {
            let principal = admin::resolve(principal.clone()).await?;
            admin::change_allowed(shared, name, principal, false).await
        }
        Request::LoginStart { name, redirect_uri } => {
            let cred = known(shared, name)?;
            let challenge = login::start(shared, &cred, redirect_uri.clone(), peer.uid)?;
            Ok(Response::Login(challenge))
        }
        Request::LoginFinish {
            login_id,
            redirect_url,
        } => Ok(Response::Message(
            login::finish(shared, login_id, redirect_url, peer.uid).await?,
        )),
        Request::DeviceLoginStart { name } => {
            let cred = known(shared, name)?;
            let challenge = login::device::start(shared, &cred, peer.uid).await?;
            Ok(Response::DeviceLogin(challenge))
        }
        Request::DeviceLoginFinish {
            login_id,
            timeout_secs,
        } => Ok(Response::Message(
            login::device::finish(shared, login_id, *timeout_secs, peer.uid).await?,
        )),
        _ => Err(Error::Internal(format!(
            "{} is not an administrative request",
            request.verb()
        ))),
    }
}

/// Whether `peer` is an admin (its groups looked up off the workers).
pub(crate) async fn is_admin(shared: &Shared, peer: &Peer) -> bool {
    let access = shared.policy().is_admin(peer);
    access.granted(peer, &shared.groups).await
}

async fn admin(shared: &Shared, peer: &Peer) -> Result<(), Error> {
    if is_admin(shared, peer).await {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "{} may not change credentials (only the daemon's user, root or the admin group may)",
        peer.who()
    )))
}

/// How the pace of forced refreshes applies to `peer` (`token/forced.rs`).
async fn forcer(shared: &Shared, peer: &Peer, cred: &Credential) -> token::Forcer {
    if is_admin(shared, peer).await {
        token::Forcer::Admin
    } else if peer.uid == cred.owner_uid {
        token::Forcer::Owner
    } else {
        token::Forcer::User
    }
}

pub(super) fn known(shared: &Shared, name: &str) -> Result<Arc<Credential>, Error> {
    shared
        .registry
        .get(name)
        .ok_or_else(|| Error::UnknownCredential(name.to_string()))
}

/// The credential, if `peer` may use it (the check `token` makes), for a
/// caller outside this module (the proxy): a refusal is logged within the
/// peer's share of the log, as a refused request is.
pub async fn usable_by(
    shared: &Shared,
    peer: &Peer,
    name: &str,
) -> Result<Arc<Credential>, tokend_proto::RemoteError> {
    let result = usable(shared, peer, name).await;
    if result.is_err() {
        let subject = audit::Subject {
            op: "proxy",
            credential: Some(name.into()),
        };
        audit::record(shared, peer, &subject, &result);
    }
    result.map_err(|e| {
        let request = Request::Token {
            name: name.to_string(),
            min_valid_secs: 0,
        };
        log_refusal(shared, peer, &request, &e);
        e.to_remote()
    })
}

/// The credential, if this peer may use it. An unknown name and a forbidden
/// one answer differently: hiding existence would only confuse admins, and
/// names are not secrets.
async fn usable(shared: &Shared, peer: &Peer, name: &str) -> Result<Arc<Credential>, Error> {
    let cred = known(shared, name)?;
    let policy = shared.policy();
    let access = cred.with_live(|l| policy.may_use(peer, cred.owner_uid, &l.allowed));
    if !access.granted(peer, &shared.groups).await {
        return Err(Error::PermissionDenied(format!(
            "{} is not allowed to use credential {name:?} (an admin can run `tokenctl allow {name} --user USER`)",
            peer.who()
        )));
    }
    Ok(cred)
}

/// The credential as `show` tells it (without the names, which need the
/// store), if `peer` may use it now; `None` otherwise, and nothing logged:
/// an event stream asks this for every event it might pass on (docs/HTTP.md,
/// "Events"), so an `allow` or `deny` in between counts at once, and a
/// credential the peer may not use is no refused request.
pub async fn shown_to(shared: &Shared, peer: &Peer, name: &str) -> Option<CredentialInfo> {
    let cred = usable(shared, peer, name).await.ok()?;
    let info = cred.info(shared.clock.now());
    match redact::for_peer(shared, peer, Response::Credential(Box::new(info))).await {
        Response::Credential(info) => Some(*info),
        _ => None,
    }
}

/// The token held for `name`, if `peer` may use it and it is valid now;
/// never a refresh (see [`token::held`]). Nothing logged, as for
/// [`shown_to`]; a token handed out is in the audit trail (`events`), as
/// every hand-out is.
pub async fn held_token(shared: &Shared, peer: &Peer, name: &str) -> Option<tokend_proto::Secret> {
    let cred = usable(shared, peer, name).await.ok()?;
    let token = token::held(shared, &cred).map(|reply| reply.token)?;
    let subject = audit::Subject {
        op: "events",
        credential: Some(name.into()),
    };
    shared.audit.note_peer(peer);
    audit::record(shared, peer, &subject, &Ok::<(), Error>(()));
    Some(token)
}

/// Whether `peer` could use a credential owned by `owner_uid` with the
/// allow list `allowed`: for one that is gone (an event stream tells only
/// those who could use it that it was removed).
pub async fn could_use(
    shared: &Shared,
    peer: &Peer,
    owner_uid: u32,
    allowed: &[tokend_proto::Principal],
) -> bool {
    let access = shared.policy().may_use(peer, owner_uid, allowed);
    access.granted(peer, &shared.groups).await
}

async fn visible(shared: &Shared, peer: &Peer) -> Vec<Arc<Credential>> {
    let policy = shared.policy();
    let mut visible = Vec::new();
    for cred in shared.registry.all() {
        let access = cred.with_live(|l| policy.may_use(peer, cred.owner_uid, &l.allowed));
        if access.granted(peer, &shared.groups).await {
            visible.push(cred);
        }
    }
    visible
}

/// The daemon and the credentials `peer` may use. Its pid, its socket, the
/// store (a database URL names hosts and users; its state carries the
/// database's errors) and its connection count are for admins only: a
/// user is told what concerns its credentials, nothing that helps map the
/// service (docs/SECURITY.md).
async fn status(shared: &Shared, peer: &Peer) -> DaemonStatus {
    let now = shared.clock.now();
    let admin = is_admin(shared, peer).await;
    DaemonStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: admin.then(std::process::id),
        uptime_secs: shared.started.elapsed().as_secs(),
        socket: admin.then(|| shared.paths.socket.display().to_string()),
        database: admin.then(|| shared.store.describe()),
        connections: admin.then(|| shared.connections.total()),
        connections_by_user: if admin {
            shared
                .connections
                .by_uid()
                .into_iter()
                .map(|(uid, connections)| tokend_proto::UserConnections { uid, connections })
                .collect()
        } else {
            Vec::new()
        },
        credentials: visible(shared, peer)
            .await
            .iter()
            .map(|c| c.summary(now))
            .collect(),
        http_socket: (admin && shared.config().http.enabled)
            .then(|| shared.paths.http_socket.display().to_string()),
        proxy_listen: shared.config().proxy.listen.clone(),
    }
}

/// Adds the owner's and allow list's names, as stored, to what `show`
/// tells: they are not kept in memory (100,000 credentials would carry
/// them), so the row is read again. Without the store, `show` goes on with
/// the ids that apply here.
async fn with_names(shared: &Shared, cred: &Credential, info: &mut CredentialInfo) {
    let store = shared.store.clone();
    let names = vec![cred.name.to_string()];
    let Ok(rows) = crate::store::blocking(move || store.load_named(&names)).await else {
        return;
    };
    let named = rows
        .into_iter()
        .find(|r| r.incarnation == cred.incarnation)
        .and_then(|r| r.names);
    if let Some(named) = named {
        info.owner = Some(named.owner);
        info.grantees = named.allowed;
    }
}
