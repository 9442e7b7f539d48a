//! The one HTTP client (rustls), shared by token exchanges and checks.

/// Builds the shared client. Per-request timeouts come from the config, so
/// that a reload changes them without rebuilding the client.
///
/// Building it loads the system's CA certificates, which can fail (a
/// minimal container without them): that is an error for the request that
/// needed HTTP, never a crash, and a daemon that only serves stored bearer
/// tokens never needs the certificates at all.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        // A token endpoint that redirects is misconfigured; following it
        // could send a client secret somewhere unexpected.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            format!(
                "cannot make HTTP requests: {cause} (install the system's CA certificates, e.g. the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle)"
            )
        })
}

/// The host of a URL, for messages ("rejected by api.example").
pub fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the server".into())
}

/// Checks that `url` is an absolute http(s) URL; `what` names it in the error.
pub fn validate_url(url: &str, what: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(_) => Err(format!("{what} {url:?} must be an http:// or https:// URL")),
        Err(e) => Err(format!("{what} {url:?} is not a valid URL: {e}")),
    }
}
