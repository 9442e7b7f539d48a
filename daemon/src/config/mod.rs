//! The optional TOML config file: its schema, defaults and validation.
//!
//! Every key is optional. Unknown keys and bad values are errors that name
//! the file, the line and the key, so a typo never silently does nothing.

pub mod access;
pub mod acl;
pub mod audit;
pub mod groups;
pub mod metrics;
pub mod paths;
pub mod preset;
pub mod proxy;
pub mod sids;
pub mod store;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The daemon's settings. `Default` is the embedded configuration used when
/// no file exists.
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub refresh: RefreshPolicy,
    pub limits: Limits,
    /// A command run (through `sh -c`) when a credential becomes unusable or
    /// usable again; it gets `TOKEND_CREDENTIAL`, `TOKEND_STATE` and
    /// `TOKEND_REASON` in its environment.
    pub notify_command: Option<String>,
    /// Members of this group may add, remove and log in credentials.
    pub admin_group: Option<String>,
    /// System mode: the socket's group (mode 0660). User mode ignores it.
    pub socket_group: Option<String>,
    /// Where the sealing key file lives when no systemd credential is given.
    pub key_file: Option<std::path::PathBuf>,
    pub log: LogConfig,
    /// The HTTP/JSON API socket (`http.sock`, docs/HTTP.md).
    pub http: HttpConfig,
    /// The credential-injecting proxy (docs/HTTP.md, "Proxy").
    pub proxy: proxy::ProxyConfig,
    /// The opt-in metrics listener (docs/HTTP.md, "Metrics").
    pub metrics: metrics::MetricsConfig,
    /// Extra presets for `tokenctl add oauth2 --preset NAME`.
    pub presets: BTreeMap<String, PresetConfig>,
    /// Where credentials are stored: `sqlite:PATH` (the default, at the
    /// state directory's tokend.db) or a `postgresql://` URL shared by a
    /// fleet (docs/CONFIG.md, "Several hosts").
    pub store: Option<String>,
    /// The PostgreSQL password, as the file's first line (never in the URL).
    pub store_password_file: Option<std::path::PathBuf>,
    /// How the members of a fleet share a PostgreSQL store.
    pub fleet: FleetConfig,
    /// The audit trail (docs/SECURITY.md, "The audit trail").
    pub audit: audit::AuditConfig,
}

/// Tuning of a fleet on a shared PostgreSQL store (docs/CONFIG.md).
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// How long a token request waits for another member's refresh of the
    /// same credential.
    pub lock_wait_secs: u64,
    /// Every this many seconds, compare everything with the database (a
    /// missed notification is caught here).
    pub resync_secs: u64,
    /// Database connections for refreshes in flight (each holds one for
    /// the length of its provider call).
    pub lock_connections: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lock_wait_secs: 15,
            resync_secs: 30,
            lock_connections: 16,
        }
    }
}

/// When tokens are refreshed (docs/DESIGN.md §4.1).
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshPolicy {
    /// Refresh once this fraction of a token's lifetime has passed.
    pub ahead_ratio: f64,
    /// Never later than this many seconds before expiry.
    pub margin_secs: u64,
    /// Up to this fraction of the lifetime is added or removed at random.
    pub jitter_ratio: f64,
    /// Lifetime assumed when a token response has no `expires_in`.
    pub default_lifetime_secs: u64,
    /// First retry delay after a transient error; doubles up to `max_backoff_secs`.
    pub min_backoff_secs: u64,
    pub max_backoff_secs: u64,
    /// How long a token request waits for a refresh in flight.
    pub wait_secs: u64,
    /// Timeout of one HTTP request to a provider.
    pub http_timeout_secs: u64,
    /// Refreshes in flight at once across all credentials.
    pub max_concurrent: usize,
    /// Credentials due at start-up are spread over this many seconds.
    pub startup_spread_secs: u64,
    /// A `refresh`, or a `reject` naming no token, by a peer who is not an
    /// admin starts a provider call only when none started for that
    /// credential within this many seconds; within it the current state is
    /// the answer. 0 turns the limit off.
    pub min_forced_interval_secs: u64,
    /// The notify command runs with `TOKEND_STATE=expiring` once a
    /// refresh token's forecast comes within this many seconds.
    pub warn_before_secs: u64,
    /// Refresh before a refresh token's forecast, so a grant with an
    /// inactivity limit does not die while its tokens are not used.
    pub keep_alive: bool,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            ahead_ratio: 0.75,
            margin_secs: 30,
            jitter_ratio: 0.05,
            default_lifetime_secs: 3600,
            min_backoff_secs: 1,
            max_backoff_secs: 300,
            wait_secs: 10,
            http_timeout_secs: 15,
            max_concurrent: 32,
            startup_spread_secs: 5,
            min_forced_interval_secs: 30,
            warn_before_secs: 3 * 24 * 3600,
            keep_alive: false,
        }
    }
}

/// Limits that keep one client from hurting the others.
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one user other than root and the daemon's own may hold
    /// open at once, so one user cannot take every place. Unset: see
    /// [`Limits::per_user`].
    pub max_connections_per_user: Option<usize>,
    /// The last places of `max_connections` that only root and the daemon's
    /// own user may take, so they always get in. Unset: see
    /// [`Limits::reserved`].
    pub reserved_connections: Option<usize>,
    /// A connection with no request for this long is closed.
    pub idle_timeout_secs: u64,
    /// Once a frame has started, all of it must arrive within this time.
    pub frame_timeout_secs: u64,
    /// Pending logins at once.
    pub max_logins: usize,
    /// How long a login waits for its redirect.
    pub login_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_user: None,
            reserved_connections: None,
            idle_timeout_secs: 300,
            frame_timeout_secs: 5,
            max_logins: 16,
            login_timeout_secs: 300,
        }
    }
}

impl Limits {
    /// The per-user cap when `max_connections_per_user` is unset.
    pub const DEFAULT_PER_USER: usize = 128;
    /// The reserve when `reserved_connections` is unset.
    pub const DEFAULT_RESERVED: usize = 64;

    /// The per-user cap in force. Unset, it follows `max_connections` down
    /// (128, or `max_connections` if smaller), so a file that only lowers
    /// `max_connections` stays valid.
    pub fn per_user(&self) -> usize {
        self.max_connections_per_user
            .unwrap_or(Self::DEFAULT_PER_USER.min(self.max_connections))
    }

    /// The reserve in force. Unset: 64, or a quarter of `max_connections`
    /// if smaller, so other users keep most places of a small daemon.
    pub fn reserved(&self) -> usize {
        self.reserved_connections
            .unwrap_or(Self::DEFAULT_RESERVED.min(self.max_connections / 4))
    }

    /// The connection keys' relations to each other (each is checked for
    /// range on its own elsewhere).
    fn validate_connections(&self) -> Result<(), String> {
        let max = self.max_connections;
        match self.max_connections_per_user {
            Some(0) => {
                return Err("limits.max_connections_per_user must be greater than 0".into());
            }
            Some(n) if n > max => {
                return Err(format!(
                    "limits.max_connections_per_user = {n} is above limits.max_connections = {max}"
                ));
            }
            _ => {}
        }
        match self.reserved_connections {
            Some(n) if n >= max => Err(format!(
                "limits.reserved_connections = {n} leaves other users no connection: it must be below limits.max_connections = {max}"
            )),
            _ => Ok(()),
        }
    }
}

/// The second listener: HTTP/1.1 + JSON for programs in any language.
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the HTTP API at all (on by default: it gives no more than the
    /// main socket, to the same peers).
    pub enabled: bool,
    /// Where; unset: `http.sock` beside the main socket.
    pub socket: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            socket: None,
        }
    }
}

#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Lines about refused requests written per peer uid per
    /// `refusal_interval_secs`; the rest are counted in one line at its end.
    pub refusal_lines: u32,
    pub refusal_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            refusal_lines: 10,
            refusal_interval_secs: 60,
        }
    }
}

/// A named set of endpoint templates; `{domain}`-style placeholders are
/// filled from `tokenctl add oauth2 --preset-var domain=…`. A preset gives
/// either a token URL or an issuer to discover it from (or both: the
/// preset's URLs then fill in what the discovery document lacks).
#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    /// Discover the endpoints from this issuer when the credential is added.
    pub issuer: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    /// RFC 7662 token introspection.
    pub introspection_url: Option<String>,
    /// RFC 7009 token revocation.
    pub revocation_url: Option<String>,
    /// RFC 8628 device authorization.
    pub device_authorization_url: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Loads `path`; a missing file is the embedded default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates config text; the error names line and key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// The keys whose new values in `new` only apply at the next start:
    /// they size things built once (the connection and refresh limits, the
    /// log format, the socket, the key). A reload names them, so nobody
    /// believes a change took effect when it did not.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let keys = [
            (
                "limits.max_connections",
                self.limits.max_connections != new.limits.max_connections,
            ),
            (
                "refresh.max_concurrent",
                self.refresh.max_concurrent != new.refresh.max_concurrent,
            ),
            ("log.format", self.log.format != new.log.format),
            ("socket_group", self.socket_group != new.socket_group),
            ("key_file", self.key_file != new.key_file),
            ("http.enabled", self.http.enabled != new.http.enabled),
            ("http.socket", self.http.socket != new.http.socket),
            ("proxy.listen", self.proxy.listen != new.proxy.listen),
            ("metrics.listen", self.metrics.listen != new.metrics.listen),
            ("store", self.store != new.store),
            (
                "store_password_file",
                self.store_password_file != new.store_password_file,
            ),
            ("fleet", self.fleet != new.fleet),
        ];
        keys.into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        let r = &self.refresh;
        if !(0.1..=0.95).contains(&r.ahead_ratio) {
            return Err(format!(
                "refresh.ahead_ratio = {} is out of range (0.1 to 0.95)",
                r.ahead_ratio
            ));
        }
        if !(0.0..=0.25).contains(&r.jitter_ratio) {
            return Err(format!(
                "refresh.jitter_ratio = {} is out of range (0 to 0.25)",
                r.jitter_ratio
            ));
        }
        let positive = [
            ("refresh.default_lifetime_secs", r.default_lifetime_secs),
            ("refresh.min_backoff_secs", r.min_backoff_secs),
            ("refresh.http_timeout_secs", r.http_timeout_secs),
            ("refresh.max_concurrent", r.max_concurrent as u64),
            ("limits.max_connections", self.limits.max_connections as u64),
            ("limits.idle_timeout_secs", self.limits.idle_timeout_secs),
            ("limits.frame_timeout_secs", self.limits.frame_timeout_secs),
            ("limits.max_logins", self.limits.max_logins as u64),
            ("limits.login_timeout_secs", self.limits.login_timeout_secs),
            ("fleet.lock_wait_secs", self.fleet.lock_wait_secs),
            ("fleet.resync_secs", self.fleet.resync_secs),
            ("fleet.lock_connections", self.fleet.lock_connections as u64),
            ("log.refusal_interval_secs", self.log.refusal_interval_secs),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be greater than 0"));
        }
        self.limits.validate_connections()?;
        self.proxy.validate()?;
        self.metrics.addresses()?;
        self.audit.validate()?;
        if let Some(url) = &self.store {
            store::StoreLocation::parse(url).map_err(|e| format!("store: {e}"))?;
        }
        if r.max_backoff_secs < r.min_backoff_secs {
            return Err(
                "refresh.max_backoff_secs must not be below refresh.min_backoff_secs".into(),
            );
        }
        // A refresh's lease (docs/RULES.md, "Fencing") and its backoff are
        // kept within an hour: past that a deadline read from the store is
        // taken as a clock gone wrong.
        let bounded = [
            ("refresh.http_timeout_secs", r.http_timeout_secs, 600),
            ("refresh.max_backoff_secs", r.max_backoff_secs, 3600),
            (
                "log.refusal_interval_secs",
                self.log.refusal_interval_secs,
                86400,
            ),
            (
                "refresh.min_forced_interval_secs",
                r.min_forced_interval_secs,
                3600,
            ),
            // A year: no refresh token forecast reaches further.
            ("refresh.warn_before_secs", r.warn_before_secs, 31_536_000),
        ];
        if let Some((key, v, max)) = bounded.iter().find(|(_, v, max)| v > max) {
            return Err(format!("{key} = {v} is too long (at most {max})"));
        }
        for (name, preset) in &self.presets {
            if tokend_proto::validate_name(name).is_err() {
                return Err(format!(
                    "presets.{name}: a preset name uses lowercase letters, digits, '.', '_' and '-'"
                ));
            }
            let urls = [
                ("issuer", &preset.issuer),
                ("auth_url", &preset.auth_url),
                ("token_url", &preset.token_url),
                ("introspection_url", &preset.introspection_url),
                ("revocation_url", &preset.revocation_url),
                ("device_authorization_url", &preset.device_authorization_url),
            ];
            if let Some((key, _)) = urls
                .iter()
                .find(|(_, url)| url.as_deref().is_some_and(|u| u.trim().is_empty()))
            {
                return Err(format!("presets.{name}.{key} must not be empty"));
            }
            if preset.token_url.is_none() && preset.issuer.is_none() {
                return Err(format!(
                    "presets.{name} needs a token_url or an issuer to discover it from"
                ));
            }
        }
        Ok(())
    }
}

/// toml's message plus "line N" computed from its byte span.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{snippet}`): {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn values_override_defaults() {
        let c = Config::parse(
            "notify_command = \"notify-send tokend\"\n[refresh]\nmargin_secs = 10\n[limits]\nmax_connections = 50\n",
        )
        .unwrap();
        assert_eq!(c.refresh.margin_secs, 10);
        assert_eq!(c.limits.max_connections, 50);
        assert_eq!(c.notify_command.as_deref(), Some("notify-send tokend"));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = Config::parse("[refresh]\nmargin_secs = 10\nahead = 0.5\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("ahead"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::parse("[refresh]\nahead_ratio = 2.0\n").unwrap_err();
        assert!(err.contains("refresh.ahead_ratio"), "{err}");
        let err = Config::parse("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn connection_shares_are_checked_against_max_connections() {
        let parse = |limits: &str| Config::parse(&format!("[limits]\n{limits}\n"));
        let err = parse("max_connections_per_user = 0").unwrap_err();
        assert!(
            err.contains("limits.max_connections_per_user must be greater than 0"),
            "{err}"
        );
        let err = parse("max_connections = 100\nmax_connections_per_user = 101").unwrap_err();
        assert!(
            err.contains(
                "limits.max_connections_per_user = 101 is above limits.max_connections = 100"
            ),
            "{err}"
        );
        let err = parse("max_connections = 100\nreserved_connections = 100").unwrap_err();
        assert!(err.contains("limits.reserved_connections = 100"), "{err}");
        assert!(err.contains("below limits.max_connections = 100"), "{err}");
        let c = parse(
            "max_connections = 100\nmax_connections_per_user = 100\nreserved_connections = 0",
        )
        .unwrap();
        assert_eq!((c.limits.per_user(), c.limits.reserved()), (100, 0));
    }

    #[test]
    fn unset_connection_shares_follow_max_connections_down() {
        assert_eq!(
            (Limits::default().per_user(), Limits::default().reserved()),
            (128, 64)
        );
        // A file that only lowers max_connections stays valid.
        let c = Config::parse("[limits]\nmax_connections = 10\n").unwrap();
        assert_eq!((c.limits.per_user(), c.limits.reserved()), (10, 2));
        let c = Config::parse("[limits]\nmax_connections = 1\n").unwrap();
        assert_eq!((c.limits.per_user(), c.limits.reserved()), (1, 0));
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = Config::default();
        let new = Config::parse(
            "socket_group = \"tokend\"\n[limits]\nmax_connections = 10\nidle_timeout_secs = 60\nmax_connections_per_user = 5\nreserved_connections = 1\n",
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            ["limits.max_connections", "socket_group"]
        );
        assert!(old.restart_only_changes(&old).is_empty());
    }

    #[test]
    fn example_config_shows_every_key_with_its_default() {
        let shipped = Config::parse(EXAMPLE).unwrap_or_else(|e| panic!("config.example.toml: {e}"));
        assert_eq!(
            shipped,
            Config::default(),
            "as shipped, the example changes nothing"
        );
        let all_on = Config::parse(&example_all_on())
            .unwrap_or_else(|e| panic!("config.example.toml with every setting uncommented: {e}"));
        assert_eq!(all_on.refresh, RefreshPolicy::default());
        // The example spells out what its unset keys come to.
        let mut limits = all_on.limits.clone();
        let default = Limits::default();
        assert_eq!(
            limits.max_connections_per_user.take(),
            Some(default.per_user())
        );
        assert_eq!(limits.reserved_connections.take(), Some(default.reserved()));
        assert_eq!(limits, default);
        assert_eq!(all_on.log, LogConfig::default());
        assert_eq!(all_on.http.enabled, HttpConfig::default().enabled);
        assert_eq!(leaf_keys(&all_on), leaf_keys(&every_key_set()));
    }

    #[test]
    fn config_doc_lists_every_key_with_the_code_default() {
        let rows = documented();
        let keys: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, leaf_keys(&every_key_set()), "docs/CONFIG.md tables");
        let mut text = String::from("presets.p.token_url = \"https://t.example\"\n");
        for (key, default) in &rows {
            match default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
                Some(literal) => text += &format!("{} = {literal}\n", key.replace('*', "p")),
                None => assert!(
                    ["unset", "required"].contains(&default.as_str()),
                    "{key}: {default}"
                ),
            }
        }
        let mut expected = Config::default();
        expected.presets.insert(
            "p".into(),
            PresetConfig {
                token_url: Some("https://t.example".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            Config::parse(&text).unwrap(),
            expected,
            "documented defaults:\n{text}"
        );
    }

    const EXAMPLE: &str = include_str!("../../../packaging/config.example.toml");
    const DOC: &str = include_str!("../../../docs/CONFIG.md");

    /// The example with its commented-out settings (`#key = …`, `#[table]`)
    /// switched on; prose comments (`# …`) stay comments.
    fn example_all_on() -> String {
        let setting = |rest: &str| {
            rest.starts_with('[')
                || rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
        };
        EXAMPLE
            .lines()
            .map(|l| l.strip_prefix('#').filter(|r| setting(r)).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key set, built without `..Default::default()` so that a new
    /// field fails to compile here until the example and the docs have it.
    fn every_key_set() -> Config {
        Config {
            refresh: RefreshPolicy::default(),
            limits: Limits {
                max_connections: 1024,
                max_connections_per_user: Some(128),
                reserved_connections: Some(64),
                idle_timeout_secs: 300,
                frame_timeout_secs: 5,
                max_logins: 16,
                login_timeout_secs: 300,
            },
            notify_command: Some("true".into()),
            admin_group: Some("0".into()),
            socket_group: Some("0".into()),
            key_file: Some("/k".into()),
            store: Some("postgresql://tokend@/tokend?host=/run/postgresql".into()),
            store_password_file: Some("/p".into()),
            fleet: FleetConfig::default(),
            audit: audit::AuditConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig {
                enabled: true,
                socket: Some("/h".into()),
            },
            proxy: proxy::ProxyConfig {
                listen: vec!["127.0.0.1:8181".into()],
                max_replay_bytes: 1,
                max_request_bytes: 2,
                upstream_timeout_secs: 3,
                max_concurrent_per_user: 4,
            },
            metrics: metrics::MetricsConfig {
                listen: vec!["127.0.0.1:9464".into()],
                credential_labels: true,
            },
            presets: BTreeMap::from([(
                "p".into(),
                PresetConfig {
                    issuer: Some("https://i.example".into()),
                    auth_url: Some("https://a.example".into()),
                    token_url: Some("https://t.example".into()),
                    introspection_url: Some("https://t.example/introspect".into()),
                    revocation_url: Some("https://t.example/revoke".into()),
                    device_authorization_url: Some("https://a.example/device".into()),
                    scopes: vec![],
                    extra_params: BTreeMap::new(),
                },
            )]),
        }
    }

    /// Dotted keys of the settings `config` sets, preset names as `*`.
    fn leaf_keys(config: &Config) -> BTreeSet<String> {
        fn walk(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
            for (key, value) in table {
                let path = match prefix {
                    "" => key.clone(),
                    "presets" => "presets.*".into(),
                    p => format!("{p}.{key}"),
                };
                match value {
                    toml::Value::Table(t) if !path.ends_with(".extra_params") => {
                        walk(t, &path, out)
                    }
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&toml::Table::try_from(config).unwrap(), "", &mut out);
        out
    }

    /// docs/CONFIG.md's key tables as (dotted key, default cell): rows
    /// ``| `key` | type | default | meaning |`` under a heading that names
    /// the `[section]` (none: top level).
    fn documented() -> Vec<(String, String)> {
        let mut section = String::new();
        let mut rows = vec![];
        for line in DOC.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                section = match heading.split('`').nth(1) {
                    Some(s) if s.starts_with('[') => {
                        s.trim_matches(['[', ']']).replace("NAME", "*") + "."
                    }
                    _ => String::new(),
                };
            } else if let Some(row) = line.strip_prefix("| `") {
                let cells: Vec<&str> = row.split(" | ").collect();
                let key = cells[0].trim_end_matches('`');
                rows.push((format!("{section}{key}"), cells[2].trim().to_string()));
            }
        }
        rows
    }

    #[test]
    fn extra_presets_parse() {
        let c = Config::parse(
            "[presets.acme]\nauth_url = \"https://{domain}/auth\"\ntoken_url = \"https://{domain}/token\"\n",
        )
        .unwrap();
        assert_eq!(
            c.presets["acme"].token_url.as_deref(),
            Some("https://{domain}/token")
        );
    }

    #[test]
    fn a_preset_may_give_an_issuer_instead_of_a_token_url() {
        let c =
            Config::parse("[presets.kc]\nissuer = \"https://{domain}/realms/{realm}\"\n").unwrap();
        assert_eq!(c.presets["kc"].token_url, None);
        let err = Config::parse("[presets.kc]\nscopes = [\"openid\"]\n").unwrap_err();
        assert!(err.contains("token_url or an issuer"), "{err}");
        let err = Config::parse("[presets.kc]\nissuer = \" \"\n").unwrap_err();
        assert!(err.contains("presets.kc.issuer"), "{err}");
    }
}
