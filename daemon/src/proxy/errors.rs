//! The proxy's own answers, when the upstream is not reached or its
//! answer cannot be passed on: JSON (`{"error": …, "message": …}`, as the
//! HTTP API's) with a `Tokend-Error` header, so a client can tell tokend's
//! answer from its API's (docs/HTTP.md, "Proxy").

use super::body::{ProxyBody, full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokend_proto::{CredentialState, ErrorCode, RemoteError};

/// The header that marks an answer as the proxy's own.
pub const TOKEND_ERROR: HeaderName = HeaderName::from_static("tokend-error");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The daemon refused: unknown credential, not allowed, not usable.
    #[error("{}", .0.message)]
    Daemon(RemoteError),
    #[error(
        "credential {0:?} has no API URL for the proxy to send requests to; an admin can set one with `tokenctl edit {0} --api-url URL`"
    )]
    NoApiUrl(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than proxy.max_request_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error(
        "{0} proxied requests of this user are in flight already (proxy.max_concurrent_per_user); try again when one has ended"
    )]
    TooMany(usize),
    #[error("the API at {host} could not be reached: {why}")]
    Unreachable { host: String, why: String },
    #[error("the API at {host} did not answer within {secs} s (proxy.upstream_timeout_secs)")]
    Timeout { host: String, secs: u64 },
    #[error("{0}")]
    Client(String),
    #[error(
        "the proxy does not send {0} requests: their target is not a path below the API URL, or the API would echo the token back"
    )]
    Method(String),
    #[error(
        "this request names another host than the proxy's listener (Host must be 127.0.0.1, [::1] or localhost with port {0}): a web page's request through a rebound name is refused"
    )]
    Misdirected(u16),
    #[error(
        "this request comes from a web page (it carries Origin or Sec-Fetch-Site): the proxy's listener serves programs, not pages a browser opened"
    )]
    CrossOrigin,
}

impl ProxyError {
    /// The status and the stable `error` code (docs/HTTP.md).
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Daemon(e) => match e.code {
                ErrorCode::UnknownCredential => (StatusCode::NOT_FOUND, "unknown_credential"),
                ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
                ErrorCode::NotUsable => (StatusCode::SERVICE_UNAVAILABLE, "not_usable"),
                ErrorCode::Provider => (StatusCode::SERVICE_UNAVAILABLE, "provider"),
                ErrorCode::Busy | ErrorCode::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                ErrorCode::BadRequest
                | ErrorCode::InvalidArgument
                | ErrorCode::ProtocolVersion
                | ErrorCode::AlreadyExists => (StatusCode::BAD_REQUEST, "bad_request"),
                ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            ProxyError::NoApiUrl(_) => (StatusCode::NOT_FOUND, "no_api_url"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ProxyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ProxyError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ProxyError::Unreachable { .. } | ProxyError::Client(_) => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable")
            }
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Method(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ProxyError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected_request"),
            ProxyError::CrossOrigin => (StatusCode::FORBIDDEN, "cross_origin"),
        }
    }

    fn state(&self) -> Option<CredentialState> {
        match self {
            ProxyError::Daemon(e) => e.state,
            _ => None,
        }
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let mut body = serde_json::json!({"error": code, "message": self.to_string()});
        if let Some(state) = self.state() {
            body["state"] = state.as_str().into();
        }
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(TOKEND_ERROR, HeaderValue::from_static(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_names_itself() {
        let cases = [
            (
                ProxyError::Daemon(RemoteError::new(ErrorCode::UnknownCredential, "no")),
                404,
            ),
            (
                ProxyError::Daemon(RemoteError::new(ErrorCode::PermissionDenied, "no")),
                403,
            ),
            (ProxyError::NoApiUrl("up".into()), 404),
            (
                ProxyError::Unreachable {
                    host: "h".into(),
                    why: "refused".into(),
                },
                502,
            ),
            (
                ProxyError::Timeout {
                    host: "h".into(),
                    secs: 1,
                },
                504,
            ),
            (ProxyError::BadRequest("bad".into()), 400),
        ];
        for (e, status) in cases {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert!(r.headers().contains_key(TOKEND_ERROR));
        }
        let mut needs_login = RemoteError::new(ErrorCode::NotUsable, "run `tokenctl login up`");
        needs_login.state = Some(CredentialState::NeedsLogin);
        let r = ProxyError::Daemon(needs_login).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[TOKEND_ERROR], "not_usable");
    }
}
