//! A credential's non-secret settings, as stored (the `settings` column,
//! JSON) and as `show` tells them (bincode on the socket): the kind, its
//! endpoints and where each came from, its git hosts and the proxy's
//! upstream. The daemon holds one [`CredentialSpec`] per credential.

use serde::{Deserialize, Serialize};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Post,
    /// HTTP Basic with the client id and secret.
    Basic,
}

/// The non-secret settings of a credential, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSpec {
    /// A static token (UpPromote): never refreshed.
    Bearer {
        /// A `Box<str>`, 8 bytes less than a `String`: the variant, held
        /// once per credential, stays 48 bytes with the upstream's pointer.
        check_url: Option<Box<str>>,
        /// The git hosts `tokenctl git-credential` answers for (see
        /// [`CredentialSpec::git_hosts`]). Absent from settings stored
        /// before it existed, hence the default.
        #[serde(default)]
        git_hosts: Vec<String>,
        /// See [`CredentialSpec::upstream`].
        #[serde(default)]
        upstream: Option<Box<Upstream>>,
    },
    /// Authorization code grant with refresh tokens (Uptempo).
    ///
    /// The OAuth2 settings are boxed so that the enum, which the daemon
    /// holds once per credential, is sized for a bearer token (its check
    /// URL, git hosts and upstream, 56 bytes, not 168): 100,000 credentials fit in
    /// its memory goal. The wire
    /// format is the same.
    #[serde(rename = "oauth2")]
    OAuth2(Box<OAuth2Spec>),
    /// Client credentials grant: a new token before the old one expires.
    ClientCredentials(Box<ClientCredentialsSpec>),
}

impl CredentialSpec {
    /// The git hosts given with `tokenctl add … --git-host` (`host` or
    /// `host:port`, lowercase, as git names them), if any. The git helper
    /// answers only for these; when none is given, for the host of a
    /// bearer token's check URL, and for no host otherwise.
    pub fn git_hosts(&self) -> &[String] {
        match self {
            CredentialSpec::Bearer { git_hosts, .. } => git_hosts,
            CredentialSpec::OAuth2(s) => &s.git_hosts,
            CredentialSpec::ClientCredentials(s) => &s.git_hosts,
        }
    }

    /// The API the proxy sends this credential's requests to, and what
    /// makes it retry (`tokenctl add … --api-url`, `tokenctl edit`); `None`
    /// when none was given. Boxed: most credentials have none.
    pub fn upstream(&self) -> Option<&Upstream> {
        match self {
            CredentialSpec::Bearer { upstream, .. } => upstream.as_deref(),
            CredentialSpec::OAuth2(s) => s.upstream.as_deref(),
            CredentialSpec::ClientCredentials(s) => s.upstream.as_deref(),
        }
    }

    /// The upstream settings to change in place.
    pub fn upstream_mut(&mut self) -> &mut Option<Box<Upstream>> {
        match self {
            CredentialSpec::Bearer { upstream, .. } => upstream,
            CredentialSpec::OAuth2(s) => &mut s.upstream,
            CredentialSpec::ClientCredentials(s) => &mut s.upstream,
        }
    }

    /// How long before its refresh token's forecast the notify command
    /// is told `expiring`, overriding `refresh.warn_before_secs`
    /// (`tokenctl edit NAME --warn-before 3d`); `None` for a bearer token,
    /// or one that follows the config.
    pub fn warn_before_secs(&self) -> Option<u32> {
        match self {
            CredentialSpec::Bearer { .. } => None,
            CredentialSpec::OAuth2(s) => s.refresh_warn_before_secs,
            CredentialSpec::ClientCredentials(s) => s.refresh_warn_before_secs,
        }
    }

    /// The warning to change in place; `None` for a bearer token, which
    /// has no refresh token.
    pub fn warn_before_mut(&mut self) -> Option<&mut Option<u32>> {
        match self {
            CredentialSpec::Bearer { .. } => None,
            CredentialSpec::OAuth2(s) => Some(&mut s.refresh_warn_before_secs),
            CredentialSpec::ClientCredentials(s) => Some(&mut s.refresh_warn_before_secs),
        }
    }

    /// The kind as written on the command line.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSpec::Bearer { .. } => "bearer",
            CredentialSpec::OAuth2(_) => "oauth2",
            CredentialSpec::ClientCredentials(_) => "client-credentials",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Spec {
    pub auth_url: String,
    pub token_url: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub redirect_uri: Option<String>,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    pub extra_params: Vec<(String, String)>,
    /// Seconds before expiry to refresh, overriding the daemon's policy.
    pub refresh_margin_secs: Option<u32>,
    /// See [`CredentialSpec::warn_before_secs`].
    #[serde(default)]
    pub refresh_warn_before_secs: Option<u32>,
    /// The endpoints beyond these two, and where each came from. Absent
    /// from settings stored before discovery existed, hence the default.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// See [`CredentialSpec::git_hosts`].
    #[serde(default)]
    pub git_hosts: Vec<String>,
    /// See [`CredentialSpec::upstream`].
    #[serde(default)]
    pub upstream: Option<Box<Upstream>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentialsSpec {
    pub token_url: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub refresh_margin_secs: Option<u32>,
    /// See [`CredentialSpec::warn_before_secs`].
    #[serde(default)]
    pub refresh_warn_before_secs: Option<u32>,
    #[serde(default)]
    pub endpoints: Endpoints,
    /// See [`CredentialSpec::git_hosts`].
    #[serde(default)]
    pub git_hosts: Vec<String>,
    /// See [`CredentialSpec::upstream`].
    #[serde(default)]
    pub upstream: Option<Box<Upstream>>,
}

/// The statuses after which the proxy rejects the token it sent and
/// retries once, when a credential names none: what an API answers for a
/// token it no longer accepts (Uptempo: 403).
pub const DEFAULT_RETRY_ON: [u16; 2] = [401, 403];

/// Where tokend's proxy sends a credential's requests (docs/HTTP.md,
/// "Proxy"): `/v1/proxy/NAME/REST` goes to `api_url` followed by `REST`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The API's base URL (https, or http to this machine).
    pub api_url: Option<String>,
    /// The statuses after which the proxy rejects the token it sent and
    /// retries once; `None`: [`DEFAULT_RETRY_ON`].
    pub retry_on: Option<Vec<u16>>,
}

impl Upstream {
    /// The statuses that make the proxy retry.
    pub fn retry_on(&self) -> &[u16] {
        self.retry_on.as_deref().unwrap_or(&DEFAULT_RETRY_ON)
    }
}

/// Where an endpoint URL came from, so `show` can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointSource {
    /// Given on the command line (`--token-url` and the like).
    Flag,
    /// Filled in from a preset.
    Preset,
    /// Read from the issuer's discovery document (RFC 8414 / OpenID Discovery).
    Discovery,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Flag => "flag",
            EndpointSource::Preset => "preset",
            EndpointSource::Discovery => "discovery",
        }
    }
}

/// The names [`Endpoints::sources`] uses.
pub mod endpoint {
    pub const AUTHORIZATION: &str = "authorization";
    pub const TOKEN: &str = "token";
    pub const INTROSPECTION: &str = "introspection";
    pub const REVOCATION: &str = "revocation";
    pub const DEVICE_AUTHORIZATION: &str = "device_authorization";
    /// Not an endpoint: the issuer whose document was used (flag or preset).
    pub const ISSUER: &str = "issuer";
}

/// A provider's endpoints besides the authorize and token URLs, and the
/// origin of every endpoint. The introspection endpoint (RFC 7662) is what
/// lets tokend resolve a refresh whose outcome it never learned without
/// sending a possibly spent refresh token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The issuer whose discovery document filled these in, if any.
    pub issuer: Option<String>,
    pub introspection_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    /// Where each endpoint came from, by name (see [`endpoint`]).
    pub sources: Vec<(String, EndpointSource)>,
}

impl Endpoints {
    /// Where the endpoint `name` came from, if known.
    pub fn source(&self, name: &str) -> Option<EndpointSource> {
        self.sources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon holds one spec per credential: 100,000 of them must fit
    /// its memory goal (docs/BENCHMARKS.md), so what every credential gets
    /// is boxed or made rare, and the spec stays this size.
    #[test]
    fn a_spec_is_48_bytes() {
        assert_eq!(std::mem::size_of::<CredentialSpec>(), 48);
    }
}
