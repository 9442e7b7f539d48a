//! The device authorization grant (RFC 8628) end to end: `tokenctl login
//! NAME --device` against the real oidc-provider with its device flow on,
//! the user played by `OidcServer::approve_device` / `deny_device`.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use tokend_tests::browser::{self, FakeBrowser, Page, PageHome};
use tokend_tests::oidc::{OidcServer, query_param};
use tokend_tests::*;

/// The server with a 1-second polling interval (the default is 5 s), plus `env`.
fn server(env: &[(&str, &str)]) -> OidcServer {
    let mut all = vec![("DEVICE_INTERVAL", "1")];
    all.extend_from_slice(env);
    OidcServer::start_with(60, &all)
}

/// Adds the auth-code client as `name` with the server's device endpoint.
fn add(d: &Daemon, idp: &OidcServer, name: &str) {
    let url = idp.device_auth_url();
    assert_ok(&d.add_oauth(idp, name, &["--device-auth-url", &url]));
}

/// A running `tokenctl login NAME --device --no-browser` and the two lines
/// it printed first.
struct DeviceLogin {
    child: Child,
    url: String,
    code: String,
}

impl DeviceLogin {
    /// Starts it, giving up after `timeout` seconds.
    fn start(d: &Daemon, name: &str, timeout: u32) -> DeviceLogin {
        DeviceLogin::start_in(d, name, timeout, None)
    }

    /// Starts it with a browser to open (`browser`'s stand-in for
    /// `xdg-open`), or `--no-browser` without one.
    fn start_in(
        d: &Daemon,
        name: &str,
        timeout: u32,
        browser: Option<&FakeBrowser>,
    ) -> DeviceLogin {
        let timeout = timeout.to_string();
        let mut cmd = Command::new(bin("tokenctl"));
        cmd.args(["login", name, "--device", "--timeout", &timeout])
            .env("TOKEND_SOCKET", &d.socket);
        match browser {
            Some(browser) => browser.apply(&mut cmd),
            None => {
                cmd.arg("--no-browser");
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokenctl login --device");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = |what: &str| {
            let mut l = String::new();
            out.read_line(&mut l).expect(what);
            l.trim_end().to_string()
        };
        let (url, code) = (line("first line"), line("second line"));
        DeviceLogin { child, url, code }
    }

    fn wait(self) -> Output {
        self.child.wait_with_output().expect("tokenctl login exits")
    }
}

#[test]
fn device_login_prints_the_url_then_the_code_and_the_grant_rotates_like_any_other() {
    let idp = server(&[]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let login = DeviceLogin::start(&d, "dev", 60);
    assert!(
        login.url.starts_with(&idp.issuer) && login.url.contains("user_code="),
        "the first line is verification_uri_complete alone: {:?}",
        login.url
    );
    assert_eq!(
        query_param(&login.url, "user_code").as_deref(),
        Some(login.code.as_str()),
        "the second line is the user code"
    );
    idp.approve_device(&login.url);
    let out = login.wait();
    assert_ok(&out);
    assert!(stderr(&out).contains("logged in"), "{}", stderr(&out));
    let first = stdout(&d.tokenctl(&["token", "dev"])).trim().to_string();
    assert!(idp.introspect(&first), "the server accepts the token");
    for _ in 0..2 {
        assert_ok(&d.tokenctl(&["refresh", "dev"]));
    }
    let last = stdout(&d.tokenctl(&["token", "dev"])).trim().to_string();
    assert_ne!(first, last, "refreshed");
    assert!(idp.introspect(&last));
    let stats = idp.stats();
    assert_eq!(stats["token_success"]["refresh_token"], 2, "{stats}");
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
}

#[test]
fn the_browser_opens_a_private_page_so_the_user_code_is_in_no_argv() {
    let idp = server(&[]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let browser = FakeBrowser::new(PageHome::TempDir);
    let login = DeviceLogin::start_in(&d, "dev", 60, Some(&browser));
    let argv = browser.wait_argv();
    let all = argv.join(" ");
    for secret in ["user_code", "?", login.code.as_str()] {
        assert!(
            !all.contains(secret),
            "{secret:?} in xdg-open's argv: {all}"
        );
    }
    assert!(all.starts_with("file:///") && argv.len() == 1, "{all}");
    let page = Page::of(&argv);
    let dir = page.path.parent().expect("the page's directory");
    assert_eq!(dir.parent(), Some(browser.pages().as_path()));
    assert_eq!(browser::mode(&page.path), 0o600, "the page's mode");
    assert_eq!(browser::mode(dir), 0o700, "its directory's mode");
    assert_eq!(
        page.target, login.url,
        "the page sends the browser to the URL"
    );
    idp.approve_device(&page.target);
    assert_ok(&login.wait());
    assert!(
        !dir.exists(),
        "{} is still there after the login",
        dir.display()
    );
    assert!(idp.introspect(stdout(&d.tokenctl(&["token", "dev"])).trim()));
}

#[test]
fn the_device_endpoint_is_discovered_from_the_issuer() {
    let idp = server(&[]);
    let d = Daemon::start();
    let out = d.tokenctl_stdin(
        &[
            "add",
            "oauth2",
            "dev",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tokend-test",
            "--scope",
            "openid",
        ],
        "tokend-test-secret",
    );
    assert_ok(&out);
    let show = stdout(&d.tokenctl(&["show", "dev"]));
    assert!(
        show.contains(&format!("{} (discovery)", idp.device_auth_url())),
        "{show}"
    );
    let login = DeviceLogin::start(&d, "dev", 60);
    idp.approve_device(&login.url);
    assert_ok(&login.wait());
    assert!(idp.introspect(stdout(&d.tokenctl(&["token", "dev"])).trim()));
}

#[test]
fn denying_the_device_login_exits_non_zero_naming_access_denied() {
    let idp = server(&[]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let login = DeviceLogin::start(&d, "dev", 60);
    idp.deny_device(&login.url);
    let out = login.wait();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("access_denied"), "{}", stderr(&out));
    assert_code(&d.tokenctl(&["token", "dev"]), 5);
}

#[test]
fn an_expired_device_code_exits_non_zero_naming_expired_token() {
    let idp = server(&[("DEVICE_CODE_TTL", "3")]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let login = DeviceLogin::start(&d, "dev", 60);
    let out = login.wait();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("expired_token"), "{}", stderr(&out));
    assert_code(&d.tokenctl(&["token", "dev"]), 5);
}

#[test]
fn the_timeout_ends_a_device_login_nobody_approves() {
    let idp = server(&[]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let login = DeviceLogin::start(&d, "dev", 2);
    let out = login.wait();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));
}

#[test]
fn removing_the_credential_cancels_its_device_login() {
    let idp = server(&[]);
    let d = Daemon::start();
    add(&d, &idp, "dev");
    let login = DeviceLogin::start(&d, "dev", 60);
    assert_ok(&d.tokenctl(&["rm", "dev"]));
    idp.approve_device(&login.url);
    let out = login.wait();
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("removed or replaced"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_credential_without_a_device_endpoint_is_told_how_to_add_one() {
    let idp = server(&[]);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "dev", &[]));
    let out = d.tokenctl(&["login", "dev", "--device", "--no-browser"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("--device-auth-url"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "nothing on stdout");
}
