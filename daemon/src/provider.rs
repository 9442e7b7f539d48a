//! Talking to an OAuth2 token endpoint: the three grants, standard response
//! and error parsing, and the transient/permanent split of DESIGN §4.4–4.5.

use crate::check::describe;
use serde::Deserialize;
use std::time::Duration;
use tokend_proto::{ClientAuth, Secret};

/// The token endpoint and how to authenticate to it.
pub struct Endpoint<'a> {
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: Option<&'a Secret>,
    pub client_auth: ClientAuth,
}

/// What to ask for.
pub enum Grant<'a> {
    AuthorizationCode {
        code: &'a str,
        redirect_uri: &'a str,
        verifier: Option<&'a Secret>,
    },
    RefreshToken(&'a Secret),
    ClientCredentials {
        scopes: &'a [String],
    },
}

/// A successful token response.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<u64>,
}

/// Why the endpoint gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: no answer, 5xx, 429, 408, or an unreadable 200.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The grant or the client is refused; retrying cannot help.
    #[error("{}", permanent_message(.error, .description.as_deref()))]
    Permanent {
        error: String,
        description: Option<String>,
    },
}

fn permanent_message(error: &str, description: Option<&str>) -> String {
    match description {
        Some(d) => format!("the provider answered {error}: {d}"),
        None => format!("the provider answered {error}"),
    }
}

impl ProviderError {
    /// `invalid_grant` means the refresh token (or code) is dead: log in again.
    pub fn needs_login(&self) -> bool {
        matches!(self, ProviderError::Permanent { error, .. } if error == "invalid_grant")
    }
}

#[derive(Deserialize)]
struct RawTokens {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
    error_description: Option<String>,
}

/// Longest body read from an endpoint; a token response is small.
const MAX_BODY: usize = 64 * 1024;

/// Posts one grant to the token endpoint.
pub async fn request(
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    grant: &Grant<'_>,
    timeout: Duration,
) -> Result<TokenSet, ProviderError> {
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(6);
    let scope_text;
    match grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            verifier,
        } => {
            form.push(("grant_type", "authorization_code"));
            form.push(("code", code));
            form.push(("redirect_uri", redirect_uri));
            if let Some(v) = verifier {
                form.push(("code_verifier", v.expose()));
            }
        }
        Grant::RefreshToken(token) => {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", token.expose()));
        }
        Grant::ClientCredentials { scopes } => {
            form.push(("grant_type", "client_credentials"));
            scope_text = scopes.join(" ");
            if !scope_text.is_empty() {
                form.push(("scope", &scope_text));
            }
        }
    }
    let mut builder = http
        .post(endpoint.token_url)
        .timeout(timeout)
        .header("Accept", "application/json");
    match endpoint.client_auth {
        ClientAuth::Post => {
            form.push(("client_id", endpoint.client_id));
            if let Some(secret) = endpoint.client_secret {
                form.push(("client_secret", secret.expose()));
            }
        }
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let secret = endpoint
                .client_secret
                .map(|s| enc(s.expose()))
                .unwrap_or_default();
            builder = builder.basic_auth(enc(endpoint.client_id), Some(secret));
        }
    }
    let response = builder
        .form(&form)
        .send()
        .await
        .map_err(|e| ProviderError::Transient {
            message: format!(
                "token endpoint {}: {}",
                crate::http::host_of(endpoint.token_url),
                describe(&e)
            ),
            retry_after: None,
        })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = read_limited(response)
        .await
        .map_err(|message| ProviderError::Transient {
            message,
            retry_after,
        })?;
    classify(status.as_u16(), &body, retry_after)
}

/// Reads a response body of at most [`MAX_BODY`] bytes.
pub async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("token endpoint: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err("token endpoint sent an oversized response".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Sorts a response into tokens, a transient error or a permanent one.
pub fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<TokenSet, ProviderError> {
    let transient = |message: String| ProviderError::Transient {
        message,
        retry_after,
    };
    if status == 200 {
        let raw: RawTokens = serde_json::from_slice(body).map_err(|_| {
            transient("token endpoint answered 200 without a JSON token response".into())
        })?;
        if raw.access_token.is_empty() {
            return Err(transient(
                "token endpoint answered 200 with an empty access_token".into(),
            ));
        }
        return Ok(TokenSet {
            access_token: Secret::new(raw.access_token),
            refresh_token: raw.refresh_token.filter(|r| !r.is_empty()).map(Secret::new),
            expires_in: raw.expires_in.as_ref().and_then(parse_expires_in),
        });
    }
    if status == 408 || status == 429 || status >= 500 {
        return Err(transient(format!("token endpoint answered HTTP {status}")));
    }
    match serde_json::from_slice::<RawError>(body) {
        Ok(e) => Err(ProviderError::Permanent {
            error: sanitize(&e.error),
            description: e.error_description.map(|d| sanitize(&d)),
        }),
        Err(_) => Err(ProviderError::Permanent {
            error: format!("HTTP {status}"),
            description: Some(
                "the token endpoint gave no OAuth2 error; check the token URL".into(),
            ),
        }),
    }
}

/// `expires_in` as a number or a numeric string (some providers send "3600").
fn parse_expires_in(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Provider text goes into logs and messages: keep it short and printable.
fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_response_is_parsed_with_optional_fields() {
        let t = classify(
            200,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":"300"}"#,
            None,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.expires_in, Some(300));
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn invalid_grant_is_permanent_and_needs_login() {
        let e = classify(
            400,
            br#"{"error":"invalid_grant","error_description":"grant revoked"}"#,
            None,
        )
        .unwrap_err();
        assert!(e.needs_login());
        assert!(e.to_string().contains("invalid_grant"));
    }

    #[test]
    fn server_errors_and_rate_limits_are_transient() {
        for status in [500, 503, 429, 408] {
            assert!(matches!(
                classify(status, b"", None),
                Err(ProviderError::Transient { .. })
            ));
        }
        let e = classify(429, b"", Some(Duration::from_secs(7))).unwrap_err();
        assert_eq!(
            e,
            ProviderError::Transient {
                message: "token endpoint answered HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn non_json_200_is_transient() {
        assert!(matches!(
            classify(200, b"<html>oops</html>", None),
            Err(ProviderError::Transient { .. })
        ));
    }

    #[test]
    fn invalid_client_is_permanent_but_not_a_login_problem() {
        let e = classify(401, br#"{"error":"invalid_client"}"#, None).unwrap_err();
        assert!(matches!(e, ProviderError::Permanent { .. }));
        assert!(!e.needs_login());
    }
}
