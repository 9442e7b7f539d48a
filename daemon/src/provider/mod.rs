//! Talking to an OAuth2 token endpoint: the three grants, standard response
//! and error parsing, and the transient/permanent split of docs/DESIGN.md §4.4–4.5.

pub mod discovery;
pub mod http;

use crate::provider::http::describe;
use serde::Deserialize;
use std::time::Duration;
use tokend_proto::{ClientAuth, Secret};
use zeroize::Zeroizing;

/// The token endpoint and how to authenticate to it.
pub struct Endpoint<'a> {
    pub token_url: &'a str,
    /// RFC 7662 token introspection, if the provider offers it: the way to
    /// learn whether a refresh token in doubt is still alive.
    pub introspection_url: Option<&'a str>,
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
    /// A poll of the device authorization grant (RFC 8628 §3.4).
    DeviceCode(&'a Secret),
}

/// RFC 8628 §3.4's grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A successful token response.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: ExpiresIn,
    /// How long the refresh token lives, as the provider said (Keycloak's
    /// `refresh_expires_in`; most providers say nothing).
    pub refresh_expires_in: RefreshLifetime,
}

/// A token response's `refresh_expires_in` (Keycloak's name): when the
/// grant will need a human again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshLifetime {
    /// Not in the answer, or not a number: ask introspection.
    Unsaid,
    /// `0`: the refresh token has no limit (Keycloak's offline tokens).
    Unlimited,
    /// Seconds from the answer (positive).
    Secs(i64),
}

/// The `expires_in` of a token response, as sent. The lifecycle turns it
/// into a lifetime within documented bounds (docs/RULES.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpiresIn {
    Missing,
    /// Seconds, possibly zero, negative or absurdly large.
    Secs(i64),
    /// Present but not a number.
    Unreadable,
}

/// Why the endpoint gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: the provider said it failed (500, 503 and the other
    /// 5xx but the gateways', 429, 408).
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Nothing was sent: no connection could be made (DNS, refused, TLS,
    /// a proxy). Worth retrying; this host's trouble as much as the
    /// provider's, so it holds back this host only.
    #[error("{message}")]
    Unsent { message: String },
    /// The request may have reached the provider, but no answer could be
    /// read: a timeout or a dropped connection after sending, a 502 or 504
    /// (a gateway that lost the provider's answer), or a 2xx whose body is
    /// not a JSON object. For a refresh this means the provider may have
    /// rotated the refresh token: it is now *in doubt*.
    #[error("{message}")]
    Unknown { message: String },
    /// A 2xx whose token response tokend cannot serve (no access token, a
    /// type other than Bearer). For a refresh, the refresh token sent is
    /// spent whatever the body says; `refresh_token` is the new one, if the
    /// answer held one.
    #[error("{message}")]
    Unusable {
        message: String,
        refresh_token: Option<Secret>,
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
    // Read straight into wiped-on-drop buffers: a token the answer cannot
    // be served with is dropped here, and must not linger in freed memory.
    access_token: Option<Secret>,
    refresh_token: Option<Secret>,
    expires_in: Option<serde_json::Value>,
    refresh_expires_in: Option<serde_json::Value>,
    token_type: Option<String>,
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
    let scope_text = match grant {
        Grant::ClientCredentials { scopes } => scopes.join(" "),
        _ => String::new(),
    };
    let mut form = grant_form(grant, &scope_text);
    let builder = authenticated(
        http.post(endpoint.token_url).timeout(timeout),
        endpoint,
        &mut form,
    );
    let response = builder.form(&form).send().await.map_err(|e| {
        let message = format!(
            "token endpoint {}: {}",
            crate::provider::http::host_of(endpoint.token_url),
            describe(&e)
        );
        if e.is_connect() {
            // Nothing was sent: plainly worth retrying.
            ProviderError::Unsent { message }
        } else {
            ProviderError::Unknown { message }
        }
    })?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
    let body = read_limited(response).await.map_err(|message| {
        if status.is_success() || answer_may_be_lost(status.as_u16()) {
            ProviderError::Unknown { message }
        } else {
            ProviderError::Transient {
                message,
                retry_after,
            }
        }
    })?;
    classify(status.as_u16(), &body, retry_after)
}

/// The form fields of `grant` (RFC 6749 §4.1.3, §4.4.2, §6); `scope` is the
/// space-separated scope of a client-credentials grant.
fn grant_form<'a>(grant: &Grant<'a>, scope: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut form = Vec::with_capacity(6);
    match grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            verifier,
        } => {
            form.push(("grant_type", "authorization_code"));
            form.push(("code", *code));
            form.push(("redirect_uri", *redirect_uri));
            if let Some(v) = verifier {
                form.push(("code_verifier", v.expose()));
            }
        }
        Grant::RefreshToken(token) => {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", token.expose()));
        }
        Grant::ClientCredentials { .. } => {
            form.push(("grant_type", "client_credentials"));
            if !scope.is_empty() {
                form.push(("scope", scope));
            }
        }
        Grant::DeviceCode(device_code) => {
            form.push(("grant_type", DEVICE_CODE_GRANT));
            form.push(("device_code", device_code.expose()));
        }
    }
    form
}

/// The device authorization response (RFC 8628 §3.2). `device_code` never
/// leaves the daemon.
#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds the codes live.
    pub expires_in: u64,
    /// Seconds between polls: the provider's, or RFC 8628's default of 5.
    pub interval: u64,
}

/// Asks the device authorization endpoint for a device and user code
/// (RFC 8628 §3.1): `client_id` and the scope, authenticated as at the
/// token endpoint. Any failure is a sentence for the user; nothing was
/// granted, so nothing is in doubt.
pub async fn device_authorization(
    http: &reqwest::Client,
    url: &str,
    endpoint: &Endpoint<'_>,
    scopes: &[String],
    timeout: Duration,
) -> Result<DeviceAuthorization, String> {
    let host = crate::provider::http::host_of(url);
    let scope = scopes.join(" ");
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(4);
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    // With Basic, the client is named by the header (RFC 6749 §2.3.1).
    let builder = authenticated(http.post(url).timeout(timeout), endpoint, &mut form);
    let response = builder
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("device authorization endpoint {host}: {}", describe(&e)))?;
    let status = response.status();
    let body = read_limited(response)
        .await
        .map_err(|e| format!("device authorization endpoint {host}: {e}"))?;
    parse_device_authorization(status.as_u16(), &body)
        .map_err(|e| format!("device authorization endpoint {host}: {e}"))
}

/// Reads a device authorization answer: the codes, or the provider's error.
pub fn parse_device_authorization(status: u16, body: &[u8]) -> Result<DeviceAuthorization, String> {
    #[derive(Deserialize)]
    struct Raw {
        device_code: Option<String>,
        user_code: Option<String>,
        verification_uri: Option<String>,
        /// Google's pre-RFC name.
        verification_url: Option<String>,
        verification_uri_complete: Option<String>,
        expires_in: Option<serde_json::Value>,
        interval: Option<serde_json::Value>,
    }
    if status != 200 {
        return Err(match serde_json::from_slice::<RawError>(body) {
            Ok(e) => permanent_message(
                &sanitize(&e.error),
                e.error_description.map(|d| sanitize(&d)).as_deref(),
            ),
            Err(_) => format!("answered HTTP {status}"),
        });
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|_| "answered 200 without a JSON device authorization".to_string())?;
    let missing = |field: &str| format!("answered without `{field}`");
    let secs = |v: Option<&serde_json::Value>| match v.map(parse_expires_in) {
        Some(ExpiresIn::Secs(n)) if n > 0 => Some(n as u64),
        _ => None,
    };
    let device_code = raw
        .device_code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| missing("device_code"))?;
    let user_code = raw
        .user_code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| missing("user_code"))?;
    let verification_uri = raw
        .verification_uri
        .or(raw.verification_url)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| missing("verification_uri"))?;
    Ok(DeviceAuthorization {
        device_code: Secret::new(device_code),
        user_code: sanitize(&user_code),
        verification_uri: web_url(&verification_uri)
            .ok_or("answered with a `verification_uri` that is not an http(s) URL")?,
        verification_uri_complete: raw.verification_uri_complete.as_deref().and_then(web_url),
        // RFC 8628 §3.2 requires expires_in; a provider that leaves it out
        // gets the usual 10 minutes.
        expires_in: secs(raw.expires_in.as_ref()).unwrap_or(600),
        interval: secs(raw.interval.as_ref()).unwrap_or(5),
    })
}

/// Adds the client's authentication (RFC 6749 §2.3.1) to a request to the
/// token or introspection endpoint: form fields or HTTP Basic.
fn authenticated<'a>(
    builder: reqwest::RequestBuilder,
    endpoint: &Endpoint<'a>,
    form: &mut Vec<(&str, &'a str)>,
) -> reqwest::RequestBuilder {
    let builder = builder.header("Accept", "application/json");
    match endpoint.client_auth {
        ClientAuth::Post => {
            form.push(("client_id", endpoint.client_id));
            if let Some(secret) = endpoint.client_secret {
                form.push(("client_secret", secret.expose()));
            }
            builder
        }
        ClientAuth::Basic => {
            // Both parts are form-urlencoded before Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let secret = endpoint
                .client_secret
                .map(|s| enc(s.expose()))
                .unwrap_or_default();
            builder.basic_auth(enc(endpoint.client_id), Some(secret))
        }
    }
}

/// What introspection says of a refresh token (RFC 7662 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Introspected {
    /// `false`: the provider no longer accepts it (rotated, revoked or
    /// expired).
    pub active: bool,
    /// When it expires (Unix seconds), if the provider said.
    pub exp: Option<i64>,
}

/// Asks the provider whether `refresh_token` is still active (RFC 7662),
/// authenticated as at the token endpoint, and until when. An inactive
/// answer means the provider no longer accepts it: rotated, revoked or
/// expired. An error means no answer could be had; the token stays in doubt.
pub async fn introspect(
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<Introspected, IntrospectError> {
    let url = endpoint
        .introspection_url
        .ok_or(IntrospectError::NoEndpoint)?;
    let mut form: Vec<(&str, &str)> = vec![
        ("token", refresh_token.expose()),
        ("token_type_hint", "refresh_token"),
    ];
    let builder = authenticated(http.post(url).timeout(timeout), endpoint, &mut form);
    let host = crate::provider::http::host_of(url);
    let response = builder
        .form(&form)
        .send()
        .await
        .map_err(|e| IntrospectError::Request {
            host: host.clone(),
            cause: describe(&e),
        })?;
    let status = response.status();
    let body = read_limited(response)
        .await
        .map_err(|cause| IntrospectError::Request {
            host: host.clone(),
            cause,
        })?;
    if status != reqwest::StatusCode::OK {
        return Err(IntrospectError::Status {
            host,
            status: status.as_u16(),
        });
    }
    #[derive(Deserialize)]
    struct Introspection {
        active: bool,
        exp: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Introspection>(&body)
        .map(|i| Introspected {
            active: i.active,
            exp: match i.exp.as_ref().map(parse_expires_in) {
                Some(ExpiresIn::Secs(at)) if at > 0 => Some(at),
                _ => None,
            },
        })
        .map_err(|_| IntrospectError::Unreadable { host })
}

/// Why introspection gave no answer: the token stays in doubt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectError {
    #[error("the credential has no introspection endpoint")]
    NoEndpoint,
    #[error("introspection endpoint {host}: {cause}")]
    Request { host: String, cause: String },
    #[error("introspection endpoint {host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("introspection endpoint {host} answered without an `active` field")]
    Unreadable { host: String },
}

/// Reads a response body of at most [`MAX_BODY`] bytes, into a buffer
/// that is wiped when dropped: a token response holds the new tokens in
/// the clear. Allocated whole up front, so that growing it never leaves an
/// unwiped copy behind in freed memory.
pub async fn read_limited(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut body = Zeroizing::new(Vec::with_capacity(MAX_BODY));
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

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), relative
/// to `now`; a date in the past means "now".
fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
    if (200..300).contains(&status) {
        return token_set(status, body);
    }
    if answer_may_be_lost(status) {
        // A gateway's answer: the provider's own may have been lost on the way.
        return Err(ProviderError::Unknown {
            message: format!(
                "token endpoint answered HTTP {status} (a gateway; the provider may have processed the request)"
            ),
        });
    }
    if status == 408 || status == 429 || status >= 500 {
        let said = serde_json::from_slice::<RawError>(body)
            .map(|e| match e.error_description {
                Some(d) => format!(" ({}: {})", sanitize(&e.error), sanitize(&d)),
                None => format!(" ({})", sanitize(&e.error)),
            })
            .unwrap_or_default();
        return Err(transient(format!(
            "token endpoint answered HTTP {status}{said}"
        )));
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

/// Whether an answer with this status comes from a gateway that may have
/// lost the provider's own answer after the provider acted: 502 and 504,
/// and the non-standard gateway codes (520–527 of some CDNs, 598 and 599
/// of some proxies). 500 and 503 are taken as the provider's own failure.
fn answer_may_be_lost(status: u16) -> bool {
    matches!(status, 502 | 504 | 520..=527 | 598 | 599)
}

/// A 2xx answer: a usable token set; a token response tokend cannot serve
/// (whose new refresh token, if any, is kept); or no known outcome, when
/// the body is not a token response at all (the provider may have rotated
/// the refresh token all the same).
fn token_set(status: u16, body: &[u8]) -> Result<TokenSet, ProviderError> {
    let raw: RawTokens = serde_json::from_slice(body).map_err(|_| ProviderError::Unknown {
        message: format!("token endpoint answered {status} without a JSON token response"),
    })?;
    let refresh_token = raw.refresh_token.filter(|r| !r.is_empty());
    let unusable = |why: String| ProviderError::Unusable {
        message: format!("token endpoint answered {status} {why}"),
        refresh_token: refresh_token.clone(),
    };
    let Some(access_token) = raw.access_token.filter(|t| !t.is_empty()) else {
        return Err(unusable("without an access_token".into()));
    };
    // RFC 6749 §5.1: the type is case-insensitive. An absent one is taken
    // as Bearer (some providers leave it out); any other is unusable here.
    if let Some(kind) = raw.token_type.filter(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(unusable(format!(
            "with a {:?} token (tokend serves bearer tokens only)",
            sanitize(&kind)
        )));
    }
    Ok(TokenSet {
        access_token,
        refresh_token,
        expires_in: raw
            .expires_in
            .as_ref()
            .map_or(ExpiresIn::Missing, parse_expires_in),
        refresh_expires_in: match raw.refresh_expires_in.as_ref().map(parse_expires_in) {
            Some(ExpiresIn::Secs(0)) => RefreshLifetime::Unlimited,
            Some(ExpiresIn::Secs(s)) if s > 0 => RefreshLifetime::Secs(s),
            _ => RefreshLifetime::Unsaid,
        },
    })
}

/// `expires_in` as a number (integer or not, any size: `as` saturates) or
/// a numeric string (some providers send "3600").
fn parse_expires_in(v: &serde_json::Value) -> ExpiresIn {
    let number = match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    };
    number.map_or(ExpiresIn::Unreadable, ExpiresIn::Secs)
}

/// Provider text goes into logs and messages: keep it short and printable.
/// `text` if it is an absolute http(s) URL: the user opens it, and tokenctl
/// may hand it to a browser.
fn web_url(text: &str) -> Option<String> {
    url::Url::parse(text.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(String::from)
}

fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_authorization_is_read_with_defaults_and_only_web_urls() {
        let d = parse_device_authorization(
            200,
            br#"{"device_code":"dc","user_code":"AB-CD","verification_uri":"https://idp/device","verification_uri_complete":"https://idp/device?user_code=AB-CD","expires_in":"300"}"#,
        )
        .unwrap();
        assert_eq!(
            (d.user_code.as_str(), d.expires_in, d.interval),
            ("AB-CD", 300, 5)
        );
        assert_eq!(
            d.verification_uri_complete.as_deref(),
            Some("https://idp/device?user_code=AB-CD")
        );
        let hostile =
            br#"{"device_code":"dc","user_code":"x","verification_uri":"file:///etc/passwd"}"#;
        assert!(
            parse_device_authorization(200, hostile)
                .unwrap_err()
                .contains("http(s)")
        );
        let refused = parse_device_authorization(400, br#"{"error":"unauthorized_client"}"#);
        assert!(refused.unwrap_err().contains("unauthorized_client"));
    }

    #[test]
    fn token_response_is_parsed_with_optional_fields() {
        let t = classify(
            200,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":"300"}"#,
            None,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.expires_in, ExpiresIn::Secs(300));
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
    fn a_2xx_that_is_not_a_token_response_has_no_known_outcome() {
        for status in [200, 201, 204] {
            for body in [&b"<html>oops</html>"[..], b"", b"[1]"] {
                assert!(matches!(
                    classify(status, body, None),
                    Err(ProviderError::Unknown { .. })
                ));
            }
        }
    }

    #[test]
    fn a_token_response_without_a_usable_access_token_keeps_its_refresh_token() {
        for body in [
            &br#"{"token_type":"Bearer","expires_in":60,"refresh_token":"rt2"}"#[..],
            br#"{"access_token":"","token_type":"Bearer","refresh_token":"rt2"}"#,
            br#"{"access_token":"a","token_type":"DPoP","refresh_token":"rt2"}"#,
        ] {
            match classify(200, body, None) {
                Err(ProviderError::Unusable { refresh_token, .. }) => {
                    assert_eq!(refresh_token.unwrap().expose(), "rt2")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            classify(200, br#"{}"#, None),
            Err(ProviderError::Unusable {
                refresh_token: None,
                ..
            })
        ));
    }

    #[test]
    fn a_gateway_error_is_in_doubt_and_a_provider_error_is_transient() {
        for status in [502, 504, 520, 524, 599] {
            assert!(matches!(
                classify(status, b"", None),
                Err(ProviderError::Unknown { .. })
            ));
        }
        for status in [500, 503, 501] {
            assert!(matches!(
                classify(status, b"", None),
                Err(ProviderError::Transient { .. })
            ));
        }
    }

    #[test]
    fn odd_expires_in_values_are_read_without_overflow() {
        let exp = |json: &str| {
            let body =
                format!(r#"{{"access_token":"a","token_type":"bearer","expires_in":{json}}}"#);
            classify(200, body.as_bytes(), None).unwrap().expires_in
        };
        assert_eq!(exp("1e15"), ExpiresIn::Secs(1_000_000_000_000_000));
        assert_eq!(exp("1e300"), ExpiresIn::Secs(i64::MAX));
        assert_eq!(exp("0"), ExpiresIn::Secs(0));
        assert_eq!(exp("-5"), ExpiresIn::Secs(-5));
        assert_eq!(exp("\"soon\""), ExpiresIn::Unreadable);
        assert_eq!(exp("null"), ExpiresIn::Missing);
        assert_eq!(exp("[1]"), ExpiresIn::Unreadable);
        let t = classify(200, br#"{"access_token":"a","token_type":"BEARER"}"#, None).unwrap();
        assert_eq!(t.expires_in, ExpiresIn::Missing);
    }

    #[test]
    fn a_token_type_other_than_bearer_is_refused() {
        let e = classify(200, br#"{"access_token":"a","token_type":"DPoP"}"#, None).unwrap_err();
        assert!(e.to_string().contains("DPoP"), "{e}");
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "600".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(600)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:38:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(600)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", "later".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn a_rate_limit_says_what_the_provider_said() {
        let e = classify(
            429,
            br#"{"error":"slow_down","error_description":"wait"}"#,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("slow_down: wait"), "{e}");
    }

    #[test]
    fn invalid_client_is_permanent_but_not_a_login_problem() {
        let e = classify(401, br#"{"error":"invalid_client"}"#, None).unwrap_err();
        assert!(matches!(e, ProviderError::Permanent { .. }));
        assert!(!e.needs_login());
    }
}
