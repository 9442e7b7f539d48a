//! tokenctl's command line (docs/DESIGN.md §8). Scripts depend on it: extend, never
//! rename. It lives in the library so that `tokend-assets` can generate the
//! man page and shell completions from the definition tokenctl parses.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Get valid API tokens from the local tokend, and manage its credentials.
#[derive(Parser, Debug)]
// `about` is this doc comment (the crate description is the library's): it
// is the NAME line of the man page as well as the head of `--help`.
#[command(name = "tokenctl", version)]
pub struct Cli {
    /// The daemon's socket (default: $TOKEND_SOCKET, the user's daemon, then the system's).
    #[arg(long, global = true, value_name = "PATH", env = "TOKEND_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output on commands that read.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Add a credential (secrets are read from a file or stdin, never from arguments).
    #[command(subcommand)]
    Add(AddCommand),
    /// Log in an oauth2 credential: prints the authorize URL (or, with --device, the
    /// verification URL and user code), waits for the approval.
    Login(LoginArgs),
    /// Print a valid access token, alone on one line.
    Token {
        name: String,
        /// The token must stay valid at least this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        min_valid: u32,
    },
    /// Print "Authorization: Bearer <token>".
    Header {
        name: String,
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        min_valid: u32,
    },
    /// Run a command with the token in its environment.
    Exec {
        name: String,
        /// The environment variable that carries the token.
        #[arg(long, value_name = "VAR", default_value = "TOKEND_TOKEN")]
        env: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// git's credential helper: answers git's `get` with the token (see `git help credential`).
    ///
    /// Use it with `git config credential.https://HOST.helper '!tokenctl git-credential NAME'`.
    /// git adds the operation: `get` prints the token (as `authtype=Bearer` and
    /// `credential=` when git offers `capability[]=authtype`, otherwise as
    /// `username=` and `password=`); `erase`, which git sends after the server
    /// refused a credential, reports that token as rejected (refreshing it,
    /// marking a bearer token `failing: rejected by HOST`, or nothing if it was
    /// already replaced); `store` and any other operation are ignored. Only the
    /// credential's git hosts (`add --git-host`; default: the host of a bearer
    /// token's check URL, else none) are answered, over https or http to this
    /// machine: for any other request it prints nothing, notes why on stderr
    /// and exits 0. On an unknown or unusable credential it exits non-zero
    /// with the reason on stderr, and git asks its next helper.
    GitCredential(GitCredentialArgs),
    /// kubectl's exec credential plugin: print an ExecCredential with the token.
    ///
    /// The JSON (`client.authentication.k8s.io/v1`, or the `apiVersion` that
    /// `$KUBERNETES_EXEC_INFO` asks for: v1 or v1beta1) carries `status.token`
    /// and, when the token expires, `status.expirationTimestamp`. Use it in a
    /// kubeconfig's `users[].user.exec` (see the README).
    ExecCredential {
        /// The credential whose token kubectl gets.
        name: String,
    },
    /// Report that the API refused the token: refresh now.
    Reject {
        name: String,
        /// Read the refused token from stdin; nothing happens if it was already replaced.
        #[arg(long)]
        token_stdin: bool,
    },
    /// Refresh now.
    Refresh { name: String },
    /// Probe a bearer credential's check URL.
    Check { name: String },
    /// Show one credential (no secrets).
    Show { name: String },
    /// Remove a credential.
    Rm { name: String },
    /// List credentials.
    List,
    /// The daemon and every credential's state.
    Status,
    /// The audit trail: every token handed out and every change, oldest first.
    ///
    /// One line per entry: the time (UTC), the credential, the operation (token,
    /// header, exec, git, kube, http, proxy, add, replace, rm, edit, login,
    /// allow, deny, refresh, reject), the outcome (ok, refused, not_found,
    /// failed), the peer's uid and user, its pid and executable ("gone" if it
    /// had exited). Admins read every entry; anyone else only the entries
    /// about the credentials it owns.
    Audit(AuditArgs),
    /// Change a credential's settings in place; its secrets, grant and tokens stay.
    ///
    /// Only what is given changes. The endpoints and the client id a refresh
    /// uses are not editable: `add --replace` makes a new credential.
    Edit(EditArgs),
    /// Print the base URL that sends a program's requests through tokend's proxy.
    ///
    /// The proxy adds the credential's token and, when the API refuses it,
    /// gets a new one and sends the request once more. The URL is the
    /// loopback TCP one when the daemon has `[proxy] listen`; else the HTTP
    /// API socket's, to use with `curl --unix-socket SOCKET URL` (the socket
    /// is printed on stderr). Append the API's path to it.
    ProxyUrl { name: String },
    /// Let a local user or group use a credential's token.
    Allow(PrincipalArgs),
    /// Take a user or group off a credential's allow list.
    Deny(PrincipalArgs),
}

#[derive(Subcommand, Debug)]
pub enum AddCommand {
    /// A static bearer token (e.g. UpPromote).
    Bearer(AddBearer),
    /// An OAuth2 authorization-code app (e.g. Uptempo).
    Oauth2(AddOAuth2),
    /// An OAuth2 client-credentials app.
    ClientCredentials(AddClientCredentials),
}

#[derive(Args, Debug)]
pub struct Common {
    /// The credential's name: lowercase letters, digits, '.', '_', '-'.
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Replace an existing credential of that name.
    #[arg(long)]
    pub replace: bool,
    /// A git host (`host` or `host:port`, as in the remote's URL) that
    /// `tokenctl git-credential` gives this token to (repeatable). Default:
    /// the host of a bearer token's --check-url, else none (then git gets
    /// the token for no host).
    #[arg(long = "git-host", value_name = "HOST")]
    pub git_hosts: Vec<String>,
    /// The API's base URL, for tokend's proxy: `/v1/proxy/NAME/PATH` on the
    /// HTTP API goes to URL + PATH with the token added (https, or http to
    /// this machine). `--preset uppromote` gives UpPromote's.
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// The statuses after which the proxy rejects the token it sent and
    /// retries once, e.g. `401,403` (the default), or `none`.
    #[arg(long, value_name = "STATUSES", value_parser = parse_retry_on)]
    pub retry_on: Option<RetryOn>,
}

/// `--retry-on`: a list of statuses, `none` (never retry) or `default`
/// (401 and 403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOn(pub Option<Vec<u16>>);

fn parse_retry_on(s: &str) -> Result<RetryOn, String> {
    match s {
        "default" => Ok(RetryOn(None)),
        "none" => Ok(RetryOn(Some(Vec::new()))),
        _ => s
            .split(',')
            .map(|p| {
                p.trim().parse::<u16>().map_err(|_| {
                    format!("{p:?} is not an HTTP status; give e.g. 401,403, none or default")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| RetryOn(Some(v))),
    }
}

/// A warning ahead of a refresh token's expiry: `3d`, `12h`, `100s` or
/// seconds, at most a year.
fn parse_warn_before(s: &str) -> Result<u32, String> {
    let secs = match s.trim().parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration ({e}); give e.g. 3d, 12h or 100s"))?
            .as_secs(),
    };
    const YEAR: u64 = 365 * 24 * 3600;
    if secs > YEAR {
        return Err(format!("{s:?} is more than a year"));
    }
    Ok(secs as u32)
}

#[derive(Args, Debug)]
pub struct EditArgs {
    pub name: String,
    /// A new description.
    #[arg(long)]
    pub description: Option<String>,
    /// The API's base URL for tokend's proxy (see `add --api-url`).
    #[arg(long, value_name = "URL", conflicts_with = "no_api_url")]
    pub api_url: Option<String>,
    /// Take the API URL away (the proxy refuses the credential).
    #[arg(long)]
    pub no_api_url: bool,
    /// The statuses after which the proxy retries once: e.g. `401,403`, `none` or `default`.
    #[arg(long, value_name = "STATUSES", value_parser = parse_retry_on)]
    pub retry_on: Option<RetryOn>,
    /// A bearer token's check URL.
    #[arg(long, value_name = "URL", conflicts_with = "no_check_url")]
    pub check_url: Option<String>,
    /// Take a bearer token's check URL away.
    #[arg(long)]
    pub no_check_url: bool,
    /// The scopes of an oauth2 or client-credentials app (repeatable; they
    /// replace the ones it has): asked for from the next login or token.
    #[arg(long = "scope", value_name = "SCOPE", conflicts_with = "no_scope")]
    pub scopes: Vec<String>,
    /// Ask for no scope.
    #[arg(long)]
    pub no_scope: bool,
    /// The git hosts (repeatable; they replace the ones it has).
    #[arg(long = "git-host", value_name = "HOST", conflicts_with = "no_git_host")]
    pub git_hosts: Vec<String>,
    /// No git host (the default applies again: a bearer token's check URL host).
    #[arg(long)]
    pub no_git_host: bool,
    /// How long before its refresh token expires the notify command is
    /// told `expiring` (e.g. `3d`, `12h`): overrides `refresh.warn_before_secs`.
    #[arg(long, value_name = "DURATION", value_parser = parse_warn_before, conflicts_with = "no_warn_before")]
    pub warn_before: Option<u32>,
    /// Follow `refresh.warn_before_secs` again.
    #[arg(long)]
    pub no_warn_before: bool,
}

#[derive(Args, Debug)]
pub struct AddBearer {
    #[command(flatten)]
    pub common: Common,
    /// Read the token from this file (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A URL that `tokenctl check` probes with the token.
    #[arg(long, value_name = "URL")]
    pub check_url: Option<String>,
    /// `uppromote` sets the check URL to UpPromote's affiliates endpoint.
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
}

#[derive(Args, Debug)]
pub struct OAuthCommon {
    /// Fill in endpoints from a preset (uptempo-cas, uptempo8, or one from the config).
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// A value for the preset's URL template, e.g. `domain=acme.uptempo.io` or `tenant=acme`.
    #[arg(long = "preset-var", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub preset_vars: Vec<(String, String)>,
    /// Fetch the endpoints from this issuer's discovery document
    /// (`/.well-known/openid-configuration` or RFC 8414); explicit URLs override it.
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// The token endpoint (needed unless --issuer or --preset gives it).
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// The token introspection endpoint (RFC 7662), if --issuer or --preset does not give it.
    #[arg(long, value_name = "URL")]
    pub introspection_url: Option<String>,
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// Read the client secret from this file (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// A scope to request (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// How to authenticate at the token endpoint.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub client_auth: Option<ClientAuthArg>,
}

#[derive(Args, Debug)]
pub struct AddOAuth2 {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub oauth: OAuthCommon,
    /// The authorization endpoint (needed unless --issuer or --preset gives it).
    #[arg(long, value_name = "URL")]
    pub auth_url: Option<String>,
    /// The registered redirect URI (default: a loopback listener on a free port).
    #[arg(long, value_name = "URI")]
    pub redirect_uri: Option<String>,
    /// Use PKCE (S256): the default, so this flag is redundant.
    #[arg(long, conflicts_with = "no_pkce")]
    pub pkce: bool,
    /// Do not use PKCE (only for a provider that rejects `code_challenge`).
    #[arg(long)]
    pub no_pkce: bool,
    /// An extra authorize parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub params: Vec<(String, String)>,
    /// The device authorization endpoint (RFC 8628), for `login --device`,
    /// if --issuer or --preset does not give it.
    #[arg(long, value_name = "URL")]
    pub device_auth_url: Option<String>,
    /// No client secret (a public client; PKCE protects its code).
    #[arg(long)]
    pub no_client_secret: bool,
}

#[derive(Args, Debug)]
pub struct AddClientCredentials {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub oauth: OAuthCommon,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClientAuthArg {
    /// client_secret_post: id and secret in the form body.
    Post,
    /// client_secret_basic: HTTP Basic.
    Basic,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    pub name: String,
    /// Paste the final redirect URL instead of running a loopback listener.
    #[arg(long, conflicts_with = "device")]
    pub paste: bool,
    /// Log in with the device authorization grant (RFC 8628): print a URL and a
    /// code to enter on any device; tokend polls the provider until you approve.
    #[arg(long)]
    pub device: bool,
    /// Do not try to open a browser.
    ///
    /// Otherwise, on a graphical session, xdg-open is given a page only you
    /// can read (mode 0600, in a new 0700 directory in $XDG_RUNTIME_DIR, else
    /// the temp dir) that sends the browser on to the URL, never the URL
    /// itself: its state, PKCE challenge, port or user code would be in the
    /// command line every local user can read. The page is removed when the
    /// login ends, or after 60 s.
    #[arg(long)]
    pub no_browser: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this credential's entries.
    pub name: Option<String>,
    /// Only entries since then: a time back from now (`30m`, `1h`, `2d`) or an
    /// RFC 3339 time (`2026-12-07T09:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only this user's entries: a user name or a uid.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// At most this many entries, the newest (the daemon gives at most 10000).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct GitCredentialArgs {
    /// The credential whose token git gets.
    pub name: String,
    /// What git asks for: get, store or erase (added by git; others are ignored).
    #[arg(value_name = "OPERATION")]
    pub operation: String,
    /// The username to answer with (default: the one in git's request, else "tokend").
    /// Most servers ignore it for a token; GitLab wants "oauth2".
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A user name or uid (on Windows: a SID, S-1-5-21-…, or an account
    /// name, DOMAIN\user).
    #[arg(long)]
    pub user: Option<String>,
    /// A group name or gid (not supported on Windows).
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Args, Debug)]
pub struct PrincipalArgs {
    pub name: String,
    #[command(flatten)]
    pub who: Who,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
