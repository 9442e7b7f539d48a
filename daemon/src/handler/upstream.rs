//! `tokenctl add … --api-url URL --retry-on 401,403` and `tokenctl edit`:
//! where the proxy sends a credential's requests, and which answers make it
//! reject the token it sent and try once more (docs/HTTP.md, "Proxy").

use crate::error::Error;
use crate::provider::http::validate_endpoint_url;
use tokend_proto::{CredentialSpec, Upstream};

/// More would be a list of guesses, not the statuses an API refuses with.
const MAX_RETRY_STATUSES: usize = 16;

/// `spec` with the settings `given` put over its upstream (a preset's):
/// the URL checked, the statuses checked and sorted. An upstream with
/// neither is none.
pub(super) fn with_upstream(
    mut spec: CredentialSpec,
    given: Upstream,
) -> Result<CredentialSpec, Error> {
    let current = spec.upstream().cloned().unwrap_or_default();
    let checked = Upstream {
        api_url: given.api_url.or(current.api_url).map(api_url).transpose()?,
        retry_on: given
            .retry_on
            .or(current.retry_on)
            .map(retry_on)
            .transpose()?,
    };
    *spec.upstream_mut() = (checked != Upstream::default()).then(|| Box::new(checked));
    Ok(spec)
}

/// The proxy sends the credential's token there, so it must be fit to
/// carry secrets (https, or http to this machine); the request's path and
/// query are appended to it, so it has neither query nor fragment.
fn api_url(url: String) -> Result<String, Error> {
    validate_endpoint_url(&url, "the API URL")?;
    let parsed = url::Url::parse(&url).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::InvalidArgument(format!(
            "the API URL {url:?} has a query or a fragment; give the API's base URL, e.g. https://api.example.com/v1/"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::InvalidArgument(
            "the API URL must not carry a user name or password: the proxy adds the credential's token".into(),
        ));
    }
    Ok(url)
}

/// Error statuses only (4xx, 5xx), each once, sorted.
fn retry_on(mut statuses: Vec<u16>) -> Result<Vec<u16>, Error> {
    if let Some(bad) = statuses.iter().find(|s| !(400..=599).contains(*s)) {
        return Err(Error::InvalidArgument(format!(
            "--retry-on {bad}: only error statuses (400 to 599) can mean the token was refused"
        )));
    }
    statuses.sort_unstable();
    statuses.dedup();
    if statuses.len() > MAX_RETRY_STATUSES {
        return Err(Error::InvalidArgument(format!(
            "--retry-on: at most {MAX_RETRY_STATUSES} statuses may be given"
        )));
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer() -> CredentialSpec {
        CredentialSpec::Bearer {
            check_url: None,
            git_hosts: Vec::new(),
            upstream: None,
        }
    }

    fn upstream(url: Option<&str>, retry: Option<Vec<u16>>) -> Upstream {
        Upstream {
            api_url: url.map(Into::into),
            retry_on: retry,
        }
    }

    #[test]
    fn an_api_url_is_https_or_loopback_without_query_or_credentials() {
        for good in [
            "https://api.example.com/v1/",
            "http://127.0.0.1:8080",
            "http://[::1]/api",
        ] {
            let spec = with_upstream(bearer(), upstream(Some(good), None)).unwrap();
            assert_eq!(spec.upstream().unwrap().api_url.as_deref(), Some(good));
        }
        for bad in [
            "http://api.example.com/",
            "ftp://example.com/",
            "https://api.example.com/?key=1",
            "https://api.example.com/#top",
            "https://user:pw@api.example.com/",
            "api.example.com",
        ] {
            assert!(
                with_upstream(bearer(), upstream(Some(bad), None)).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn retry_statuses_are_error_statuses_sorted_once() {
        let spec = with_upstream(bearer(), upstream(None, Some(vec![403, 401, 403]))).unwrap();
        assert_eq!(spec.upstream().unwrap().retry_on(), [401, 403]);
        assert!(with_upstream(bearer(), upstream(None, Some(vec![302]))).is_err());
        assert!(with_upstream(bearer(), upstream(None, Some((400..420).collect()))).is_err());
        let never = with_upstream(bearer(), upstream(None, Some(Vec::new()))).unwrap();
        assert!(
            never.upstream().unwrap().retry_on().is_empty(),
            "an empty list never retries"
        );
    }

    #[test]
    fn no_upstream_given_is_none_and_the_default_retries_on_401_and_403() {
        assert!(
            with_upstream(bearer(), Upstream::default())
                .unwrap()
                .upstream()
                .is_none()
        );
        let spec = with_upstream(bearer(), upstream(Some("https://a.example/"), None)).unwrap();
        assert_eq!(spec.upstream().unwrap().retry_on(), [401, 403]);
    }
}
