//! What the audit trail records of a request: every hand-out of a token
//! and every administrative change, named by its operation, with how it
//! ended. [`super::handle_via`] records each request here once, after
//! answering it: the one place every socket, the HTTP API and the proxy
//! pass through. Reads (`show`, `list`, `status`, `check`, `audit`) are not
//! recorded.

use crate::config::access::Peer;
use crate::error::Error;
use crate::state::Shared;
use crate::state::audit::{Event, Outcome};
use std::borrow::Cow;
use tokend_proto::Request;

/// Where a request came from: a token is a `token` (or `header`, `exec`,
/// `git`, `kube`, as the client says) on the main socket, an `http` on the
/// HTTP API and a `proxy` when the proxy asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Socket,
    Http,
    Proxy,
}

/// What a recorded request is about: its operation and credential,
/// taken before it is answered (a login's finish forgets its credential).
#[derive(Debug)]
pub struct Subject<'a> {
    pub op: &'static str,
    pub credential: Option<Cow<'a, str>>,
}

/// The subject of `request`, if it is one the audit trail records.
pub fn subject<'a>(shared: &Shared, via: Via, request: &'a Request) -> Option<Subject<'a>> {
    let op = match request {
        Request::Token { .. } => match via {
            Via::Socket => "token",
            Via::Http => "http",
            Via::Proxy => "proxy",
        },
        Request::TokenFor { purpose, .. } => purpose.as_str(),
        Request::Add(add) if add.replace => "replace",
        Request::Add(_) => "add",
        Request::Remove { .. } => "rm",
        Request::Edit(_) => "edit",
        Request::Allow { .. } | Request::AllowNamed { .. } => "allow",
        Request::Deny { .. } | Request::DenyNamed { .. } => "deny",
        Request::Refresh { .. } => "refresh",
        Request::Reject { .. } => "reject",
        Request::LoginStart { .. } | Request::DeviceLoginStart { .. } => "login",
        Request::LoginFinish { login_id, .. } => {
            let name = shared.logins.lock().get(login_id).map(|p| p.name.clone());
            return Some(Subject {
                op: "login",
                credential: name.map(Cow::Owned),
            });
        }
        Request::DeviceLoginFinish { login_id, .. } => {
            let name = shared
                .logins
                .devices()
                .get(login_id)
                .map(|p| p.name.clone());
            return Some(Subject {
                op: "login",
                credential: name.map(Cow::Owned),
            });
        }
        Request::Check { .. }
        | Request::Show { .. }
        | Request::List
        | Request::Status
        | Request::Audit(_) => return None,
    };
    Some(Subject {
        op,
        credential: request.credential().map(Cow::Borrowed),
    })
}

/// Queues the entry for `subject` as `result` ended it (never waits),
/// with the incarnation of the credential of that name now (`None`: there
/// is none), so that a later owner of the name never reads it.
pub fn record<T>(shared: &Shared, peer: &Peer, subject: &Subject<'_>, result: &Result<T, Error>) {
    if !shared.audit.is_enabled() {
        return;
    }
    let (outcome, reason) = match result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (
            match e {
                Error::PermissionDenied(_) => Outcome::Refused,
                Error::UnknownCredential(_) => Outcome::NotFound,
                _ => Outcome::Failed,
            },
            Some(reason(e)),
        ),
    };
    let credential = subject.credential.as_deref();
    let incarnation = credential
        .and_then(|name| shared.registry.get(name))
        .map(|c| c.incarnation);
    shared.audit.record(
        peer,
        Event {
            op: subject.op,
            credential,
            outcome,
            reason,
            incarnation,
        },
    );
}

/// Why a request failed, as the trail stores it: a short fixed text
/// derived from the error's kind (its code; a `not_usable` with the
/// credential's state), never the error's sentence, which may quote a URL
/// whole, a password in its userinfo or a secret in its query.
pub fn reason(e: &Error) -> &'static str {
    use tokend_proto::{CredentialState, ErrorCode};
    match e {
        Error::NotUsable { state, .. } => match state {
            CredentialState::Ready => "not_usable: ready",
            CredentialState::NeedsLogin => "not_usable: needs-login",
            CredentialState::Refreshing => "not_usable: refreshing",
            CredentialState::Failing => "not_usable: failing",
        },
        _ => match e.code() {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ProtocolVersion => "protocol_version",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::UnknownCredential => "unknown_credential",
            ErrorCode::NotUsable => "not_usable",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Provider => "provider",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_a_fixed_word_never_the_errors_text() {
        let url = "https://u:PW@api.example/x?q=SECRET";
        for e in [
            Error::InvalidArgument(format!("bad URL {url}")),
            Error::Provider(format!("{url} answered 500")),
            Error::Internal(url.into()),
            Error::PermissionDenied(url.into()),
        ] {
            let r = reason(&e);
            assert!(!r.contains("PW") && !r.contains("SECRET"), "{r}");
        }
        assert_eq!(
            reason(&Error::InvalidArgument("x".into())),
            "invalid_argument"
        );
        assert_eq!(
            reason(&Error::UnknownCredential("x".into())),
            "unknown_credential"
        );
        let not_usable = Error::NotUsable {
            name: "up".into(),
            state: tokend_proto::CredentialState::NeedsLogin,
            reason: Some(url.into()),
        };
        assert_eq!(reason(&not_usable), "not_usable: needs-login");
    }
}
