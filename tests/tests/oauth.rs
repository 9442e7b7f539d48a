//! OAuth2 end to end: the real binaries against a real, independently
//! written OAuth2 server (oidc-provider from npm) that rotates refresh tokens
//! and revokes the grant on reuse.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::Write;
use std::time::{Duration, Instant};
use tokend_tests::browser::{self, FakeBrowser, Page, PageHome};
use tokend_tests::oidc::{OidcServer, curl, eventually, query_param};
use tokend_tests::*;

fn token(d: &Daemon, name: &str) -> String {
    let out = d.tokenctl(&["token", name]);
    assert_ok(&out);
    stdout(&out).trim().to_string()
}

fn show(d: &Daemon, name: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&d.tokenctl(&["show", name, "--json"]))).expect("show JSON")
}

#[test]
fn login_through_the_loopback_listener_stores_working_tokens() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let out = d.add_oauth(&idp, "uptempo", &[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("tokenctl login uptempo"),
        "{}",
        stderr(&out)
    );
    assert_code(&d.tokenctl(&["token", "uptempo"]), 5);
    let (child, url) = d.start_login("uptempo", &[]);
    assert!(
        url.starts_with(&idp.auth_url()) && url.contains("state="),
        "first line is the URL alone: {url}"
    );
    let redirect = idp.browse(&url);
    assert!(
        redirect.contains("iss="),
        "the provider adds iss, which must be tolerated"
    );
    let page = curl(&["-s", &redirect]);
    assert!(page.contains("Logged in"), "{page}");
    assert_ok(&child.wait_with_output().unwrap());
    let access = token(&d, "uptempo");
    assert!(idp.introspect(&access), "the server accepts the token");
    assert_eq!(show(&d, "uptempo")["state"], "ready");
}

/// Asserts that nothing of the login's secrets is in what the browser's
/// opener was started with: its arguments are the page's `file://` URL alone.
fn assert_no_login_secret_in(argv: &[String], authorize_url: &str) {
    let all = argv.join(" ");
    let state = query_param(authorize_url, "state").expect("the URL has a state");
    let challenge = query_param(authorize_url, "code_challenge").expect("PKCE is on");
    let port = listener_port(authorize_url);
    for secret in [
        "state=",
        "code_challenge",
        "redirect_uri",
        "?",
        &state,
        &challenge,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1%3A{port}"),
    ] {
        assert!(
            !all.contains(secret),
            "{secret:?} in xdg-open's argv: {all}"
        );
    }
    assert_eq!(argv.len(), 1, "one argument: {all}");
    assert!(all.starts_with("file:///"), "{all}");
}

/// Asserts that the page was private to the user: mode 0600, in a 0700
/// directory of its own made in `home`.
fn assert_private_page(page: &Page, home: &std::path::Path) {
    let dir = page.path.parent().expect("the page's directory");
    assert_eq!(dir.parent(), Some(home), "{}", page.path.display());
    assert_eq!(browser::mode(&page.path), 0o600, "the page's mode");
    assert_eq!(browser::mode(dir), 0o700, "its directory's mode");
}

#[test]
fn the_browser_opens_a_private_page_so_no_login_secret_is_in_any_argv() {
    for home in [PageHome::RuntimeDir, PageHome::TempDir] {
        let idp = OidcServer::start(60);
        let d = Daemon::start();
        assert_ok(&d.add_oauth(&idp, "up", &[]));
        let browser = FakeBrowser::new(home);
        let (child, url) = d.start_login_in(&browser, "up", &[]);
        let argv = browser.wait_argv();
        assert_no_login_secret_in(&argv, &url);
        let page = Page::of(&argv);
        assert_private_page(&page, &browser.pages());
        assert_eq!(page.target, url, "the page sends the browser to the URL");
        assert!(
            page.html.contains("http-equiv=\"refresh\"") && page.html.contains("location.replace"),
            "{}",
            page.html
        );
        let redirect = idp.browse(&page.target);
        let answer = curl(&["-s", &redirect]);
        assert!(answer.contains("Logged in"), "{answer}");
        assert_ok(&child.wait_with_output().unwrap());
        let dir = page.path.parent().unwrap();
        assert!(
            !dir.exists(),
            "{} is still there after the login",
            dir.display()
        );
        assert!(idp.introspect(&token(&d, "up")));
    }
}

#[test]
fn a_pasted_login_removes_its_page_when_it_ends() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(
        &idp,
        "up",
        &["--redirect-uri", "http://127.0.0.1/paste-callback"],
    ));
    let browser = FakeBrowser::new(PageHome::RuntimeDir);
    let (mut child, url) = d.start_login_in(&browser, "up", &["--paste"]);
    let argv = browser.wait_argv();
    assert!(!argv.join(" ").contains("state="), "{argv:?}");
    let page = Page::of(&argv);
    assert_private_page(&page, &browser.pages());
    assert_eq!(page.target, url);
    let redirect = idp.browse(&page.target);
    writeln!(child.stdin.as_mut().unwrap(), "{redirect}").unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert!(!page.path.exists(), "the page outlived the login");
}

#[test]
fn login_by_pasting_the_redirect_url() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(
        &idp,
        "up",
        &["--redirect-uri", "http://127.0.0.1/paste-callback"],
    ));
    let (mut child, url) = d.start_login("up", &["--paste"]);
    let redirect = idp.browse(&url);
    writeln!(child.stdin.as_mut().unwrap(), "{redirect}").unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert!(idp.introspect(&token(&d, "up")));
}

#[test]
fn a_redirect_with_a_wrong_state_is_refused() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(
        &idp,
        "up",
        &["--redirect-uri", "http://127.0.0.1/paste-callback"],
    ));
    let (mut child, url) = d.start_login("up", &["--paste"]);
    let redirect = idp.browse(&url);
    let forged = redirect.replace("state=", "state=forged");
    writeln!(child.stdin.as_mut().unwrap(), "{forged}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("state"), "{}", stderr(&out));
    assert_code(&d.tokenctl(&["token", "up"]), 5);
}

#[test]
fn denied_consent_exits_non_zero_naming_access_denied() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &["--param", "login_hint=deny"]));
    let (child, url) = d.start_login("up", &[]);
    let redirect = idp.browse(&url);
    assert!(redirect.contains("error=access_denied"), "{redirect}");
    let page = curl(&["-s", &redirect]);
    assert!(
        page.contains("access_denied"),
        "the browser is told why: {page}"
    );
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("access_denied"), "{}", stderr(&out));
}

/// The loopback listener's port, from the `redirect_uri` in the authorize URL.
fn listener_port(authorize_url: &str) -> u16 {
    let redirect = tokend_tests::oidc::query_param(authorize_url, "redirect_uri")
        .expect("the authorize URL names its redirect_uri");
    url_port(&redirect)
}

fn url_port(url: &str) -> u16 {
    let authority = url.split("://").nth(1).and_then(|r| r.split('/').next());
    authority
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// One raw GET to the listener, as any local process could send; the
/// listener's answer (status line, headers and page).
fn stray_get(port: u16, target: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_stray_error_redirect_without_the_state_is_ignored_and_the_login_completes() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    let (mut child, url) = d.start_login("up", &[]);
    let port = listener_port(&url);
    for stray in [
        "/callback?error=access_denied",
        "/callback?error=access_denied&state=forged",
        "/favicon.ico",
    ] {
        let answer = stray_get(port, stray);
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{stray}: refused: {answer}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{stray}: tokenctl login ended"
        );
    }
    assert!(
        stray_get(port, "/callback?error=access_denied").contains("not the answer to this login"),
        "the stray request is told why"
    );
    let redirect = idp.browse(&url);
    let page = curl(&["-s", &redirect]);
    assert!(page.contains("Logged in"), "{page}");
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert!(idp.introspect(&token(&d, "up")));
}

#[test]
fn a_login_started_before_rm_and_add_again_cannot_complete() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    let (child, url) = d.start_login("up", &[]);
    let redirect = idp.browse(&url);
    assert_ok(&d.tokenctl(&["rm", "up"]));
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    let page = curl(&["-s", &redirect]);
    assert!(page.contains("Login failed"), "{page}");
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 1);
    // Without the cancel in `rm`: the identity check refuses; with it: the
    // login is gone. Either way the message says the credential was removed.
    assert!(stderr(&out).contains("removed"), "{}", stderr(&out));
    assert_code(&d.tokenctl(&["token", "up"]), 5);
    assert_eq!(show(&d, "up")["state"], "needs-login");
}

#[test]
fn pkce_s256_is_the_default_and_no_pkce_turns_it_off() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    let shown = stdout(&d.tokenctl(&["show", "up"]));
    assert!(shown.contains("S256"), "{shown}");
    let (child, url) = d.start_login("up", &[]);
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    curl(&["-s", &idp.browse(&url)]);
    assert_ok(&child.wait_with_output().unwrap());
    assert_ok(&d.add_oauth(&idp, "plain", &["--no-pkce"]));
    let (child, url) = d.start_login("plain", &[]);
    assert!(!url.contains("code_challenge"), "{url}");
    curl(&["-s", &idp.browse(&url)]);
    assert_ok(&child.wait_with_output().unwrap());
    let both = d.add_oauth(&idp, "both", &["--pkce", "--no-pkce"]);
    assert_code(&both, 2);
}

#[test]
fn pkce_and_client_secret_basic_work_together() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &["--pkce", "--client-auth", "basic"]));
    let (child, url) = d.start_login("up", &[]);
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let redirect = idp.browse(&url);
    curl(&["-s", &redirect]);
    assert_ok(&child.wait_with_output().unwrap());
    let first = token(&d, "up");
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    let second = token(&d, "up");
    assert_ne!(first, second);
    assert!(idp.introspect(&second));
}

#[test]
fn a_minute_of_five_second_tokens_never_serves_a_dead_token_nor_reuses_a_refresh_token() {
    let idp = OidcServer::start(5);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    d.login(&idp, "up");
    let mut client = d.client();
    let started = Instant::now();
    let mut distinct = std::collections::HashSet::new();
    let mut asked = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let t = client.token("up").expect("a token every time");
        assert!(
            idp.introspect(t.expose()),
            "token {asked} was refused by the server"
        );
        distinct.insert(t.expose().to_string());
        asked += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let stats = idp.stats();
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    assert!(
        distinct.len() >= 12,
        "tokens were refreshed ahead of expiry: {} distinct of {asked}",
        distinct.len()
    );
    // The grant is still alive at the end: one more refresh succeeds.
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    assert!(idp.introspect(&token(&d, "up")));
}

#[test]
fn a_thousand_concurrent_requests_for_an_insufficient_token_cause_one_refresh() {
    let idp = OidcServer::start(30);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    d.login(&idp, "up");
    std::thread::sleep(Duration::from_millis(5_500));
    let before = idp.refreshes();
    // Every caller needs 25 s of validity, which the held token (30 s
    // lifetime, aged 5.5 s) no longer has: all of them need the one new token,
    // as at the moment of expiry.
    let socket = d.socket.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let workers: Vec<_> = (0..1000)
        .map(|_| {
            let (socket, barrier) = (socket.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = tokend_client::Client::connect(&socket).expect("connect");
                barrier.wait();
                client
                    .token_reply("up", 25)
                    .expect("token")
                    .token
                    .expose()
                    .to_string()
            })
        })
        .collect();
    let tokens: std::collections::HashSet<String> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(
        idp.refreshes() - before,
        1,
        "exactly one refresh at the token endpoint"
    );
    assert_eq!(tokens.len(), 1, "everyone got the same new token");
    assert!(idp.introspect(tokens.iter().next().unwrap()));
}

#[test]
fn client_credentials_tokens_are_served_and_renewed_ahead_of_expiry() {
    let idp = OidcServer::start(4);
    let d = Daemon::start();
    let out = d.add_client_credentials(&idp, "cc", "tokend-cc-secret\n");
    assert_ok(&out);
    let first = token(&d, "cc");
    assert!(idp.introspect(&first));
    // With nobody asking, the scheduler renews it before it expires.
    assert!(eventually(Duration::from_secs(15), || {
        idp.stats()["token_requests"]["client_credentials"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    }));
    let later = token(&d, "cc");
    assert_ne!(first, later);
    assert!(idp.introspect(&later));
}

fn fault_daemon(idp: &OidcServer, notify: &std::path::Path) -> Daemon {
    let config = format!(
        "notify_command = \"echo $TOKEND_CREDENTIAL $TOKEND_STATE >> {}\"\n[refresh]\nhttp_timeout_secs = 2\nmin_backoff_secs = 1\nmax_backoff_secs = 2\n",
        notify.display()
    );
    let d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    // With introspection, a refresh whose answer was lost (drop, garbage,
    // a timeout) is settled without a login (docs/RULES.md).
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(idp, "up", &["--introspection-url", &introspection]));
    d.login(idp, "up");
    d
}

#[test]
fn token_endpoint_faults_keep_the_valid_token_and_recover_on_their_own() {
    let idp = OidcServer::start(120);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = fault_daemon(&idp, notify.path());
    let held = token(&d, "up");
    let faults = [
        r#"{"mode":"503","count":2}"#,
        r#"{"mode":"drop","count":2}"#,
        r#"{"mode":"slow","count":1,"delay_ms":4000}"#,
        r#"{"mode":"garbage","count":2}"#,
        r#"{"mode":"429","count":1,"retry_after":2}"#,
    ];
    let mut current = held;
    for fault in faults {
        let refreshed_before = idp.refreshes();
        idp.fault(fault);
        let out = d.tokenctl(&["refresh", "up"]);
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains("refresh failed"),
            "{fault}: {}",
            stderr(&out)
        );
        assert_eq!(
            token(&d, "up"),
            current,
            "{fault}: the valid token is still served"
        );
        assert!(idp.introspect(&current));
        // No one intervenes: the backoff retry succeeds once the fault is gone.
        assert!(
            eventually(Duration::from_secs(20), || idp.refreshes()
                > refreshed_before
                && token(&d, "up") != current),
            "{fault}: recovered on its own; show: {}",
            show(&d, "up")
        );
        current = token(&d, "up");
        assert!(idp.introspect(&current), "{fault}");
        assert_eq!(show(&d, "up")["state"], "ready");
    }
    assert_eq!(idp.stats()["refresh_token_reuse"], 0);
    assert!(
        std::fs::read_to_string(notify.path()).unwrap().is_empty(),
        "no state change, no notification"
    );
}

#[test]
fn invalid_grant_turns_the_credential_to_needs_login_and_notifies_once() {
    let idp = OidcServer::start(120);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = fault_daemon(&idp, notify.path());
    idp.fault(r#"{"mode":"invalid_grant"}"#);
    assert_code(&d.tokenctl(&["refresh", "up"]), 5);
    let out = d.tokenctl(&["token", "up"]);
    assert_code(&out, 5);
    assert!(
        stderr(&out).contains("run `tokenctl login up`"),
        "{}",
        stderr(&out)
    );
    let status = stdout(&d.tokenctl(&["status"]));
    assert!(
        status.contains("needs-login") && status.contains("invalid_grant"),
        "{status}"
    );
    assert!(eventually(Duration::from_secs(5), || {
        !std::fs::read_to_string(notify.path()).unwrap().is_empty()
    }));
    std::thread::sleep(Duration::from_millis(500));
    assert_code(&d.tokenctl(&["token", "up"]), 5);
    assert_eq!(
        std::fs::read_to_string(notify.path()).unwrap(),
        "up needs-login\n",
        "the notify command ran once"
    );
    // A new login brings it back.
    idp.fault(r#"{"mode":"none"}"#);
    d.login(&idp, "up");
    assert!(idp.introspect(&token(&d, "up")));
}

#[test]
fn reject_refreshes_once_and_ignores_an_already_replaced_token() {
    let idp = OidcServer::start(120);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    d.login(&idp, "up");
    let old = token(&d, "up");
    let before = idp.refreshes();
    assert_ok(&d.tokenctl_stdin(&["reject", "up", "--token-stdin"], &old));
    assert_eq!(idp.refreshes(), before + 1);
    let out = d.tokenctl_stdin(&["reject", "up", "--token-stdin"], &old);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("already replaced"),
        "{}",
        stderr(&out)
    );
    assert_eq!(idp.refreshes(), before + 1);
    assert_ne!(token(&d, "up"), old);
}

#[test]
fn secrets_stay_out_of_the_trace_log_and_the_store_through_login_refresh_and_reject() {
    let idp = OidcServer::start(60);
    let d = Daemon::start_with(Options {
        log_level: Some("trace".into()),
        ..Options::default()
    });
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    d.login(&idp, "up");
    let mut seen = vec!["tokend-test-secret".to_string(), token(&d, "up")];
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    seen.push(token(&d, "up"));
    assert_ok(&d.tokenctl_stdin(&["reject", "up", "--token-stdin"], seen.last().unwrap()));
    seen.push(token(&d, "up"));
    let log = d.log_text();
    assert!(
        log.contains("login complete") && log.contains("new token"),
        "the trace log was written"
    );
    let db = std::fs::read(&d.db).unwrap();
    let wal = std::fs::read(d.db.with_extension("db-wal")).unwrap_or_default();
    for secret in &seen {
        assert!(!log.contains(secret.as_str()), "the log holds a secret");
        for (what, bytes) in [("database", &db), ("WAL", &wal)] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the {what} holds a secret in the clear"
            );
        }
    }
    assert!(!all_argv().contains("tokend-test-secret"));
}
