//! The one HTTP client (rustls), shared by token exchanges and checks.

/// Builds the shared client. Per-request timeouts come from the config, so
/// that a reload changes them without rebuilding the client.
///
/// Building it loads the system's CA certificates, which can fail (a
/// minimal container without them): that is an error for the request that
/// needed HTTP, never a crash, and a daemon that only serves stored bearer
/// tokens never needs the certificates at all.
pub fn client() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        // A token endpoint that redirects is misconfigured; following it
        // could send a client secret somewhere unexpected.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| ClientError { source })
}

/// The HTTP client could not be built (no CA certificates, most likely).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot make HTTP requests: {} (install the system's CA certificates, e.g. the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle)",
    std::error::Error::source(.source).map_or_else(|| .source.to_string(), |s| s.to_string())
)]
pub struct ClientError {
    source: reqwest::Error,
}

/// A URL that cannot be used where it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{what} {url:?} is not a valid URL: {source}")]
    Invalid {
        what: String,
        url: String,
        source: url::ParseError,
    },
    #[error("{what} {url:?} must be an http:// or https:// URL")]
    NotHttp { what: String, url: String },
    #[error(
        "{what} {url:?} uses http:// to another machine, which would send secrets in clear: use https:// (http:// is accepted only for 127.0.0.1, ::1 and localhost)"
    )]
    Cleartext { what: String, url: String },
}

/// The host of a URL, for messages ("rejected by api.example").
pub fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the server".into())
}

/// Checks that `url` may carry secrets: `https://`, or `http://` only to
/// this machine (`127.0.0.0/8`, `::1`, `localhost`). Token, authorize,
/// introspection, revocation, device and check URLs all see a client
/// secret, a refresh token, a code or a bearer token, none of which may
/// cross the network in clear (docs/SECURITY.md).
pub fn validate_endpoint_url(url: &str, what: &str) -> Result<(), UrlError> {
    let parsed = parse_http(url, what)?;
    if parsed.scheme() == "https" || is_loopback(&parsed) {
        return Ok(());
    }
    Err(UrlError::Cleartext {
        what: what.into(),
        url: url.into(),
    })
}

/// True for a URL whose host is this machine's loopback interface.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A reqwest error as a short phrase, without the URL's query string.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        // The innermost cause tells a refused port from a TLS failure.
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        format!("could not connect ({cause})")
    } else if e.is_decode() || e.is_body() {
        "the response body could not be read".into()
    } else {
        // The source, not the Display: that one repeats the whole URL.
        std::error::Error::source(e)
            .map_or_else(|| "the request failed".to_string(), |s| s.to_string())
    }
}

/// Checks that `url` is an absolute http(s) URL; `what` names it in the error.
pub fn validate_url(url: &str, what: &str) -> Result<(), UrlError> {
    parse_http(url, what).map(drop)
}

fn parse_http(url: &str, what: &str) -> Result<url::Url, UrlError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        Ok(_) => Err(UrlError::NotHttp {
            what: what.into(),
            url: url.into(),
        }),
        Err(source) => Err(UrlError::Invalid {
            what: what.into(),
            url: url.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_is_accepted_only_to_loopback_hosts() {
        for ok in [
            "https://idp.example/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://[::1]:99/token",
            "http://localhost/token",
            "http://LOCALHOST:1/t",
        ] {
            assert!(validate_endpoint_url(ok, "the token URL").is_ok(), "{ok}");
        }
        for bad in [
            "http://example.invalid/token",
            "http://10.0.0.1/token",
            "http://localhost.example.com/token",
            "http://[::2]/token",
        ] {
            let e = validate_endpoint_url(bad, "the token URL")
                .unwrap_err()
                .to_string();
            assert!(e.contains("https://"), "{bad}: {e}");
        }
        assert!(validate_endpoint_url("ftp://127.0.0.1/x", "the token URL").is_err());
    }
}
