//! Every request and response, and the records they carry.
//!
//! Timestamps are wall-clock Unix seconds (UTC): expiry must survive
//! restarts and suspend, which a monotonic clock does not.

use crate::{ErrorCode, MAGIC, PROTOCOL_VERSION, RemoteError, Secret};
use serde::{Deserialize, Serialize};

/// The first frame a client sends. Its layout is frozen across versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u32,
}

impl Hello {
    pub fn current() -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        }
    }
}

/// The daemon's answer to [`Hello`]. Its layout is frozen across versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    pub accepted: bool,
    /// Why the hello was refused, or the daemon's version when accepted.
    pub message: String,
}

/// A local user or group, by numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Principal {
    User(u32),
    Group(u32),
}

/// A local user or group by name, for the daemon to resolve on its own
/// host. A Windows client sends this (a SID's string form `S-1-5-21-…`,
/// or an account name): the daemon's ids for users there are its own,
/// and a client cannot know them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamedPrincipal {
    User(String),
    Group(String),
}

/// The owner of a credential or an entry of its allow list as stored: by
/// name where the host that wrote it knew one, with the id it had there;
/// and what it stands for on the host of the daemon that answers (the
/// same uid number on two hosts is not the same person: docs/SECURITY.md,
/// "Users are names").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grantee {
    /// The user or group with the id it had on the host that wrote it.
    pub written: Principal,
    pub name: Option<String>,
    /// Its id on this host; `None`: the name is unknown here, and the
    /// entry grants nothing here.
    pub here: Option<u32>,
}

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

/// What `tokenctl add oauth2` sends: a preset plus overrides, resolved by the
/// daemon (which owns the preset table and the config's extra presets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Request {
    pub preset: Option<String>,
    /// Values a preset's URL templates need (e.g. `domain`, `tenant`).
    pub preset_vars: Vec<(String, String)>,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    /// Fetch the endpoints from this issuer's discovery document; explicit
    /// URLs still override what it says.
    pub issuer: Option<String>,
    pub introspection_url: Option<String>,
    /// The device authorization endpoint (RFC 8628), if the issuer's
    /// document or the preset does not give it. Absent from requests made
    /// before `login --device` existed, hence the default.
    #[serde(default)]
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub redirect_uri: Option<String>,
    pub client_auth: Option<ClientAuth>,
    /// PKCE S256: on unless the user said `--no-pkce`.
    pub pkce: bool,
    pub extra_params: Vec<(String, String)>,
}

/// The settings part of an add request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddKind {
    /// `preset` (e.g. `uppromote`) fills in the check URL.
    Bearer {
        check_url: Option<String>,
        preset: Option<String>,
    },
    OAuth2(OAuth2Request),
    ClientCredentials(OAuth2Request),
}

/// `tokenctl add …`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddCredential {
    pub name: String,
    pub description: String,
    pub kind: AddKind,
    /// The bearer token, or the client secret.
    pub secret: Secret,
    /// Replace an existing credential of that name instead of refusing.
    pub replace: bool,
    /// `--git-host`: the git hosts the credential is for.
    pub git_hosts: Vec<String>,
    /// `--api-url` and `--retry-on`: the proxy's upstream (a bearer preset
    /// may fill in the API URL).
    pub upstream: Upstream,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A valid access token, valid for at least `min_valid_secs` more.
    Token {
        name: String,
        min_valid_secs: u32,
    },
    /// "The API refused this token": refresh unless it was already replaced.
    Reject {
        name: String,
        token: Option<Secret>,
        /// The host that refused it, when the caller knows (git's `erase`):
        /// a bearer token, which cannot be refreshed, is then marked
        /// `failing: rejected by HOST`.
        rejected_by: Option<String>,
    },
    /// Refresh now.
    Refresh {
        name: String,
    },
    /// Probe a bearer credential's check URL.
    Check {
        name: String,
    },
    Show {
        name: String,
    },
    List,
    Status,
    Add(Box<AddCredential>),
    Remove {
        name: String,
    },
    Allow {
        name: String,
        principal: Principal,
    },
    Deny {
        name: String,
        principal: Principal,
    },
    /// Begin an authorization-code login; `redirect_uri` overrides the stored one
    /// (the CLI passes the loopback listener's actual address).
    LoginStart {
        name: String,
        redirect_uri: Option<String>,
    },
    /// Complete a login with the URL the provider redirected the browser to.
    LoginFinish {
        login_id: String,
        redirect_url: String,
    },
    /// Begin a device authorization login (RFC 8628): the daemon asks the
    /// credential's device authorization endpoint for a user code.
    DeviceLoginStart {
        name: String,
    },
    /// Wait for the user to approve the device login: the daemon polls the
    /// token endpoint and answers with the outcome, within `timeout_secs`
    /// (and never past the device code's expiry).
    DeviceLoginFinish {
        login_id: String,
        timeout_secs: u32,
    },
    /// [`Request::Allow`] naming the user or group, resolved by the
    /// daemon (protocol 5; what Windows clients send).
    AllowNamed {
        name: String,
        principal: NamedPrincipal,
    },
    /// [`Request::Deny`] naming the user or group (protocol 5).
    DenyNamed {
        name: String,
        principal: NamedPrincipal,
    },
    /// Change a credential's non-secret settings in place: its secrets,
    /// grant and tokens stay.
    Edit(Box<EditCredential>),
}

/// `tokenctl edit NAME`: what to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditCredential {
    pub name: String,
    pub description: Option<String>,
    /// `Some(None)` takes the API URL away.
    pub api_url: Option<Option<String>>,
    /// `Some(None)` goes back to [`DEFAULT_RETRY_ON`]; an empty list never
    /// retries.
    pub retry_on: Option<Option<Vec<u16>>>,
    /// A bearer token's check URL; `Some(None)` takes it away.
    pub check_url: Option<Option<String>>,
    /// An OAuth2 app's scopes, asked for from the next login (an
    /// authorization-code app) or the next token (client credentials).
    pub scopes: Option<Vec<String>>,
    pub git_hosts: Option<Vec<String>>,
}

impl Request {
    /// The credential a request is about, for logs (never a secret).
    pub fn credential(&self) -> Option<&str> {
        match self {
            Request::Token { name, .. }
            | Request::Reject { name, .. }
            | Request::Refresh { name }
            | Request::Check { name }
            | Request::Show { name }
            | Request::Remove { name }
            | Request::Allow { name, .. }
            | Request::Deny { name, .. }
            | Request::AllowNamed { name, .. }
            | Request::DenyNamed { name, .. }
            | Request::LoginStart { name, .. }
            | Request::DeviceLoginStart { name } => Some(name),
            Request::Add(add) => Some(&add.name),
            Request::Edit(edit) => Some(&edit.name),
            Request::List
            | Request::Status
            | Request::LoginFinish { .. }
            | Request::DeviceLoginFinish { .. } => None,
        }
    }

    /// A short name of the request, for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Token { .. } => "token",
            Request::Reject { .. } => "reject",
            Request::Refresh { .. } => "refresh",
            Request::Check { .. } => "check",
            Request::Show { .. } => "show",
            Request::List => "list",
            Request::Status => "status",
            Request::Add(_) => "add",
            Request::Remove { .. } => "rm",
            Request::Allow { .. } | Request::AllowNamed { .. } => "allow",
            Request::Deny { .. } | Request::DenyNamed { .. } => "deny",
            Request::LoginStart { .. } => "login",
            Request::LoginFinish { .. } => "login-finish",
            Request::DeviceLoginStart { .. } => "login-device",
            Request::DeviceLoginFinish { .. } => "login-device-finish",
            Request::Edit(_) => "edit",
        }
    }
}

/// The lifecycle state of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialState {
    /// A valid token is available (or, for bearer, the token is stored).
    Ready,
    /// An authorization-code credential without a usable grant.
    NeedsLogin,
    /// A refresh is in flight and no valid token is held.
    Refreshing,
    /// The provider or the check URL refused it; see the reason.
    Failing,
}

impl CredentialState {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Ready => "ready",
            CredentialState::NeedsLogin => "needs-login",
            CredentialState::Refreshing => "refreshing",
            CredentialState::Failing => "failing",
        }
    }
}

/// The result of probing a check URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub at: i64,
    /// The HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    pub ok: bool,
    pub message: String,
}

/// Everything `show` and `list` tell about a credential. No secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub name: String,
    pub description: String,
    pub spec: CredentialSpec,
    /// The owner's uid on this host (`u32::MAX` when its name is unknown
    /// here: nobody is the owner here).
    pub owner_uid: u32,
    /// The allow list as it applies on this host.
    pub allowed: Vec<Principal>,
    /// The owner and the allow list as stored, names included, and what
    /// each stands for here (absent from daemons before names).
    #[serde(default)]
    pub owner: Option<Grantee>,
    #[serde(default)]
    pub grantees: Vec<Grantee>,
    pub state: CredentialState,
    /// Why the state is not `ready` (the provider's error, the check's answer).
    pub reason: Option<String>,
    pub has_token: bool,
    pub has_refresh_token: bool,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub last_use_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_check: Option<CheckReport>,
}

/// `status`: the daemon as a whole. What describes the daemon's own
/// set-up (its pid, socket, store and the store's errors, its connections)
/// is for admins: `None` for anyone else, who is told only about the
/// credentials it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: Option<u32>,
    pub uptime_secs: u64,
    pub socket: Option<String>,
    pub database: Option<String>,
    pub connections: Option<u32>,
    pub credentials: Vec<CredentialSummary>,
    /// The HTTP API's socket, where the proxy is (admins only, like
    /// `socket`; `None` too when the HTTP API is off).
    #[serde(default)]
    pub http_socket: Option<String>,
    /// The proxy's loopback TCP addresses (`[proxy] listen`).
    #[serde(default)]
    pub proxy_listen: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSummary {
    pub name: String,
    pub kind: String,
    pub state: CredentialState,
    pub reason: Option<String>,
    pub expires_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
}

/// A token handed out. `generation` identifies the token for `reject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub token: Secret,
    pub expires_at: Option<i64>,
    pub generation: u64,
}

/// The start of a login: the URL to open, and how to finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginChallenge {
    pub login_id: String,
    pub authorize_url: String,
    pub redirect_uri: String,
    pub expires_at: i64,
}

/// The start of a device login (RFC 8628 §3.2): what the user must open and
/// type, and how to wait for the outcome. The device code stays in the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChallenge {
    pub login_id: String,
    /// Where the user enters the code.
    pub verification_uri: String,
    /// The same page with the code filled in, if the provider gives one.
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// When the device code expires (Unix seconds).
    pub expires_at: i64,
    /// The provider's polling interval, in seconds.
    pub interval_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Token(TokenReply),
    /// The request was carried out; the text says what happened.
    Done,
    Message(String),
    Credential(Box<CredentialInfo>),
    List(Vec<CredentialInfo>),
    Status(DaemonStatus),
    Check(CheckReport),
    Login(LoginChallenge),
    DeviceLogin(DeviceChallenge),
    Error(RemoteError),
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(RemoteError::new(code, message))
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
