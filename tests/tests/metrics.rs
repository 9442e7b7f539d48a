//! `GET /v1/metrics` on `http.sock` (docs/HTTP.md, "Metrics") end to end: a
//! bearer credential, a client-credentials one against the real OAuth2
//! server and one that needs a login; the series' types and values, a
//! forced refresh counted once, and no token or secret in the text.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::BTreeMap;
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
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in [
        "# TYPE tokend_credential_state gauge",
        "# TYPE tokend_access_token_expiry_timestamp_seconds gauge",
        "# TYPE tokend_tokens_served counter",
        "# TYPE tokend_refreshes counter",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE tokend_connections gauge",
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
    assert!(value(&text, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(value(&text, "process_open_fds") >= 3.0);
    assert!(
        value(&text, "tokend_connections") >= 1.0,
        "this scrape's own"
    );
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

/// The text read by a real parser of the format, Python's
/// `prometheus_client`, when it is installed (it is not a dependency).
#[test]
fn metrics_parse_with_prometheus_client_when_installed() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: Python's prometheus_client is not installed");
        return;
    }
    let idp = OidcServer::start(600);
    let d = daemon(&idp);
    assert_ok(&d.tokenctl(&["token", "cc"]));
    let (_, text) = scrape(&d);
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   print(f.name, f.type, len(f.samples))\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script]);
    let out = run_with_timeout(cmd, Some(&text), std::time::Duration::from_secs(60));
    assert_ok(&out);
    let families = stdout(&out);
    for family in [
        "tokend_credential_state gauge",
        "tokend_tokens_served counter",
        "tokend_refreshes counter",
    ] {
        assert!(families.contains(family), "{family} in\n{families}");
    }
}
