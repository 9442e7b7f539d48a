//! `tokenctl login`: print the authorize URL, then catch the redirect on a
//! loopback listener (RFC 8252) or read the pasted redirect URL; or, with
//! `--device`, print the verification URL and user code (RFC 8628) and wait
//! while the daemon polls. A browser is opened on a page that redirects to
//! the URL, never on the URL itself (see `browser.rs`).
//!
//! Any local process can reach the loopback listener. Only a request that
//! carries this login's `state` is the provider's answer and is passed on to
//! the daemon; anything else (no state, another state, another path) gets a
//! short page saying it was ignored, and the listener keeps waiting.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokend_client::{Client, CredentialSpec};

/// Why the login did not complete.
pub enum LoginError {
    Client(tokend_client::Error),
    Other(String),
}

impl From<tokend_client::Error> for LoginError {
    fn from(e: tokend_client::Error) -> Self {
        LoginError::Client(e)
    }
}

impl From<String> for LoginError {
    fn from(e: String) -> Self {
        LoginError::Other(e)
    }
}

/// Where the browser will be sent back to.
struct Redirect {
    /// The URI sent to the provider.
    uri: String,
    /// Where to listen (None: the user pastes the URL).
    listen: Option<(SocketAddr, String)>,
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Chooses the redirect: the registered one, or a loopback listener on a free port.
fn plan(stored: Option<&str>, paste: bool) -> Result<Redirect, String> {
    let Some(stored) = stored else {
        if paste {
            return Err(
                "--paste needs a registered redirect URI: add the credential with --redirect-uri"
                    .into(),
            );
        }
        return Ok(Redirect {
            uri: "http://127.0.0.1:0/callback".into(),
            listen: Some(("127.0.0.1:0".parse().expect("literal"), "/callback".into())),
        });
    };
    let url =
        url::Url::parse(stored).map_err(|e| format!("the stored redirect URI is invalid: {e}"))?;
    let host = url.host_str().unwrap_or("").to_string();
    if paste {
        return Ok(Redirect {
            uri: stored.to_string(),
            listen: None,
        });
    }
    if url.scheme() != "http" || !is_loopback_host(&host) {
        return Err(format!(
            "the redirect URI {stored} is not a loopback http address, so tokenctl cannot receive it; run `tokenctl login NAME --paste` and paste the URL the browser ends on"
        ));
    }
    let ip: IpAddr = if host == "localhost" {
        "127.0.0.1".parse().expect("literal")
    } else {
        host.trim_matches(['[', ']'])
            .parse()
            .map_err(|_| "bad host".to_string())?
    };
    let port = url.port().unwrap_or(0);
    Ok(Redirect {
        uri: stored.to_string(),
        listen: Some((SocketAddr::new(ip, port), url.path().to_string())),
    })
}

pub fn run(
    client: &mut Client,
    name: &str,
    paste: bool,
    no_browser: bool,
    timeout: u64,
) -> Result<String, LoginError> {
    let info = client.show(name)?;
    let CredentialSpec::OAuth2(spec) = &info.spec else {
        return Err(LoginError::Other(format!(
            "credential {name:?} is {}: only oauth2 credentials log in",
            info.spec.kind()
        )));
    };
    let plan = plan(spec.redirect_uri.as_deref(), paste)?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    match plan.listen {
        None => {
            let challenge = client.login_start(name, Some(plan.uri))?;
            let _page = announce(&challenge.authorize_url, no_browser);
            eprintln!(
                "After approving, paste the full URL your browser was sent to (its address bar), then press Enter:"
            );
            let line = read_line_until(deadline)?;
            Ok(client.login_finish(&challenge.login_id, line.trim())?)
        }
        Some((addr, path)) => {
            let server = tiny_http::Server::http(addr)
                .map_err(|e| format!("cannot listen on {addr} for the redirect: {e}"))?;
            let bound = server
                .server_addr()
                .to_ip()
                .ok_or_else(|| "the listener has no IP address".to_string())?;
            let mut uri = url::Url::parse(&plan.uri).map_err(|e| e.to_string())?;
            if uri.port().is_none_or(|p| p == 0) {
                uri.set_port(Some(bound.port()))
                    .map_err(|_| "cannot set the redirect port".to_string())?;
            }
            let uri = uri.to_string();
            let challenge = client.login_start(name, Some(uri.clone()))?;
            let _page = announce(&challenge.authorize_url, no_browser);
            eprintln!(
                "Waiting for the browser to come back to {uri} (from another machine: ssh -L {port}:127.0.0.1:{port} this-host)",
                port = bound.port()
            );
            let _countdown = crate::countdown::Countdown::start(
                "Waiting for the browser to come back",
                deadline,
            );
            let expected = state_of(&challenge.authorize_url)?;
            let listener = Listener {
                server: &server,
                base: url::Url::parse(&uri).map_err(|e| e.to_string())?,
                path,
                state: expected,
            };
            serve_redirect(client, &listener, &challenge.login_id, deadline)
        }
    }
}

/// `tokenctl login NAME --device` (RFC 8628): prints the verification URL
/// alone on stdout's first line and the user code on the second (scripts
/// read them), then waits while the daemon polls the provider.
pub fn device(
    client: &mut Client,
    name: &str,
    no_browser: bool,
    timeout: u64,
) -> Result<String, LoginError> {
    let challenge = client.device_login_start(name)?;
    let url = challenge
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&challenge.verification_uri);
    crate::output::out!("{url}");
    crate::output::out!("{}", challenge.user_code);
    let _ = std::io::stdout().flush();
    let minutes = ((challenge.expires_at - now_secs()).max(0) as u64).div_ceil(60);
    eprintln!(
        "Open the URL above on any device, check that it shows the code {} (or enter it at {}), and approve. The code expires in {minutes} min; waiting for the approval…",
        challenge.user_code, challenge.verification_uri
    );
    let _page = crate::browser::open(url, no_browser);
    Ok(client.device_login_finish(&challenge.login_id, Duration::from_secs(timeout))?)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Prints the URL alone on stdout's first line (scripts read it), hints on
/// stderr, and opens a browser. The page the browser was given is removed
/// when the returned value is dropped: keep it until the login ends.
fn announce(url: &str, no_browser: bool) -> Option<crate::browser::RedirectPage> {
    crate::output::out!("{url}");
    let _ = std::io::stdout().flush();
    eprintln!("Open the URL above in a browser and approve the access.");
    crate::browser::open(url, no_browser)
}

fn read_line_until(deadline: Instant) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = std::io::stdin().lock().read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(line)) if !line.trim().is_empty() => Ok(line),
        Ok(Ok(_)) => Err("no redirect URL was pasted".into()),
        Ok(Err(e)) => Err(format!("cannot read the pasted URL: {e}")),
        Err(_) => Err("the login timed out waiting for the pasted URL".into()),
    }
}

const PAGE: &str = "<!doctype html><meta charset=utf-8><title>tokend</title><body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{body}</p></body>";

fn page(title: &str, body: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let html = PAGE
        .replace("{title}", &escape(title))
        .replace("{body}", &escape(body));
    let header =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..])
            .expect("static header");
    tiny_http::Response::from_string(html).with_header(header)
}

/// The `state` in the daemon's authorize URL: what the real redirect carries.
fn state_of(authorize_url: &str) -> Result<String, String> {
    url::Url::parse(authorize_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
        })
        .ok_or_else(|| "the daemon's authorize URL carries no `state`".to_string())
}

/// The loopback listener and what it waits for.
struct Listener<'a> {
    server: &'a tiny_http::Server,
    /// The redirect URI, to rebuild the full URL of a request.
    base: url::Url,
    path: String,
    state: String,
}

/// What one request to the listener is.
enum Arrival {
    /// The provider's redirect for this login: its full URL.
    Answer(String),
    /// Not for the listener at all (e.g. `/favicon.ico`).
    OtherPath,
    /// The callback path without this login's `state`: a stray or forged request.
    Stray,
}

impl Listener<'_> {
    fn classify(&self, target: &str) -> Arrival {
        let Ok(url) = self.base.join(target) else {
            return Arrival::OtherPath;
        };
        if url.path() != self.path {
            return Arrival::OtherPath;
        }
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned());
        if state.as_deref() != Some(self.state.as_str()) {
            return Arrival::Stray;
        }
        Arrival::Answer(url.to_string())
    }
}

/// Waits for the provider's redirect, ignoring every other request, then
/// completes the login with it.
fn serve_redirect(
    client: &mut Client,
    listener: &Listener<'_>,
    login_id: &str,
    deadline: Instant,
) -> Result<String, LoginError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LoginError::Other(
                "the login timed out waiting for the browser's redirect".into(),
            ));
        }
        let Ok(Some(request)) = listener.server.recv_timeout(left) else {
            continue;
        };
        let full = match listener.classify(request.url()) {
            Arrival::Answer(full) => full,
            Arrival::OtherPath => {
                let _ = request.respond(
                    page(
                        "Not found",
                        "This address is only for the tokend login redirect.",
                    )
                    .with_status_code(404),
                );
                continue;
            }
            Arrival::Stray => {
                crate::countdown::note(
                    "Ignored a request to the redirect listener without this login's state; still waiting.",
                );
                let _ = request.respond(
                    page(
                        "Ignored",
                        "This is not the answer to this login (its state does not match); ignored. The login is still waiting for the provider's redirect.",
                    )
                    .with_status_code(400),
                );
                continue;
            }
        };
        let result = client.login_finish(login_id, &full);
        let response = match &result {
            Ok(_) => page(
                "Logged in",
                "tokend has stored the tokens. You can close this tab.",
            ),
            Err(e) => page("Login failed", &e.to_string()).with_status_code(400),
        };
        let _ = request.respond(response);
        return Ok(result?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(target: &str) -> Arrival {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let listener = Listener {
            server: &server,
            base: url::Url::parse("http://127.0.0.1:5000/callback").unwrap(),
            path: "/callback".into(),
            state: "s3cr3t".into(),
        };
        listener.classify(target)
    }

    #[test]
    fn only_a_request_with_this_logins_state_is_the_answer() {
        assert!(matches!(
            classify("/callback?code=c&state=s3cr3t&iss=x"),
            Arrival::Answer(u) if u.starts_with("http://127.0.0.1:5000/callback?code=c")
        ));
        assert!(matches!(
            classify("/callback?error=access_denied&state=s3cr3t"),
            Arrival::Answer(_)
        ));
        for stray in [
            "/callback?error=access_denied",
            "/callback?error=access_denied&state=other",
            "/callback?code=c",
            "/callback",
            "/callback?state=s3cr3tX",
        ] {
            assert!(matches!(classify(stray), Arrival::Stray), "{stray}");
        }
        for other in ["/favicon.ico", "/", "/callback/x?state=s3cr3t"] {
            assert!(matches!(classify(other), Arrival::OtherPath), "{other}");
        }
    }

    #[test]
    fn the_state_is_read_from_the_authorize_url() {
        assert_eq!(
            state_of("https://idp/auth?client_id=a&state=abc%2Bd&scope=x").unwrap(),
            "abc+d"
        );
        assert!(state_of("https://idp/auth?client_id=a").is_err());
    }
}
