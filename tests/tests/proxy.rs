//! The credential-injecting proxy end to end (issue 20): real tokend, the
//! real OAuth2 test server, and its resource API, which answers 403 for a
//! token that is not (or no longer) accepted, as Uptempo's API does.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokend_tests::oidc::OidcServer;
use tokend_tests::users;
use tokend_tests::*;

/// One answer through the proxy, as curl saw it.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// `curl ARGS http://localhost/v1/proxy/PATH` on the daemon's `http.sock`.
fn proxied(d: &Daemon, path: &str, args: &[&str]) -> Answer {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let headers = d.dir.path().join(format!("headers-{n}"));
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "-D"])
        .arg(&headers)
        .arg("--unix-socket")
        .arg(d.http_socket())
        .args(args)
        .arg(format!("http://localhost/v1/proxy/{path}"))
        .output()
        .expect("curl");
    // The last head: curl also writes a `100 Continue` before it.
    let all = std::fs::read_to_string(&headers).unwrap_or_default();
    let headers = all
        .rfind("HTTP/")
        .map_or(String::new(), |at| all[at..].to_string());
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// A daemon with the oauth2 credential `ut` logged in against `server`,
/// its API URL the server's resource API.
fn logged_in(server: &OidcServer) -> Daemon {
    logged_in_with(server, "")
}

/// [`logged_in`], the daemon started with `config` as its config file.
fn logged_in_with(server: &OidcServer, config: &str) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some(config.into()),
        ..Options::default()
    });
    assert_ok(&d.add_oauth(server, "ut", &["--api-url", &server.api_url()]));
    d.login(server, "ut");
    d
}

/// POSTs `bytes` bytes to `ut/upload` through `http.sock`, chunked (its
/// length not said up front, so the proxy streams it) or not.
fn upload(d: &Daemon, bytes: usize, chunked: bool) -> Answer {
    let file = d.dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'x'; bytes]).unwrap();
    let data = format!("@{}", file.display());
    let mut args = vec!["-X", "POST", "--data-binary", &data];
    if chunked {
        args.extend(["-H", "Transfer-Encoding: chunked"]);
    }
    proxied(d, "ut/upload", &args)
}

#[test]
fn get_and_post_reach_the_api_with_the_token_and_never_the_clients_credentials() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    let a = proxied(
        &d,
        "ut/campaigns/7?page=2&q=a%20b",
        &[
            "-H",
            "Authorization: Bearer the-clients-own",
            "-H",
            "Proxy-Authorization: Basic eDp5",
            "-H",
            "X-Trace: 42",
        ],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let body = a.json();
    assert_eq!(body["path"], "/api/campaigns/7");
    assert_eq!(body["query"], "?page=2&q=a%20b");
    assert_eq!(body["method"], "GET");
    let a = proxied(
        &d,
        "ut/campaigns",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"name":"launch"}"#,
        ],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["body"], r#"{"name":"launch"}"#);
    let seen = server.api_requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(r["authorization_scheme"], "Bearer");
        assert_eq!(r["token"], 1, "tokend's token, the same both times: {r}");
        assert!(r["headers"]["proxy-authorization"].is_null(), "{r}");
    }
    assert_eq!(seen[0]["headers"]["x-trace"], "42", "other headers pass");
    // The client's own bearer token is not the one the API saw: the API
    // accepted the request, which it would not with "the-clients-own".
    assert_eq!(a.header("tokend-retried"), None);
}

#[test]
fn a_token_the_api_stops_accepting_is_replaced_once_and_the_request_sent_again() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    assert_eq!(proxied(&d, "ut/one", &[]).status, 200);
    let refreshes = server.refreshes();
    // The API stops accepting that token; the grant stays valid.
    server.api_control(r#"{"refuse_seen": true}"#);
    let a = proxied(&d, "ut/two", &["-X", "POST", "--data", "payload"]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("tokend-retried").as_deref(), Some("1"));
    assert_eq!(a.json()["body"], "payload", "the held body is sent again");
    assert_eq!(server.refreshes(), refreshes + 1, "exactly one refresh");
    let seen = server.api_requests();
    let tokens: Vec<_> = seen.iter().map(|r| r["token"].clone()).collect();
    assert_eq!(
        tokens,
        [1, 1, 2],
        "the stale token once more, then the new one once: {seen:?}"
    );
    assert_eq!(server.stats()["refresh_token_reuse"], 0);
}

#[test]
fn fifty_requests_with_a_refused_token_cost_one_refresh() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    assert_eq!(proxied(&d, "ut/warm", &[]).status, 200);
    let refreshes = server.refreshes();
    server.api_control(r#"{"refuse_seen": true}"#);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let d = &d;
        let handles: Vec<_> = (0..50)
            .map(|i| s.spawn(move || proxied(d, &format!("ut/n/{i}"), &[]).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        server.refreshes(),
        refreshes + 1,
        "one refresh for all fifty"
    );
    assert_eq!(server.stats()["refresh_token_reuse"], 0);
}

#[test]
fn an_api_that_refuses_everything_gets_two_requests_and_one_refresh() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    server.api_control(r#"{"mode": "always403"}"#);
    let refreshes = server.refreshes();
    let a = proxied(&d, "ut/x", &[]);
    assert_eq!(a.status, 403);
    assert_eq!(
        a.json()["error"],
        "forbidden",
        "the upstream's own answer: {}",
        a.body
    );
    assert_eq!(a.header("tokend-retried").as_deref(), Some("1"));
    assert_eq!(a.header("tokend-error"), None, "not tokend's answer");
    assert_eq!(server.api_requests().len(), 2);
    assert_eq!(server.refreshes(), refreshes + 1);
}

#[test]
fn a_large_streamed_upload_refused_is_sent_once_and_not_retried() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    server.api_control(r#"{"mode": "always403"}"#);
    let a = upload(&d, 5 * 1024 * 1024, true);
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.header("tokend-retried"), None);
    let seen = server.api_requests();
    assert_eq!(seen.len(), 1, "one upstream request: {seen:?}");
    assert_eq!(seen[0]["body_bytes"], 5 * 1024 * 1024);
    // The token was rejected for the next request all the same.
    server.api_control(r#"{"mode": "normal"}"#);
    let next = proxied(&d, "ut/after", &[]);
    assert_eq!(next.status, 200);
    assert_eq!(
        server.api_requests().last().unwrap()["token"],
        2,
        "a new token"
    );
}

#[test]
fn a_redirect_comes_back_unfollowed() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    server.api_control(r#"{"mode": "redirect"}"#);
    let a = proxied(&d, "ut/moved", &[]);
    assert_eq!(a.status, 302);
    assert!(a.header("location").unwrap().ends_with("/api/elsewhere"));
    assert_eq!(server.api_requests().len(), 1, "not followed");
}

#[test]
fn errors_say_what_to_do() {
    let server = OidcServer::start(3600);
    let d = Daemon::start_with(Options {
        config: Some("[proxy]\nupstream_timeout_secs = 1\n".into()),
        ..Options::default()
    });
    let unknown = proxied(&d, "nope/x", &[]);
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("tokend-error").as_deref(),
        Some("unknown_credential")
    );

    d.add_bearer("plain", "plain-token");
    let no_url = proxied(&d, "plain/x", &[]);
    assert_eq!(no_url.status, 404);
    assert_eq!(no_url.header("tokend-error").as_deref(), Some("no_api_url"));
    assert!(
        no_url.json()["message"]
            .as_str()
            .unwrap()
            .contains("tokenctl edit plain --api-url")
    );

    assert_ok(&d.add_oauth(&server, "ut", &["--api-url", &server.api_url()]));
    let login = proxied(&d, "ut/x", &[]);
    assert_eq!(login.status, 503, "{}", login.body);
    assert_eq!(login.json()["state"], "needs-login");
    assert!(
        login.json()["message"]
            .as_str()
            .unwrap()
            .contains("tokenctl login ut")
    );

    d.login(&server, "ut");
    assert_ok(&d.tokenctl(&["edit", "ut", "--api-url", "http://127.0.0.1:9/"]));
    let down = proxied(&d, "ut/x", &[]);
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(
        down.header("tokend-error").as_deref(),
        Some("upstream_unreachable")
    );

    assert_ok(&d.tokenctl(&["edit", "ut", "--api-url", &server.api_url()]));
    server.api_control(r#"{"mode": "slow", "delay_ms": 3000}"#);
    let slow = proxied(&d, "ut/x", &[]);
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(
        slow.header("tokend-error").as_deref(),
        Some("upstream_timeout")
    );

    server.api_control(r#"{"mode": "normal"}"#);
    let climb = proxied(&d, "ut/a/%2e%2e/%2e%2e/test/stats", &[]);
    assert_eq!(climb.status, 400, "{}", climb.body);
    // A malformed request gets 400 and its connection serves the next one:
    // two requests on one connection (curl reuses it: 0 new connections).
    let out = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "-w",
            "%{http_code} %{num_connects}\n",
            "--unix-socket",
        ])
        .arg(d.http_socket())
        .args(["-o", "/dev/null", "http://localhost/v1/proxy/ut/a/../b"])
        .args(["-o", "/dev/null", "http://localhost/v1/proxy/ut/ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400 1\n200 0\n");
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `curl ARGS http://127.0.0.1:PORT/PATH`, as `who` when given.
fn over_tcp(port: u16, path: &str, args: &[&str], who: Option<users::Other>) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "60", "-i"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/{path}"));
    if let Some(who) = who {
        who.run_as(&mut cmd);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

/// A daemon with `ut` logged in and a proxy listener on a loopback port.
fn with_listener(server: &OidcServer) -> (Daemon, u16) {
    let port = free_port();
    let d = logged_in_with(
        server,
        &format!("[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    );
    (d, port)
}

#[test]
fn the_tcp_listener_serves_name_and_path_with_the_token() {
    let server = OidcServer::start(3600);
    let (d, port) = with_listener(&server);
    let a = over_tcp(
        port,
        "ut/campaigns?x=1",
        &["-H", "Authorization: Bearer mine"],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["path"], "/api/campaigns");
    assert_eq!(a.json()["query"], "?x=1");
    let a = over_tcp(
        port,
        "ut/campaigns",
        &["--data", "{}", "-H", "Content-Type: application/json"],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["method"], "POST");
    assert!(server.api_requests().iter().all(|r| r["token"] == 1));
    // Only the proxy is there: the API's routes are not.
    assert_eq!(over_tcp(port, "v1/status", &[], None).status, 404);
    assert_eq!(over_tcp(port, "", &[], None).status, 404);
    drop(d);
}

#[test]
fn another_user_is_refused_on_both_routes_until_allowed() {
    let Some(who) = users::other_user() else {
        return;
    };
    let server = OidcServer::start(3600);
    let (d, port) = with_listener(&server);
    d.open_to_everyone();
    set_mode(&d.http_socket(), 0o666);
    let by_socket = |who| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(d.http_socket())
        .arg("http://localhost/v1/proxy/ut/secret-data");
        if let Some(who) = who {
            users::Other::run_as(&who, &mut cmd);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert_eq!(by_socket(Some(who)), "403");
    let tcp = over_tcp(port, "ut/secret-data", &[], Some(who));
    assert_eq!(tcp.status, 403, "{}", tcp.body);
    assert_eq!(
        tcp.header("tokend-error").as_deref(),
        Some("permission_denied")
    );
    assert!(server.api_requests().is_empty(), "the upstream saw nothing");

    assert_ok(&d.tokenctl(&["allow", "ut", "--user", users::USER]));
    assert_eq!(by_socket(Some(who)), "200");
    assert_eq!(over_tcp(port, "ut/secret-data", &[], Some(who)).status, 200);
    assert_eq!(server.api_requests().len(), 2);
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

#[test]
fn a_200_mib_download_streams_through_without_being_held() {
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    assert_eq!(proxied(&d, "ut/warm", &[]).status, 200);
    let pid = d.pid();
    let before = status_kib(pid, "VmRSS");
    let size = 200 * 1024 * 1024;
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "--unix-socket",
        ])
        .arg(d.http_socket())
        .arg(format!(
            "http://localhost/v1/proxy/ut/download?bytes={size}"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {size}"));
    let peak = status_kib(pid, "VmHWM");
    assert!(
        peak < before + 32 * 1024,
        "the daemon's RSS grew from {before} KiB to a peak of {peak} KiB"
    );
}

#[test]
fn proxy_url_names_the_tcp_listener_else_the_http_socket() {
    let server = OidcServer::start(3600);
    let (d, port) = with_listener(&server);
    let out = d.tokenctl(&["proxy-url", "ut"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("http://127.0.0.1:{port}/ut/\n"));

    let plain = logged_in(&server);
    let out = plain.tokenctl(&["proxy-url", "ut"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "http://localhost/v1/proxy/ut/\n");
    let hint = stderr(&out);
    assert!(
        hint.contains(&format!("--unix-socket {}", plain.http_socket().display())),
        "{hint}"
    );
    // What it prints works.
    let a = proxied(&plain, "ut/via-url", &[]);
    assert_eq!(a.status, 200);

    plain.add_bearer("bare", "bare-token");
    let out = plain.tokenctl(&["proxy-url", "bare"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("tokenctl edit bare --api-url"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_web_page_cannot_use_the_tcp_listener() {
    // A browser runs as the user, so its sockets are the user's: a page of
    // another site must not reach the API through the listener, neither by
    // a cross-site request (CSRF) nor by a name rebound to 127.0.0.1.
    let server = OidcServer::start(3600);
    let (d, port) = with_listener(&server);
    let rebound = format!("Host: evil.example:{port}");
    let other_port = format!("Host: 127.0.0.1:{}", port.wrapping_add(1));
    for (why, header, status, code) in [
        (
            "a rebound name",
            rebound.as_str(),
            421,
            "misdirected_request",
        ),
        (
            "another port",
            other_port.as_str(),
            421,
            "misdirected_request",
        ),
        (
            "a page's request",
            "Origin: https://evil.example",
            403,
            "cross_origin",
        ),
        (
            "a page's fetch",
            "Sec-Fetch-Site: cross-site",
            403,
            "cross_origin",
        ),
        (
            "a page on this host",
            "Sec-Fetch-Site: same-site",
            403,
            "cross_origin",
        ),
    ] {
        let a = over_tcp(port, "ut/campaigns", &["-H", header, "--data", "a=1"], None);
        assert_eq!(a.status, status, "{why}: {}", a.body);
        assert_eq!(a.header("tokend-error").as_deref(), Some(code), "{why}");
    }
    assert!(server.api_requests().is_empty(), "the upstream saw nothing");
    // Clients that name the listener as they reach it are served.
    let by_name = format!("Host: localhost:{port}");
    assert_eq!(over_tcp(port, "ut/x", &["-H", &by_name], None).status, 200);
    assert_eq!(over_tcp(port, "ut/x", &[], None).status, 200);
    assert_eq!(
        over_tcp(port, "ut/x", &["-H", "Sec-Fetch-Site: none"], None).status,
        200,
        "typed in the address bar"
    );
    drop(d);
}

#[test]
fn a_path_never_climbs_out_by_backslashes_or_other_spellings() {
    // The test server parses URLs as browsers and Node do (WHATWG), where
    // `\` is `/`: `/api/..\test\api` is `/test/api`, outside the API URL.
    let server = OidcServer::start(3600);
    let d = logged_in(&server);
    for path in [
        r"ut/..\test\api",
        r"ut/a/..%5C..%5Ctest%5Capi",
        "ut/..%2Ftest%2Fapi",
        "ut/..;/test/api",
    ] {
        let a = proxied(&d, path, &["--path-as-is"]);
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert_eq!(a.header("tokend-error").as_deref(), Some("bad_request"));
    }
    for method in ["TRACE", "CONNECT"] {
        let a = proxied(&d, "ut/x", &["-X", method]);
        assert_eq!(a.status, 405, "{method}: {}", a.body);
        assert_eq!(
            a.header("tokend-error").as_deref(),
            Some("method_not_allowed")
        );
    }
    assert!(server.api_requests().is_empty(), "the upstream saw nothing");
    assert_eq!(
        proxied(&d, r"ut/a%5Cb/c..d", &[]).status,
        200,
        "not a climb"
    );
}

#[test]
fn an_upstream_that_stops_mid_answer_is_cut_off_and_frees_its_place() {
    let server = OidcServer::start(3600);
    let d = logged_in_with(
        &server,
        "[proxy]\nupstream_timeout_secs = 1\nmax_concurrent_per_user = 1\n",
    );
    let started = std::time::Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "--unix-socket",
        ])
        .arg(d.http_socket())
        .arg("http://localhost/v1/proxy/ut/download?bytes=1000000&stall_after=1000")
        .output()
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "cut off after the idle limit, not at curl's own timeout: {:?}",
        started.elapsed()
    );
    assert!(!out.status.success(), "the answer ended short, as an error");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1000");
    // Its place came back: the user's one place serves the next request.
    assert_eq!(proxied(&d, "ut/after", &[]).status, 200);
}

#[test]
fn a_streamed_body_past_the_limit_is_cut_off_with_413() {
    let server = OidcServer::start(3600);
    let d = logged_in_with(&server, "[proxy]\nmax_request_bytes = 1048576\n");
    // Chunked: the length is not known before, so it is streamed and cut.
    let a = upload(&d, 2 * 1024 * 1024, true);
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(
        a.header("tokend-error").as_deref(),
        Some("payload_too_large")
    );
    // With its length said up front, it is refused before anything is sent.
    let before = server.api_requests().len();
    let a = upload(&d, 2 * 1024 * 1024, false);
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(server.api_requests().len(), before, "nothing sent");
}

/// A client that asks for a large download and stops reading is closed
/// after `limits.idle_timeout_secs` without progress: it does not hold
/// its place, the upstream connection and their buffers for ever.
#[test]
fn a_client_that_stops_reading_its_answer_is_closed_after_the_idle_timeout() {
    use std::io::{Read, Write};
    let server = OidcServer::start(3600);
    let d = logged_in_with(
        &server,
        "[limits]\nidle_timeout_secs = 2\nframe_timeout_secs = 1\n",
    );
    let mut stream = std::os::unix::net::UnixStream::connect(d.http_socket()).unwrap();
    let size = 200 * 1024 * 1024;
    write!(
        stream,
        "GET /v1/proxy/ut/download?bytes={size} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    // Read nothing while the daemon's writes fill the socket, then drain.
    std::thread::sleep(std::time::Duration::from_secs(6));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after the idle timeout ({got} bytes read): {e}"),
        }
    }
    assert!(
        got < size,
        "the answer was cut short: {got} bytes\n{}",
        d.log_text()
    );
}
