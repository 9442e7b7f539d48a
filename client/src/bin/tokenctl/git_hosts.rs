//! Which git requests `tokenctl git-credential` answers: a credential's
//! token goes only to the git hosts it is for, and never in the clear to
//! another machine. git asks every helper configured for a URL, and a
//! helper set for all hosts (`credential.helper`), a submodule on another
//! host or a redirect would otherwise hand the token to whoever asks.

use tokend_client::CredentialSpec;

/// The hosts a credential's token may go to, and why those.
pub struct GitHosts {
    pub hosts: Vec<String>,
    /// Given with `--git-host`; otherwise the default.
    pub explicit: bool,
}

impl GitHosts {
    /// `--git-host` values; without any, the host of a bearer token's
    /// check URL (the API the token is for), else none: a credential is
    /// never sent to a host nobody named.
    pub fn of(spec: &CredentialSpec) -> GitHosts {
        if !spec.git_hosts().is_empty() {
            return GitHosts {
                hosts: spec.git_hosts().to_vec(),
                explicit: true,
            };
        }
        let from_check_url = match spec {
            CredentialSpec::Bearer {
                check_url: Some(url),
                ..
            } => host_of(url),
            _ => None,
        };
        GitHosts {
            hosts: from_check_url.into_iter().collect(),
            explicit: false,
        }
    }

    /// How `show` says it.
    pub fn describe(&self) -> String {
        match (self.hosts.as_slice(), self.explicit) {
            ([], _) => "none (git-credential answers for no host; add one with --git-host)".into(),
            (hosts, true) => hosts.join(" "),
            (hosts, false) => format!("{} (the check URL's host)", hosts.join(" ")),
        }
    }
}

/// `host` or `host:port` of `url`, as git names it (lowercase, the port
/// only when it is not the scheme's default).
fn host_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// Whether git's request (`protocol`, `host`) may get credential `name`'s
/// token; `Err`: the note for stderr saying why not.
pub fn admit(
    name: &str,
    allowed: &GitHosts,
    protocol: Option<&str>,
    host: Option<&str>,
) -> Result<(), String> {
    let (Some(protocol), Some(host)) = (protocol, host.filter(|h| !h.is_empty())) else {
        return Err("git's request names no protocol and host; answering nothing".into());
    };
    let host = host.to_ascii_lowercase();
    match protocol {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(format!(
                "not answering for http://{host}: the token would cross the network unencrypted (use https)"
            ));
        }
        other => {
            return Err(format!(
                "not answering for protocol {other:?}: tokens go over https only (or http to this machine)"
            ));
        }
    }
    if allowed.hosts.contains(&host) {
        return Ok(());
    }
    if allowed.hosts.is_empty() {
        return Err(format!(
            "credential {name:?} names no git host, so it is not sent to {host} (add it with `tokenctl add … {name} --replace --git-host {host}`)"
        ));
    }
    Err(format!(
        "credential {name:?} is for {}, not {host}; git goes on without it",
        allowed.hosts.join(", ")
    ))
}

/// This machine: `localhost`, 127.0.0.0/8 or `[::1]`, with any port.
fn is_loopback(host: &str) -> bool {
    let name = match host.rfind(':') {
        Some(at) if !host[at..].contains(']') => &host[..at],
        _ => host,
    };
    if name == "localhost" {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(check_url: Option<&str>, hosts: &[&str]) -> CredentialSpec {
        CredentialSpec::Bearer {
            check_url: check_url.map(Into::into),
            git_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: None,
        }
    }

    #[test]
    fn the_check_urls_host_is_the_default_and_flags_replace_it() {
        let spec = bearer(Some("https://API.example.com/v1/me"), &[]);
        let hosts = GitHosts::of(&spec);
        assert_eq!(hosts.hosts, ["api.example.com"]);
        assert!(hosts.describe().contains("check URL"));
        let spec = bearer(Some("https://api.example.com:8443/me"), &[]);
        assert_eq!(GitHosts::of(&spec).hosts, ["api.example.com:8443"]);
        let spec = bearer(Some("https://api.example.com/"), &["git.example.com"]);
        assert_eq!(GitHosts::of(&spec).hosts, ["git.example.com"]);
        assert!(GitHosts::of(&bearer(None, &[])).hosts.is_empty());
    }

    #[test]
    fn only_the_named_hosts_over_https_or_loopback_http_are_answered() {
        let hosts = GitHosts::of(&bearer(None, &["git.example.com", "localhost:3000"]));
        let admit = |protocol, host| admit("forge", &hosts, Some(protocol), Some(host));
        assert!(admit("https", "git.example.com").is_ok());
        assert!(admit("https", "GIT.example.com").is_ok());
        assert!(admit("http", "localhost:3000").is_ok());
        assert!(admit("https", "git.example.com:8443").is_err());
        assert!(
            admit("https", "evil.example")
                .unwrap_err()
                .contains("not evil.example")
        );
        assert!(
            admit("http", "git.example.com")
                .unwrap_err()
                .contains("unencrypted")
        );
        assert!(admit("ftp", "git.example.com").is_err());
        let none = GitHosts::of(&bearer(None, &[]));
        let e = super::admit("forge", &none, Some("https"), Some("h")).unwrap_err();
        assert!(e.contains("--git-host h"), "{e}");
        assert!(super::admit("forge", &hosts, None, Some("git.example.com")).is_err());
    }

    #[test]
    fn loopback_is_this_machine_only() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["localhost.example", "10.0.0.1", "[::2]", "example.com:127"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
