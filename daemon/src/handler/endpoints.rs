//! Which URL each endpoint of an OAuth2 credential gets, and where it came
//! from: a flag on the command line beats the issuer's discovery document,
//! which beats the preset. The origin is stored with the credential, so
//! `tokenctl show` can tell an admin why tokend talks to a given URL.

use crate::config::PresetConfig;
use crate::config::preset;
use crate::error::Error;
use crate::provider::discovery::{self, DiscoveryError, Metadata};
use crate::provider::http::{ClientError, validate_endpoint_url};
use std::time::Duration;
use tokend_proto::endpoint::{
    AUTHORIZATION, DEVICE_AUTHORIZATION, INTROSPECTION, ISSUER, REVOCATION, TOKEN,
};
use tokend_proto::{EndpointSource, Endpoints, OAuth2Request};

/// A credential's endpoints, every one checked with [`validate_endpoint_url`].
#[derive(Debug)]
pub struct Resolved {
    /// Empty for a client-credentials app, which has no authorize step.
    pub auth_url: String,
    pub token_url: String,
    pub endpoints: Endpoints,
}

/// Resolves every endpoint of `req`. Discovery runs when the request or
/// the preset names an issuer; `http` is called only then, so adding a
/// credential with plain URLs never needs the HTTP client (nor the CA
/// certificates it loads).
pub async fn resolve<'a>(
    req: &OAuth2Request,
    preset: Option<&PresetConfig>,
    needs_auth_url: bool,
    http: impl FnOnce() -> Result<&'a reqwest::Client, ClientError>,
    timeout: Duration,
) -> Result<Resolved, Error> {
    let mut pick = Picker {
        vars: &req.preset_vars,
        sources: Vec::new(),
    };
    let template = |f: fn(&PresetConfig) -> &Option<String>| preset.and_then(|p| f(p).as_ref());
    let issuer = pick.pick(
        (ISSUER, "the issuer"),
        req.issuer.as_ref(),
        None,
        template(|p| &p.issuer),
    )?;
    let found = match &issuer {
        Some(issuer) => Some(discover(http, issuer, timeout).await?),
        None => None,
    };
    let found = found.as_ref();
    let auth_url = if needs_auth_url {
        pick.pick(
            (AUTHORIZATION, "the authorize URL"),
            req.auth_url.as_ref(),
            found.and_then(|m| m.authorization_endpoint.as_ref()),
            template(|p| &p.auth_url),
        )?
        .ok_or_else(|| missing("--auth-url", "authorization_endpoint", found))?
    } else {
        String::new()
    };
    let token_url = pick
        .pick(
            (TOKEN, "the token URL"),
            req.token_url.as_ref(),
            found.map(|m| &m.token_endpoint),
            template(|p| &p.token_url),
        )?
        .ok_or_else(|| missing("--token-url", "token_endpoint", found))?;
    let introspection_url = pick.pick(
        (INTROSPECTION, "the introspection URL"),
        req.introspection_url.as_ref(),
        found.and_then(|m| m.introspection_endpoint.as_ref()),
        template(|p| &p.introspection_url),
    )?;
    let revocation_url = pick.pick(
        (REVOCATION, "the revocation URL"),
        None,
        found.and_then(|m| m.revocation_endpoint.as_ref()),
        template(|p| &p.revocation_url),
    )?;
    let device_authorization_url = pick.pick(
        (DEVICE_AUTHORIZATION, "the device authorization URL"),
        req.device_authorization_url.as_ref(),
        found.and_then(|m| m.device_authorization_endpoint.as_ref()),
        template(|p| &p.device_authorization_url),
    )?;
    Ok(Resolved {
        auth_url,
        token_url,
        endpoints: Endpoints {
            issuer,
            introspection_url,
            revocation_url,
            device_authorization_url,
            sources: pick.sources,
        },
    })
}

/// Takes the first of flag, discovered value and preset template that is
/// set, checks it, and records where it came from.
struct Picker<'r> {
    vars: &'r [(String, String)],
    sources: Vec<(String, EndpointSource)>,
}

impl Picker<'_> {
    fn pick(
        &mut self,
        (name, what): (&str, &str),
        flag: Option<&String>,
        discovered: Option<&String>,
        template: Option<&String>,
    ) -> Result<Option<String>, Error> {
        let (url, source) = if let Some(url) = flag {
            (url.clone(), EndpointSource::Flag)
        } else if let Some(url) = discovered {
            (url.clone(), EndpointSource::Discovery)
        } else if let Some(template) = template {
            let url = preset::fill(template, self.vars)?;
            (url, EndpointSource::Preset)
        } else {
            return Ok(None);
        };
        validate_endpoint_url(&url, what)?;
        self.sources.push((name.to_string(), source));
        Ok(Some(url))
    }
}

async fn discover<'a>(
    http: impl FnOnce() -> Result<&'a reqwest::Client, ClientError>,
    issuer: &str,
    timeout: Duration,
) -> Result<Metadata, Error> {
    // Checked before the client is built: a cleartext issuer is refused
    // without a single packet sent to it.
    discovery::document_urls(issuer).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let client = http()?;
    let found = discovery::discover(client, issuer, timeout)
        .await
        .map_err(|e| match e {
            DiscoveryError::Unreachable { .. } => Error::Provider(e.to_string()),
            _ => Error::InvalidArgument(e.to_string()),
        })?;
    tracing::info!(issuer, document = %found.document_url, "endpoints discovered");
    Ok(found)
}

/// The error for a required endpoint nobody gave.
fn missing(flag: &str, field: &str, found: Option<&Metadata>) -> Error {
    Error::InvalidArgument(match found {
        Some(m) => format!(
            "{flag} is required: the discovery document of issuer {} ({}) lists no {field}",
            m.issuer, m.document_url
        ),
        None => format!("{flag} is required (or --issuer, or a --preset that sets it)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_network<'a>() -> Result<&'a reqwest::Client, ClientError> {
        panic!("no discovery expected")
    }

    async fn resolve_plain(
        req: &OAuth2Request,
        preset: Option<&PresetConfig>,
    ) -> Result<Resolved, Error> {
        resolve(req, preset, true, no_network, Duration::from_secs(1)).await
    }

    fn uptempo8() -> PresetConfig {
        preset::lookup(&Default::default(), "uptempo8").unwrap()
    }

    fn vars() -> Vec<(String, String)> {
        vec![
            ("domain".into(), "acme.uptempo.io".into()),
            ("tenant".into(), "acme".into()),
        ]
    }

    #[tokio::test]
    async fn a_flag_beats_the_preset_and_every_source_is_recorded() {
        let req = OAuth2Request {
            preset_vars: vars(),
            token_url: Some("https://proxy.example/token".into()),
            ..Default::default()
        };
        let r = resolve_plain(&req, Some(&uptempo8())).await.unwrap();
        assert_eq!(r.token_url, "https://proxy.example/token");
        assert!(r.auth_url.ends_with("/openid-connect/auth"));
        let e = &r.endpoints;
        assert!(
            e.introspection_url
                .as_deref()
                .unwrap()
                .ends_with("/introspect")
        );
        assert!(e.revocation_url.as_deref().unwrap().ends_with("/revoke"));
        assert!(
            e.device_authorization_url
                .as_deref()
                .unwrap()
                .ends_with("/device")
        );
        assert_eq!(e.issuer, None);
        assert_eq!(e.source(TOKEN), Some(EndpointSource::Flag));
        for name in [
            AUTHORIZATION,
            INTROSPECTION,
            REVOCATION,
            DEVICE_AUTHORIZATION,
        ] {
            assert_eq!(e.source(name), Some(EndpointSource::Preset), "{name}");
        }
    }

    #[tokio::test]
    async fn a_missing_endpoint_names_the_flag() {
        let req = OAuth2Request {
            token_url: Some("https://idp.example/token".into()),
            ..Default::default()
        };
        let e = resolve_plain(&req, None).await.unwrap_err();
        assert!(e.to_string().contains("--auth-url is required"), "{e}");
        let r = resolve(&req, None, false, no_network, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(r.auth_url, "");
        assert_eq!(r.endpoints.source(AUTHORIZATION), None);
    }

    #[tokio::test]
    async fn every_given_url_is_checked_for_cleartext() {
        let req = OAuth2Request {
            auth_url: Some("https://idp.example/auth".into()),
            token_url: Some("https://idp.example/token".into()),
            introspection_url: Some("http://idp.example/introspect".into()),
            ..Default::default()
        };
        let e = resolve_plain(&req, None).await.unwrap_err();
        assert!(e.to_string().contains("the introspection URL"), "{e}");
    }

    #[tokio::test]
    async fn a_cleartext_issuer_is_refused_before_the_client_is_built() {
        let req = OAuth2Request {
            issuer: Some("http://example.invalid".into()),
            ..Default::default()
        };
        let e = resolve_plain(&req, None).await.unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
