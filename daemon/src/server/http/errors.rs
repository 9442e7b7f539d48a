//! Errors as HTTP: a status, a stable `error` code and a sentence, in the
//! table of docs/HTTP.md. The daemon's codes map one to one to tokenctl's
//! exit codes; the sentence is the daemon's own and never holds a secret.

use super::body;
use super::routes::Miss;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode, header};
use tokend_proto::{CredentialState, ErrorCode, RemoteError};

/// Why a request got no answer of its route.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The daemon refused the request (the same answer as on the main socket).
    #[error("{0}")]
    Daemon(RemoteError),
    #[error("no such path: {0} (API version 1 is described in docs/HTTP.md)")]
    NotFound(String),
    #[error("{path} does not answer {method}; it answers {allow}")]
    MethodNotAllowed {
        path: String,
        method: String,
        allow: &'static str,
    },
    #[error("the request body is larger than {} bytes", super::MAX_BODY)]
    PayloadTooLarge,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The error for a request that matched no route.
    pub fn missed(miss: Miss, method: &hyper::Method, path: &str) -> ApiError {
        match miss {
            Miss::NotFound => ApiError::NotFound(path.to_string()),
            Miss::MethodNotAllowed(allow) => ApiError::MethodNotAllowed {
                path: path.to_string(),
                method: method.to_string(),
                allow,
            },
        }
    }

    /// The status and the `error` code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Daemon(e) => daemon_status(e.code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn state(&self) -> Option<CredentialState> {
        match self {
            ApiError::Daemon(e) => e.state,
            _ => None,
        }
    }

    /// The JSON error answer.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status_and_code();
        let error = body::Error {
            error: code,
            message: self.to_string(),
            state: self.state().map(CredentialState::as_str),
        };
        let mut response = body::json(status, &error);
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        response
    }
}

/// The status and code of a daemon error; the table in docs/HTTP.md.
pub fn daemon_status(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidArgument | ErrorCode::ProtocolVersion => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ErrorCode::UnknownCredential => (StatusCode::NOT_FOUND, "unknown_credential"),
        ErrorCode::NotUsable => (StatusCode::CONFLICT, "not_usable"),
        ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        ErrorCode::Provider => (StatusCode::BAD_GATEWAY, "provider"),
        ErrorCode::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        ErrorCode::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_usable_credential_is_a_409_with_its_state() {
        let mut remote = RemoteError::new(ErrorCode::NotUsable, "needs a login");
        remote.state = Some(CredentialState::NeedsLogin);
        let response = ApiError::Daemon(remote).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn a_wrong_method_names_the_allowed_one() {
        let e = ApiError::missed(
            Miss::MethodNotAllowed("GET"),
            &hyper::Method::POST,
            "/v1/health",
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET");
    }
}
