//! The JSON bodies of API version 1 (snake_case, UTF-8), and the helpers
//! that build responses from them.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokend_proto::CredentialInfo;

/// `GET …/token`.
#[derive(Serialize)]
pub struct Token<'a> {
    pub access_token: &'a str,
    pub token_type: &'static str,
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// When a token expires: an RFC 3339 UTC time and the seconds left (both
/// `null` when the provider did not say, or for a bearer token).
#[derive(Serialize)]
pub struct Expiry {
    pub expires_at: Option<String>,
    pub expires_in: Option<i64>,
}

impl Expiry {
    /// The expiry at Unix time `at`, seen at Unix time `now`.
    pub fn new(at: Option<i64>, now: i64) -> Expiry {
        Expiry {
            expires_at: at.map(rfc3339),
            expires_in: at.map(|at| (at - now).max(0)),
        }
    }
}

/// `POST …/reject` and `POST …/refresh`.
#[derive(Serialize)]
pub struct Refreshed {
    pub refreshed: bool,
    pub message: String,
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// The optional body of `POST …/reject`: the token the API refused.
#[derive(Deserialize, Default)]
pub struct Reject {
    pub token: Option<tokend_proto::Secret>,
}

/// `GET /v1/credentials`.
#[derive(Serialize)]
pub struct List {
    pub credentials: Vec<CredentialInfo>,
}

/// `GET /v1/health`.
#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// Every error answer.
#[derive(Serialize)]
pub struct Error {
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
}

/// A Unix time as RFC 3339 UTC, to the second ("2026-12-01T23:09:56Z").
pub fn rfc3339(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A JSON answer with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, "application/json", bytes),
        Err(_) => with_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            br#"{"error":"internal","message":"the answer could not be encoded"}"#.to_vec(),
        ),
    }
}

/// An answer of `content_type` with `bytes` as its body.
pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    bytes: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // Answers carry tokens and change from one request to the next.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(1_796_166_596), "2026-12-01T23:09:56Z");
        let e = Expiry::new(Some(100), 40);
        assert_eq!(e.expires_in, Some(60));
        assert_eq!(
            Expiry::new(Some(10), 40).expires_in,
            Some(0),
            "never negative"
        );
    }
}
