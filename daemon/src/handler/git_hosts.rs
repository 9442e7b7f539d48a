//! `tokenctl add … --git-host HOST`: the git hosts a credential is for,
//! checked and written the way git names a host in its credential
//! requests (`host=git.example.com`, `host=git.example.com:8443`), so that
//! `tokenctl git-credential` compares like with like.

use crate::error::Error;
use tokend_proto::CredentialSpec;

/// More would be a list of guesses, not of the hosts a token is for.
const MAX_GIT_HOSTS: usize = 32;

/// `spec` with its git hosts set from `hosts`: each checked, lowercased,
/// without repeats.
pub(super) fn with_git_hosts(
    mut spec: CredentialSpec,
    hosts: Vec<String>,
) -> Result<CredentialSpec, Error> {
    if hosts.len() > MAX_GIT_HOSTS {
        return Err(Error::InvalidArgument(format!(
            "{} --git-host values: at most {MAX_GIT_HOSTS} may be given",
            hosts.len()
        )));
    }
    let mut checked: Vec<String> = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = normalize(&host)?;
        if !checked.contains(&host) {
            checked.push(host);
        }
    }
    match &mut spec {
        CredentialSpec::Bearer { git_hosts, .. } => *git_hosts = checked,
        CredentialSpec::OAuth2(s) => s.git_hosts = checked,
        CredentialSpec::ClientCredentials(s) => s.git_hosts = checked,
    }
    Ok(spec)
}

/// One host as git names it: a DNS name or IPv4 address, or an IPv6
/// address in brackets, with an optional `:PORT`; lowercased.
pub(super) fn normalize(given: &str) -> Result<String, Error> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "--git-host {given:?} {why}; give the host as git names it, e.g. `git.example.com` or `git.example.com:8443`"
        ))
    };
    if given.contains("://") || given.contains('/') {
        return Err(bad("is a URL, not a host"));
    }
    let host = given.to_ascii_lowercase();
    let (name, port) =
        split_port(&host).ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?;
    let valid_name = if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        is_dns_name(name)
    };
    if !valid_name {
        return Err(bad("is not a host name"));
    }
    Ok(match port {
        Some(port) => format!("{name}:{port}"),
        None => name.to_string(),
    })
}

/// `host[:port]` split, the port checked; `None` for a bad port.
fn split_port(host: &str) -> Option<(&str, Option<u16>)> {
    let colon = match host.rfind(':') {
        // The colons of a bracketed IPv6 address are not a port's.
        Some(at) if !host[at..].contains(']') => at,
        _ => return Some((host, None)),
    };
    let port: u16 = host[colon + 1..].parse().ok().filter(|p| *p > 0)?;
    Some((&host[..colon], Some(port)))
}

/// Labels of letters, digits and inner hyphens, at most 253 bytes in all.
fn is_dns_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_kept_as_git_names_them() {
        for (given, kept) in [
            ("GIT.Example.com", "git.example.com"),
            ("git.example.com:8443", "git.example.com:8443"),
            ("127.0.0.1:3000", "127.0.0.1:3000"),
            ("[::1]:8080", "[::1]:8080"),
            ("[::1]", "[::1]"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(normalize(given).unwrap(), kept);
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (given, why) in [
            ("https://git.example.com", "is a URL"),
            ("git.example.com/org", "is a URL"),
            ("git.example.com:0", "port"),
            ("git.example.com:https", "port"),
            ("", "not a host name"),
            ("git example.com", "not a host name"),
            ("-git.example.com", "not a host name"),
            ("git..example.com", "not a host name"),
            ("[not-v6]", "not a host name"),
            ("*.example.com", "not a host name"),
        ] {
            let e = normalize(given).unwrap_err().to_string();
            assert!(e.contains(why), "{given:?}: {e}");
        }
    }

    #[test]
    fn repeats_are_dropped_and_the_list_is_bounded() {
        let spec = CredentialSpec::Bearer {
            check_url: None,
            git_hosts: Vec::new(),
            upstream: None,
        };
        let hosts = vec!["A.example".into(), "a.example".into(), "b.example".into()];
        let spec = with_git_hosts(spec.clone(), hosts).unwrap();
        assert_eq!(spec.git_hosts(), ["a.example", "b.example"]);
        let many = (0..33).map(|i| format!("h{i}.example")).collect();
        assert!(with_git_hosts(spec, many).is_err());
    }
}
