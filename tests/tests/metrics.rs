//! `GET /v1/metrics` on `http.sock` and `GET /metrics` on a `[metrics]
//! listen` address (docs/HTTP.md, "Metrics") end to end: a bearer
//! credential, a client-credentials one against the real OAuth2 server and
//! one that needs a login; the series' types and values as Prometheus's
//! own parser reads them, a forced refresh counted once, what another user
//! and the TCP listener see, and no token or secret in the text.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use tokend_tests::oidc::OidcServer;
use tokend_tests::*;

const TOKEN: &str = "upp-metrics-e2e-8d2e4b1c";
const CC_SECRET: &str = "tokend-cc-secret";

/// A daemon with the bearer `up`, the client-credentials `cc` and the
/// authorization-code `app` (never logged in: it needs a login).
fn daemon(idp: &OidcServer) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some("[refresh]\nstartup_spread_secs = 0\n".into()),
        ..Options::default()
    });
    d.add_bearer("up", TOKEN);
    assert_ok(&d.add_client_credentials(idp, "cc", CC_SECRET));
    assert_ok(&d.add_oauth(idp, "app", &[]));
    d
}

/// One scrape: its content type and text.
fn scrape(d: &Daemon) -> (String, String) {
    let r = d.http().get("/v1/metrics").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let kind = r.header("content-type").unwrap_or("").to_string();
    (kind, r.text())
}

/// Every sample as series (name and labels, as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a series and a value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    *samples(text)
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_report_each_credentials_state_expiry_and_counts_with_their_types() {
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    for _ in 0..2 {
        assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    }
    assert_ok(&d.tokenctl(&["token", "cc"]));

    let (kind, text) = scrape(&d);
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    for line in [
        "# TYPE tokend_credential_state gauge",
        "# TYPE tokend_access_token_expiry_timestamp_seconds gauge",
        "# TYPE tokend_tokens_served_total counter",
        "# TYPE tokend_refreshes_total counter",
        "# TYPE tokend_in_doubt_resolutions_total counter",
        "# TYPE tokend_refresh_duration_seconds histogram",
        "# TYPE tokend_requests_refused_total counter",
        "# TYPE tokend_store_up gauge",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE tokend_connections gauge",
        "# TYPE tokend_user_connections gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    let state = |name: &str, s: &str| {
        value(
            &text,
            &format!(r#"tokend_credential_state{{credential="{name}",state="{s}"}}"#),
        )
    };
    assert_eq!(state("app", "needs-login"), 1.0);
    assert_eq!(state("app", "ready"), 0.0);
    assert_eq!(state("up", "ready"), 1.0);
    assert_eq!(state("cc", "ready"), 1.0);
    assert_eq!(state("cc", "failing"), 0.0);

    let expiry = value(
        &text,
        r#"tokend_access_token_expiry_timestamp_seconds{credential="cc"}"#,
    );
    assert!(expiry > now() && expiry < now() + 700.0, "{expiry}");
    assert!(
        !text.contains(r#"tokend_access_token_expiry_timestamp_seconds{credential="up"}"#),
        "a bearer token without an expiry has none: {text}"
    );

    assert_eq!(
        value(&text, r#"tokend_tokens_served_total{credential="up"}"#),
        2.0
    );
    assert_eq!(
        value(&text, r#"tokend_tokens_served_total{credential="cc"}"#),
        1.0
    );
    assert!(
        !text.contains(r#"tokend_refreshes_total{credential="up""#),
        "a bearer credential never refreshes: {text}"
    );

    let start = value(&text, "process_start_time_seconds");
    assert!(start <= now() && start > now() - 600.0, "{start}");
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        let (_, again) = scrape(&d);
        assert_eq!(value(&again, "process_start_time_seconds"), start);
    }
    assert!(value(&text, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(value(&text, "process_open_fds") >= 3.0);
    assert_eq!(
        value(&text, r#"tokend_connections{listener="http"}"#),
        1.0,
        "this scrape's own"
    );
    assert_eq!(value(&text, "tokend_store_up"), 1.0);
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        value(&text, &format!(r#"tokend_user_connections{{uid="{uid}"}}"#)),
        1.0
    );
    assert!(
        value(&text, "tokend_refresh_duration_seconds_count") >= 1.0,
        "cc's first token came from the provider"
    );
    // `status` shows an admin the same per-user counts: its own connection.
    let status = stdout(&d.tokenctl(&["status"]));
    let line = status
        .lines()
        .find(|l| l.starts_with("by user  "))
        .unwrap_or_else(|| panic!("no per-user line in\n{status}"));
    assert!(line.ends_with(&format!("({uid}) 1")), "{line}");
}

#[test]
fn metrics_count_a_forced_refresh_once_as_ok() {
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    assert_ok(&d.tokenctl(&["token", "cc"]));
    let ok = r#"tokend_refreshes_total{credential="cc",result="ok"}"#;
    let (_, before) = scrape(&d);
    let before = value(&before, ok);
    assert!(before >= 1.0, "the first token came from a refresh");

    assert_ok(&d.tokenctl(&["refresh", "cc"]));
    let (_, after) = scrape(&d);
    assert_eq!(value(&after, ok), before + 1.0, "{after}");
    for result in ["transient", "in_doubt", "invalid_grant", "client_error"] {
        let series = format!(r#"tokend_refreshes_total{{credential="cc",result="{result}"}}"#);
        assert_eq!(value(&after, &series), 0.0, "{series}");
    }
}

#[test]
fn metrics_never_show_a_token_a_secret_or_a_client_id() {
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    let cc_token = stdout(&d.tokenctl(&["token", "cc"])).trim().to_string();
    assert!(!cc_token.is_empty());
    let (_, text) = scrape(&d);
    for secret in [
        TOKEN,
        cc_token.as_str(),
        CC_SECRET,
        "tokend-cc",
        "tokend-test-secret",
        "tokend-test",
    ] {
        assert!(!text.contains(secret), "{secret:?} in\n{text}");
    }
}

/// The text as Prometheus reads it: parsed by the reference parser of the
/// format, Python's `prometheus_client` (`./test.sh` and CI install it),
/// every family present with its type, after a refusal and a needs-login.
#[test]
fn metrics_parse_with_prometheus_clients_parser_with_every_family_typed() {
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    assert_ok(&d.tokenctl(&["token", "cc"]));
    assert!(!d.tokenctl(&["token", "app"]).status.success());
    assert!(!d.tokenctl(&["token", "nope"]).status.success());
    let (_, text) = scrape(&d);
    let families = parsed(&text);
    for family in [
        "tokend_credential_state gauge",
        "tokend_access_token_expiry_timestamp_seconds gauge",
        "tokend_refresh_token_expiry_timestamp_seconds gauge",
        "tokend_tokens_served counter",
        "tokend_refreshes counter",
        "tokend_in_doubt_resolutions counter",
        "tokend_refresh_duration_seconds histogram",
        "tokend_requests_refused counter",
        "tokend_store_up gauge",
        "tokend_store_lock_wait_seconds histogram",
        "tokend_store_lock_busy counter",
        "tokend_proxy_requests counter",
        "tokend_proxy_retries counter",
        "tokend_connections gauge",
        "tokend_user_connections gauge",
        "process_start_time_seconds gauge",
        "process_resident_memory_bytes gauge",
        "process_open_fds gauge",
    ] {
        assert!(
            families
                .lines()
                .any(|l| l.starts_with(&format!("{family} "))),
            "{family} in\n{families}"
        );
    }
    assert!(
        families.contains(
            r#"tokend_credential_state {'credential': 'app', 'state': 'needs-login'} 1.0"#
        ),
        "{families}"
    );
    assert!(
        families.contains(r#"tokend_requests_refused_total {'reason': 'unknown_credential'} 1.0"#),
        "{families}"
    );
    assert!(
        families.contains(r#"tokend_requests_refused_total {'reason': 'not_usable'} 1.0"#),
        "{families}"
    );
}

/// `text` through `prometheus_client.parser.text_string_to_metric_families`:
/// one line per family (`NAME TYPE SAMPLES`), then one per sample
/// (`NAME LABELS VALUE`).
fn parsed(text: &str) -> String {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   print(f.name, f.type, len(f.samples))\n\
        \x20   for s in f.samples:\n\
        \x20       print(s.name, dict(sorted(s.labels.items())), float(s.value))\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let out = run_with_timeout(cmd, Some(text), std::time::Duration::from_secs(60));
    assert!(
        out.status.success(),
        "Python's prometheus_client must be installed (`pip install prometheus_client`; ./test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Another user allowed one credential sees that one only, and nothing
/// of the daemon's own (refusals, connections, the process).
#[test]
fn another_user_scrapes_only_the_credentials_it_may_use() {
    let Some(who) = users::other_user() else {
        return;
    };
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    d.open_to_everyone();
    set_mode(&d.http_socket(), 0o666);
    assert_ok(&d.tokenctl(&["allow", "cc", "--user", users::USER]));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(d.http_socket())
        .arg("http://localhost/v1/metrics");
    who.run_as(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(r#"tokend_credential_state{credential="cc",state="ready"}"#),
        "{text}"
    );
    for hidden in [
        r#"credential="up""#,
        r#"credential="app""#,
        "process_",
        "tokend_connections",
        "tokend_user_connections",
        "tokend_requests_refused",
        "tokend_store_up",
    ] {
        assert!(
            !text.contains(hidden),
            "{hidden} shown to another user:\n{text}"
        );
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET http://127.0.0.1:PORT/PATH`: its status and body.
fn over_tcp(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.parse().unwrap_or(0), body.to_string())
}

/// The `[metrics] listen` address: without `credential_labels`, counts
/// and states with no name; with, the names; and nothing but `/metrics`.
#[test]
fn the_metrics_listener_shows_names_only_when_the_operator_allows_them() {
    let idp = OidcServer::start(600);
    for labels in [false, true] {
        let port = free_port();
        let d = Daemon::start_with(Options {
            config: Some(format!(
                "[refresh]\nstartup_spread_secs = 0\n[metrics]\nlisten = [\"127.0.0.1:{port}\"]\ncredential_labels = {labels}\n"
            )),
            ..Options::default()
        });
        d.add_bearer("up", TOKEN);
        assert_ok(&d.add_client_credentials(&idp, "cc", CC_SECRET));
        assert_ok(&d.add_oauth(&idp, "app", &[]));
        assert_ok(&d.tokenctl(&["token", "cc"]));
        let (status, text) = over_tcp(port, "/metrics");
        assert_eq!(status, 200, "{text}");
        let families = parsed(&text);
        assert!(families.contains("tokend_refresh_duration_seconds histogram"));
        assert!(families.contains("process_open_fds gauge"));
        assert!(!text.contains("tokend_user_connections"), "{text}");
        if labels {
            assert_eq!(
                value(
                    &text,
                    r#"tokend_credential_state{credential="app",state="needs-login"}"#
                ),
                1.0
            );
        } else {
            assert!(
                !text.contains("credential="),
                "a name without credential_labels:\n{text}"
            );
            assert_eq!(value(&text, r#"tokend_credentials{state="ready"}"#), 2.0);
            assert_eq!(
                value(&text, r#"tokend_credentials{state="needs-login"}"#),
                1.0
            );
            assert_eq!(value(&text, "tokend_tokens_served_total"), 1.0);
            assert!(value(&text, r#"tokend_refreshes_total{result="ok"}"#) >= 1.0);
        }
        assert_eq!(over_tcp(port, "/v1/credentials").0, 404);
        assert_eq!(over_tcp(port, "/").0, 404);
    }
}
