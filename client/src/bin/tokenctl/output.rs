//! Human and JSON renderings of what the daemon returns.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// `println!` for everything tokenctl prints: a reader that stops early
/// (`tokenctl list | head`) ends the output quietly instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::emit(format_args!($($arg)*)) };
}
pub(crate) use out;

pub fn emit(line: std::fmt::Arguments) {
    let line = line.to_string();
    let line = printable(&line);
    if let Err(e) = writeln!(std::io::stdout(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tokenctl: cannot write the output: {e}");
        std::process::exit(1);
    }
}
use tokend_client::{
    CheckReport, CredentialInfo, CredentialSpec, DaemonStatus, Endpoints, Grantee, Principal,
    endpoint,
};

/// `text` with its control characters (escape sequences that would move a
/// terminal's cursor, retitle its window or hide what follows) shown as
/// escapes: a name, a reason or a provider's message comes from the
/// daemon, which got it from a provider or a database, and is not trusted
/// to be plain text. Line breaks and tabs stay.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if bad(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A Unix time as RFC 3339 (UTC) plus a relative hint.
fn when(t: Option<i64>) -> String {
    let Some(t) = t else { return "-".into() };
    let at = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    format!(
        "{} ({})",
        humantime::format_rfc3339_seconds(at),
        relative(t, tokend_now())
    )
}

/// How far `t` is from `now`, as people say it: "in 4m", "2m ago", "just
/// now" (a moment in the last few seconds, or this very second).
pub fn relative(t: i64, now: i64) -> String {
    const JUST_NOW: i64 = 5;
    let d = t.saturating_sub(now);
    if d == 0 || (d < 0 && d > -JUST_NOW) {
        "just now".into()
    } else if d > 0 {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(d.saturating_neg()))
    }
}

/// A duration in its two largest units, rounded down: "45s", "4m",
/// "1h 5m", "3d 2h" (the seconds of a span of minutes say nothing useful).
fn span(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    let two = |big: i64, a: &str, small: i64, b: &str| {
        if small == 0 {
            format!("{big}{a}")
        } else {
            format!("{big}{a} {small}{b}")
        }
    };
    match s {
        ..60 => format!("{s}s"),
        60..3600 => format!("{m}m"),
        3600..86_400 => two(h, "h", m, "m"),
        _ => two(d, "d", h, "h"),
    }
}

fn tokend_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn json<T: serde::Serialize>(value: &T) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serializes")
    );
}

fn state_text(c: &CredentialInfo) -> String {
    match &c.reason {
        Some(r) if c.state.as_str() != "ready" => format!("{}: {r}", c.state.as_str()),
        _ => c.state.as_str().to_string(),
    }
}

pub fn list(items: &[CredentialInfo]) {
    if items.is_empty() {
        out!("no credentials (add one with `tokenctl add bearer NAME < token.txt`)");
        return;
    }
    out!(
        "{:<24} {:<19} {:<12} {:<22} {:<16} DESCRIPTION",
        "NAME",
        "KIND",
        "STATE",
        "EXPIRES",
        "LOGIN BY"
    );
    let relative_or_dash = |t: Option<i64>| {
        t.map(|e| relative(e, tokend_now()))
            .unwrap_or_else(|| "-".into())
    };
    for c in items {
        out!(
            "{:<24} {:<19} {:<12} {:<22} {:<16} {}",
            c.name,
            c.spec.kind(),
            c.state.as_str(),
            relative_or_dash(c.expires_at),
            relative_or_dash(c.refresh_expires_at),
            c.description
        );
    }
}

fn principal(p: &Principal) -> String {
    match p {
        Principal::User(u) => format!("user {}", user_name(*u)),
        Principal::Group(g) => format!("group {}", group_name(*g)),
    }
}

/// An owner or allow-list entry as stored: by its name, and what that
/// name is on this host, or that it is unknown here (and grants nothing).
fn grantee(g: &Grantee) -> String {
    let (kind, written) = match g.written {
        Principal::User(u) => ("user", u),
        Principal::Group(g) => ("group", g),
    };
    let id = if kind == "user" { "uid" } else { "gid" };
    match (&g.name, g.here) {
        (Some(name), Some(here)) => format!("{kind} {name} ({here})"),
        (Some(name), None) => format!(
            "{kind} {name} (unknown on this host: grants nothing here; {id} {written} where it was written)"
        ),
        (None, _) => principal(&g.written),
    }
}

fn user_name(uid: u32) -> String {
    #[cfg(unix)]
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        return format!("{} ({uid})", u.name);
    }
    uid.to_string()
}

fn group_name(gid: u32) -> String {
    #[cfg(unix)]
    if let Ok(Some(g)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        return format!("{} ({gid})", g.name);
    }
    gid.to_string()
}

pub fn show(c: &CredentialInfo) {
    let row = |k: &str, v: &str| out!("{k:<16} {v}");
    row("name", &c.name);
    row("kind", c.spec.kind());
    if !c.description.is_empty() {
        row("description", &c.description);
    }
    row("state", &state_text(c));
    match &c.owner {
        Some(owner) => row("owner", grantee(owner).trim_start_matches("user ")),
        None => row("owner", &user_name(c.owner_uid)),
    }
    let allowed: Vec<String> = if c.owner.is_some() {
        c.grantees.iter().map(grantee).collect()
    } else {
        c.allowed.iter().map(principal).collect()
    };
    row(
        "allowed",
        if allowed.is_empty() {
            "owner and admins only"
        } else {
            ""
        },
    );
    for a in allowed {
        row("", &a);
    }
    match &c.spec {
        CredentialSpec::Bearer { check_url, .. } => {
            row("check url", check_url.as_deref().unwrap_or("-"))
        }
        CredentialSpec::OAuth2(s) => {
            let url = |name, url: &str| with_source(&s.endpoints, name, Some(url));
            row("authorize url", &url(endpoint::AUTHORIZATION, &s.auth_url));
            row("token url", &url(endpoint::TOKEN, &s.token_url));
            endpoint_rows(&row, &s.endpoints);
            row("client id", &s.client_id);
            row("scopes", &s.scopes.join(" "));
            row(
                "redirect uri",
                s.redirect_uri
                    .as_deref()
                    .unwrap_or("loopback (chosen at login)"),
            );
            row(
                "client auth",
                if matches!(s.client_auth, tokend_client::ClientAuth::Basic) {
                    "client_secret_basic"
                } else {
                    "client_secret_post"
                },
            );
            row("pkce", if s.pkce { "S256" } else { "off" });
            row(
                "refresh token",
                if c.has_refresh_token { "held" } else { "none" },
            );
        }
        CredentialSpec::ClientCredentials(s) => {
            let token_url = with_source(&s.endpoints, endpoint::TOKEN, Some(&s.token_url));
            row("token url", &token_url);
            endpoint_rows(&row, &s.endpoints);
            row("client id", &s.client_id);
            row("scopes", &s.scopes.join(" "));
        }
    }
    row(
        "git hosts",
        &crate::git_hosts::GitHosts::of(&c.spec).describe(),
    );
    match c.spec.upstream() {
        Some(u) => {
            row(
                "api url",
                u.api_url.as_deref().unwrap_or("- (the proxy refuses it)"),
            );
            let statuses: Vec<String> = u.retry_on().iter().map(u16::to_string).collect();
            row(
                "retry on",
                &if statuses.is_empty() {
                    "never".to_string()
                } else {
                    statuses.join(", ")
                },
            );
        }
        None => row(
            "api url",
            &format!(
                "- (for the proxy: `tokenctl edit {} --api-url URL`)",
                c.name
            ),
        ),
    }
    row("token", if c.has_token { "held" } else { "none" });
    row("expires", &when(c.expires_at));
    if c.has_refresh_token {
        row("refresh expires", &refresh_forecast(c.refresh_expires_at));
    }
    row("next refresh", &when(c.next_refresh_at));
    row("last refresh", &when(c.last_refresh_at));
    row("last use", &when(c.last_use_at));
    row("created", &when(Some(c.created_at)));
    if let Some(e) = &c.last_error {
        row("last error", e);
    }
    if let Some(check) = &c.last_check {
        row(
            "last check",
            &format!("{} at {}", check.message, when(Some(check.at))),
        );
    }
}

/// When the grant needs a login again: the refresh token's forecast, to
/// the second like the access token's expiry.
fn refresh_forecast(at: Option<i64>) -> String {
    match at {
        Some(at) => format!("{}: log in before then", when(Some(at))),
        None => "unknown (the provider does not say) or no limit".into(),
    }
}

/// The endpoints beyond authorize and token, and the issuer, each with
/// where it came from ("-" when there is none).
fn endpoint_rows(row: &dyn Fn(&str, &str), e: &Endpoints) {
    let rows = [
        (
            "introspection",
            endpoint::INTROSPECTION,
            &e.introspection_url,
        ),
        ("revocation", endpoint::REVOCATION, &e.revocation_url),
        (
            "device auth",
            endpoint::DEVICE_AUTHORIZATION,
            &e.device_authorization_url,
        ),
        ("issuer", endpoint::ISSUER, &e.issuer),
    ];
    for (label, name, url) in rows {
        row(label, &with_source(e, name, url.as_deref()));
    }
}

/// `URL (source)`, e.g. `https://idp.example/token (discovery)`. Settings
/// stored before sources were recorded show the URL alone.
fn with_source(e: &Endpoints, name: &str, url: Option<&str>) -> String {
    match (url, e.source(name)) {
        (None, _) => "-".into(),
        (Some(url), Some(source)) => format!("{url} ({})", source.as_str()),
        (Some(url), None) => url.to_string(),
    }
}

pub fn status(s: &DaemonStatus) {
    match (s.pid, s.connections, &s.socket, &s.database) {
        (Some(pid), Some(connections), Some(socket), Some(database)) => out!(
            "tokend {} (pid {pid}) up {}, {connections} connection(s)\nsocket   {socket}\nstore    {database}",
            s.version,
            span(s.uptime_secs as i64),
        ),
        // The daemon tells only admins about its set-up.
        _ => out!(
            "tokend {} up {} (its pid, socket and store are shown to admins only)",
            s.version,
            span(s.uptime_secs as i64),
        ),
    }
    if !s.connections_by_user.is_empty() {
        let each: Vec<String> = s
            .connections_by_user
            .iter()
            .map(|u| format!("{} {}", user_name(u.uid), u.connections))
            .collect();
        out!("by user  {}", each.join(", "));
    }
    if s.credentials.is_empty() {
        out!("no credentials");
        return;
    }
    out!("\n{:<24} {:<19} STATE", "NAME", "KIND");
    for c in &s.credentials {
        let reason = c
            .reason
            .as_ref()
            .filter(|_| c.state.as_str() != "ready")
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        out!("{:<24} {:<19} {}{reason}", c.name, c.kind, c.state.as_str());
    }
}

pub fn check(r: &CheckReport) {
    out!("{}", r.message);
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert_eq!(super::printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            super::printable("up\u{1b}]0;owned\u{7}"),
            "up\\u{1b}]0;owned\\u{7}"
        );
    }

    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = 1_800_000_000;
        let cases = [
            (0, "just now"),
            (-1, "just now"),
            (-4, "just now"),
            (-5, "5s ago"),
            (-120, "2m ago"),
            (-179, "2m ago"),
            (1, "in 1s"),
            (59, "in 59s"),
            (299, "in 4m"),
            (3600, "in 1h"),
            (3900, "in 1h 5m"),
            (-(2 * 86_400 + 3 * 3600 + 59), "2d 3h ago"),
            (86_400, "in 1d"),
        ];
        for (offset, text) in cases {
            assert_eq!(relative(now + offset, now), text, "offset {offset}");
        }
    }

    #[test]
    fn a_past_moment_is_never_in_the_future() {
        for offset in -100_000..=0 {
            let text = relative(1_000 + offset, 1_000);
            assert!(!text.starts_with("in "), "{offset}: {text}");
        }
        assert_eq!(
            relative(i64::MIN, i64::MAX),
            format!("{} ago", span(i64::MAX))
        );
    }
}
