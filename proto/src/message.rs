//! Every request and response, and the records they carry.
//!
//! Timestamps are wall-clock Unix seconds (UTC): expiry must survive
//! restarts and suspend, which a monotonic clock does not.

use crate::spec::{ClientAuth, CredentialSpec, Upstream};
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
    /// [`Request::Token`] saying what the token is for (protocol 6), so
    /// that the audit trail tells `tokenctl header` from `exec`, `git`
    /// and kubectl's plugin.
    TokenFor {
        name: String,
        min_valid_secs: u32,
        purpose: TokenUse,
    },
    /// The audit trail: admins read all of it, anyone else the entries
    /// about the credentials it owns (protocol 6).
    Audit(AuditQuery),
}

/// What a token was asked for, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenUse {
    /// `tokenctl token` (and any client that says nothing more).
    Token,
    /// `tokenctl header`.
    Header,
    /// `tokenctl exec`.
    Exec,
    /// `tokenctl git-credential`.
    Git,
    /// kubectl's exec credential plugin (`tokenctl exec-credential`).
    Kube,
}

impl TokenUse {
    /// The operation's name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUse::Token => "token",
            TokenUse::Header => "header",
            TokenUse::Exec => "exec",
            TokenUse::Git => "git",
            TokenUse::Kube => "kube",
        }
    }
}

/// `tokenctl audit`: which entries, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only this credential's entries.
    pub credential: Option<String>,
    /// Only entries at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only this user's entries: a user name, or a uid in decimal.
    pub user: Option<String>,
    /// At most this many entries (the daemon caps it too).
    pub limit: u32,
}

/// One entry of the audit trail: who asked for what, when, and how it
/// ended. Never a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the request was answered (Unix ms, the daemon's clock).
    pub at_ms: i64,
    /// The credential the request named (cut to a loggable length), if any.
    pub credential: Option<String>,
    /// What was asked: `token`, `header`, `exec`, `git`, `kube`, `http`,
    /// `proxy`, `events`, `add`, `replace`, `rm`, `edit`, `login`, `allow`, `deny`,
    /// `refresh`, `reject`.
    pub op: String,
    /// `ok`, `refused` (not allowed), `not_found` or `failed`.
    pub outcome: String,
    /// Why it was refused or failed, in short (never a secret).
    pub reason: Option<String>,
    /// The peer's uid as the kernel reported it.
    pub uid: u32,
    /// The peer's user name, where this host knows one.
    pub user: Option<String>,
    /// The peer's process id, where the kernel reported it.
    pub pid: Option<i32>,
    /// The peer's executable as read when the request came (`gone` if the
    /// process had exited; `None` where it cannot be read at all).
    pub exe: Option<String>,
    /// The fleet member that answered (PostgreSQL stores only).
    pub member: Option<String>,
    /// How many identical requests (same process, operation, credential
    /// and outcome) this entry stands for, from `at_ms` to the daemon's
    /// next write of the trail (about a second).
    pub count: u32,
    /// Which credential of that name the request met (its incarnation,
    /// new at every add and replace); `None` when there was none (a
    /// `not_found`) or the request named none. A user who is not an admin
    /// reads only the entries of the credentials it owns now, never those
    /// of an earlier credential of the same name.
    #[serde(default)]
    pub incarnation: Option<i64>,
}

/// `tokenctl edit NAME`: what to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditCredential {
    pub name: String,
    pub description: Option<String>,
    /// `Some(None)` takes the API URL away.
    pub api_url: Option<Option<String>>,
    /// `Some(None)` goes back to [`crate::DEFAULT_RETRY_ON`]; an empty list never
    /// retries.
    pub retry_on: Option<Option<Vec<u16>>>,
    /// A bearer token's check URL; `Some(None)` takes it away.
    pub check_url: Option<Option<String>>,
    /// An OAuth2 app's scopes, asked for from the next login (an
    /// authorization-code app) or the next token (client credentials).
    pub scopes: Option<Vec<String>>,
    pub git_hosts: Option<Vec<String>>,
    /// How long before the refresh token's forecast `expiring` is
    /// notified (seconds); `Some(None)` follows `refresh.warn_before_secs`
    /// again.
    pub warn_before_secs: Option<Option<u32>>,
}

impl Request {
    /// The credential a request is about, for logs (never a secret).
    pub fn credential(&self) -> Option<&str> {
        match self {
            Request::Token { name, .. }
            | Request::TokenFor { name, .. }
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
            Request::Audit(query) => query.credential.as_deref(),
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
            Request::TokenFor { purpose, .. } => purpose.as_str(),
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
            Request::Audit(_) => "audit",
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
    /// When the refresh token is expected to stop working (Unix seconds):
    /// the provider's `refresh_expires_in`, else its introspection's
    /// `exp`; `None` when unknown or unlimited. A login is needed before.
    #[serde(default)]
    pub refresh_expires_at: Option<i64>,
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
    /// Open connections per user, by uid (admins only, like `connections`;
    /// empty for anyone else).
    #[serde(default)]
    pub connections_by_user: Vec<UserConnections>,
}

/// One user's open connections, as `status` shows them to admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConnections {
    pub uid: u32,
    pub connections: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSummary {
    pub name: String,
    pub kind: String,
    pub state: CredentialState,
    pub reason: Option<String>,
    pub expires_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    /// See [`CredentialInfo::refresh_expires_at`].
    #[serde(default)]
    pub refresh_expires_at: Option<i64>,
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
    /// The audit trail's entries asked for, newest first (protocol 6).
    Audit(Vec<AuditEntry>),
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(RemoteError::new(code, message))
    }
}
