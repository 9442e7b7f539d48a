//! Issuer discovery: from an issuer URL to its endpoints, through the
//! issuer's metadata document (OpenID Connect Discovery 1.0 and RFC 8414,
//! OAuth 2.0 Authorization Server Metadata). `tokenctl add --issuer` then
//! needs no endpoint URLs, and picks up the introspection endpoint that lets
//! tokend settle a refresh whose outcome it never learned.
//!
//! Trust comes from the issuer URL the admin typed: the document must name
//! exactly that issuer (RFC 8414 §3.3), and every endpoint taken from it
//! must be fit to carry secrets ([`validate_endpoint_url`]).

use crate::provider::http::validate_endpoint_url;
use serde_json::{Map, Value};
use std::time::Duration;

/// The largest document accepted, as for token responses: real ones are a
/// few KiB, and a hostile server must not make the daemon buffer more.
pub const MAX_DOCUMENT: usize = 64 * 1024;

/// The endpoints an issuer's document lists, every one checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    /// Absent for a server without the authorization-code grant.
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    /// Where the document was found.
    pub document_url: String,
}

/// One document URL tried without finding a document there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub url: String,
    /// What it answered, e.g. "404 Not Found".
    pub answer: String,
}

/// Why discovery gave no endpoints. Each message names the issuer and the
/// URL concerned, so the admin can compare with the provider's docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The issuer URL itself is unusable; nothing was fetched.
    #[error("{0}")]
    BadIssuer(String),
    /// The issuer URL may not carry secrets (or is no http(s) URL).
    #[error(transparent)]
    IssuerUrl(#[from] crate::provider::http::UrlError),
    /// No answer at all (refused, timed out, TLS): the other well-known
    /// URLs are on the same server, so they are not tried.
    #[error("cannot fetch the discovery document of issuer {issuer} from {url}: {message}")]
    Unreachable {
        issuer: String,
        url: String,
        message: String,
    },
    #[error("issuer {issuer} has no discovery document: tried {}", tried(.attempts))]
    NotFound {
        issuer: String,
        attempts: Vec<Attempt>,
    },
    #[error(
        "the discovery document at {url} is for issuer {found:?}, not {issuer:?}: they must be identical (RFC 8414 §3.3), so nothing was taken from it (check the issuer URL given, including any trailing slash)"
    )]
    IssuerMismatch {
        issuer: String,
        url: String,
        found: String,
    },
    /// A document that names the right issuer but cannot be used.
    #[error("the discovery document of issuer {issuer} at {url} {problem}")]
    Invalid {
        issuer: String,
        url: String,
        problem: String,
    },
}

fn tried(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{} ({})", a.url, a.answer))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fetches and checks the metadata of `issuer`. The document URLs are
/// tried in turn (see [`document_urls`]) until one answers 200 with a JSON
/// object; that document is then the answer, good or bad.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
) -> Result<Metadata, DiscoveryError> {
    let urls = document_urls(issuer)?;
    let mut attempts = Vec::new();
    for url in urls {
        match fetch(http, &url, timeout).await {
            Fetched::Document(doc) => return parse(issuer, &url, &doc),
            Fetched::Elsewhere(answer) => attempts.push(Attempt { url, answer }),
            Fetched::Failed(message) => {
                return Err(DiscoveryError::Unreachable {
                    issuer: issuer.to_string(),
                    url,
                    message,
                });
            }
        }
    }
    Err(DiscoveryError::NotFound {
        issuer: issuer.to_string(),
        attempts,
    })
}

/// Where an issuer's document may live, most likely first: OpenID
/// Discovery's `ISSUER/.well-known/openid-configuration`, then RFC 8414's
/// `/.well-known/oauth-authorization-server` inserted between host and
/// path (§3.1); for an issuer with a path also the inserted OpenID form
/// (RFC 8414 §5) and the appended RFC 8414 form some servers use.
///
/// The issuer is checked first (https unless loopback, no query or
/// fragment), so a cleartext issuer is refused before any request.
pub fn document_urls(issuer: &str) -> Result<Vec<String>, DiscoveryError> {
    let bad = DiscoveryError::BadIssuer;
    validate_endpoint_url(issuer, "the issuer")?;
    let parsed = url::Url::parse(issuer).map_err(|e| bad(format!("the issuer {issuer:?}: {e}")))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(format!(
            "the issuer {issuer:?} must not have a query or fragment (RFC 8414 §2)"
        )));
    }
    let base = issuer.trim_end_matches('/');
    let path = parsed.path().trim_end_matches('/').to_string();
    let at_root = |name: &str| {
        let mut url = parsed.clone();
        url.set_path(&format!("/.well-known/{name}{path}"));
        url.to_string()
    };
    let mut urls = vec![
        format!("{base}/.well-known/openid-configuration"),
        at_root("oauth-authorization-server"),
    ];
    if !path.is_empty() {
        urls.push(at_root("openid-configuration"));
        urls.push(format!("{base}/.well-known/oauth-authorization-server"));
    }
    Ok(urls)
}

/// What one document URL gave.
enum Fetched {
    /// 200 with a JSON object.
    Document(Map<String, Value>),
    /// Some other answer: the document may be at the next URL.
    Elsewhere(String),
    /// No answer, or a body too large or unreadable.
    Failed(String),
}

async fn fetch(http: &reqwest::Client, url: &str, timeout: Duration) -> Fetched {
    let sent = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Fetched::Failed(crate::provider::http::describe(&e)),
    };
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let redirect = if status.is_redirection() {
            ", redirects are not followed"
        } else {
            ""
        };
        return Fetched::Elsewhere(format!("answered {status}{redirect}"));
    }
    let body = match read_capped(response).await {
        Ok(body) => body,
        Err(message) => return Fetched::Failed(message),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(doc)) => Fetched::Document(doc),
        _ => Fetched::Elsewhere("answered 200 with something other than a JSON object".into()),
    }
}

/// The body, at most [`MAX_DOCUMENT`] bytes. (`provider::read_limited`
/// does the same but speaks of the token endpoint in its errors.)
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| crate::provider::http::describe(&e))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!(
                "the document is larger than {} KiB",
                MAX_DOCUMENT / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks a fetched document against the issuer and takes its endpoints.
/// Only the endpoints tokend uses are taken and checked; the document's
/// other URLs (JWKS, userinfo, documentation) are never contacted.
pub fn parse(
    issuer: &str,
    url: &str,
    doc: &Map<String, Value>,
) -> Result<Metadata, DiscoveryError> {
    let invalid = |problem: String| DiscoveryError::Invalid {
        issuer: issuer.to_string(),
        url: url.to_string(),
        problem,
    };
    match doc.get("issuer") {
        Some(Value::String(found)) if found == issuer => {}
        Some(Value::String(found)) => {
            return Err(DiscoveryError::IssuerMismatch {
                issuer: issuer.to_string(),
                url: url.to_string(),
                found: found.clone(),
            });
        }
        _ => return Err(invalid("names no issuer".into())),
    }
    let endpoint = |field: &str| -> Result<Option<String>, DiscoveryError> {
        match doc.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => {
                validate_endpoint_url(value, &format!("its {field}"))
                    .map_err(|e| invalid(format!("is unusable: {e}")))?;
                Ok(Some(value.clone()))
            }
            Some(_) => Err(invalid(format!("has a {field} that is not a string"))),
        }
    };
    let token_endpoint =
        endpoint("token_endpoint")?.ok_or_else(|| invalid("has no token_endpoint".into()))?;
    Ok(Metadata {
        issuer: issuer.to_string(),
        authorization_endpoint: endpoint("authorization_endpoint")?,
        token_endpoint,
        introspection_endpoint: endpoint("introspection_endpoint")?,
        revocation_endpoint: endpoint("revocation_endpoint")?,
        device_authorization_endpoint: endpoint("device_authorization_endpoint")?,
        document_url: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example/realms/acme";
    const URL: &str = "https://idp.example/realms/acme/.well-known/openid-configuration";

    fn doc(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("an object"),
        }
    }

    fn keycloak() -> Value {
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://idp.example/realms/acme/protocol/openid-connect/auth",
            "token_endpoint": "https://idp.example/realms/acme/protocol/openid-connect/token",
            "introspection_endpoint": "https://idp.example/realms/acme/protocol/openid-connect/token/introspect",
            "revocation_endpoint": "https://idp.example/realms/acme/protocol/openid-connect/revoke",
            "device_authorization_endpoint": "https://idp.example/realms/acme/protocol/openid-connect/auth/device",
            "jwks_uri": "http://insecure.example/not-used",
            "grant_types_supported": ["authorization_code"],
        })
    }

    #[test]
    fn every_endpoint_is_taken_from_a_matching_document() {
        let m = parse(ISSUER, URL, &doc(keycloak())).unwrap();
        assert_eq!(m.issuer, ISSUER);
        assert_eq!(m.document_url, URL);
        assert!(m.token_endpoint.ends_with("/openid-connect/token"));
        assert!(m.authorization_endpoint.unwrap().ends_with("/auth"));
        assert!(m.introspection_endpoint.unwrap().ends_with("/introspect"));
        assert!(m.revocation_endpoint.unwrap().ends_with("/revoke"));
        assert!(
            m.device_authorization_endpoint
                .unwrap()
                .ends_with("/device")
        );
    }

    #[test]
    fn optional_endpoints_may_be_absent() {
        let m = parse(
            ISSUER,
            URL,
            &doc(json!({"issuer": ISSUER, "token_endpoint": "https://idp.example/t"})),
        )
        .unwrap();
        assert_eq!(m.authorization_endpoint, None);
        assert_eq!(m.introspection_endpoint, None);
    }

    #[test]
    fn an_issuer_that_differs_at_all_is_refused_naming_both() {
        for found in [
            "https://idp.example/realms/acme/",
            "https://idp.example/realms/other",
            "https://IDP.example/realms/acme",
            "http://idp.example/realms/acme",
        ] {
            let mut d = keycloak();
            d["issuer"] = json!(found);
            let e = parse(ISSUER, URL, &doc(d)).unwrap_err();
            assert!(
                matches!(e, DiscoveryError::IssuerMismatch { .. }),
                "{found}: {e}"
            );
            let text = e.to_string();
            assert!(text.contains(found) && text.contains(ISSUER), "{text}");
        }
        let e = parse(ISSUER, URL, &doc(json!({"token_endpoint": "https://t"}))).unwrap_err();
        assert!(e.to_string().contains("names no issuer"), "{e}");
    }

    #[test]
    fn a_document_without_a_token_endpoint_is_refused() {
        let e = parse(ISSUER, URL, &doc(json!({"issuer": ISSUER}))).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("no token_endpoint") && text.contains(ISSUER) && text.contains(URL),
            "{text}"
        );
    }

    #[test]
    fn a_cleartext_or_malformed_endpoint_is_refused() {
        for (field, value) in [
            ("token_endpoint", json!("http://idp.example/token")),
            (
                "introspection_endpoint",
                json!("http://10.0.0.1/introspect"),
            ),
            ("revocation_endpoint", json!("not a url")),
            ("authorization_endpoint", json!(42)),
        ] {
            let mut d = keycloak();
            d[field] = value;
            let e = parse(ISSUER, URL, &doc(d)).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn loopback_http_endpoints_are_accepted() {
        let issuer = "http://127.0.0.1:8080";
        let m = parse(
            issuer,
            "http://127.0.0.1:8080/.well-known/openid-configuration",
            &doc(json!({"issuer": issuer, "token_endpoint": "http://127.0.0.1:8080/token"})),
        )
        .unwrap();
        assert_eq!(m.token_endpoint, "http://127.0.0.1:8080/token");
    }

    #[test]
    fn document_urls_follow_openid_discovery_then_rfc_8414() {
        assert_eq!(
            document_urls("https://idp.example").unwrap(),
            [
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            document_urls(ISSUER).unwrap(),
            [
                "https://idp.example/realms/acme/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/realms/acme",
                "https://idp.example/.well-known/openid-configuration/realms/acme",
                "https://idp.example/realms/acme/.well-known/oauth-authorization-server",
            ]
        );
        // A trailing slash is not doubled (the document must still match it).
        assert_eq!(
            document_urls("http://127.0.0.1:5/").unwrap()[0],
            "http://127.0.0.1:5/.well-known/openid-configuration"
        );
    }

    #[test]
    fn an_unusable_issuer_is_refused_before_any_request() {
        let e = document_urls("http://example.invalid").unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let e = document_urls("https://idp.example/?tenant=a").unwrap_err();
        assert!(e.to_string().contains("query"), "{e}");
        assert!(document_urls("idp.example").is_err());
    }
}
