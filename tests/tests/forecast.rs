//! The refresh token's forecast (issue 21, item 3): when a grant needs a
//! login again, from the token answer's `refresh_expires_in` or else from
//! introspection; shown by `show`, kept across restarts, and notified once
//! as `expiring` when it comes within `refresh.warn_before_secs`.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::*;

/// The grant (and so every refresh token of it) lives this long.
const REFRESH_TTL: i64 = 120;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn forecast(d: &Daemon, name: &str) -> Option<i64> {
    let out = d.tokenctl(&["show", name, "--json"]);
    assert_ok(&out);
    let show: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("show JSON");
    show["refresh_expires_at"].as_i64()
}

/// A daemon whose notify command appends "NAME STATE UNIX-TIME" to
/// `notify`, with `extra` in its `[refresh]` table.
fn daemon(notify: &std::path::Path, extra: &str) -> Daemon {
    let config = format!(
        "notify_command = \"echo $TOKEND_CREDENTIAL $TOKEND_STATE $(date +%s) >> {}\"\n[refresh]\n{extra}\n",
        notify.display()
    );
    Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    })
}

/// Logs `name` in and gives the bounds of the grant's true end: the
/// provider's grant lives `REFRESH_TTL` from its creation, during the login.
fn login(d: &Daemon, idp: &OidcServer, name: &str) -> (i64, i64) {
    let before = now();
    d.login(idp, name);
    (before + REFRESH_TTL, now() + REFRESH_TTL)
}

fn expiring_lines(notify: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(notify)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" expiring "))
        .map(str::to_string)
        .collect()
}

#[test]
fn show_gives_the_refresh_token_expiry_and_expiring_is_notified_once() {
    let idp = OidcServer::start_with(5, &[("REFRESH_TTL", "120")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let mut d = daemon(notify.path(), "warn_before_secs = 100");
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    let (earliest, latest) = login(&d, &idp, "up");
    let at = forecast(&d, "up").expect("refresh_expires_in gives a forecast at once");
    assert!(
        (earliest - 5..=latest + 5).contains(&at),
        "forecast {at}, truth between {earliest} and {latest}"
    );
    let text = stdout(&d.tokenctl(&["show", "up"]));
    assert!(
        text.contains("refresh expires") && text.contains("log in before then"),
        "{text}"
    );
    // The metrics give the same forecast.
    let metrics = d.http().get("/v1/metrics").unwrap().text();
    let series = r#"tokend_refresh_token_expiry_timestamp_seconds{credential="up"} "#;
    let line = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert_eq!(line.parse::<i64>().unwrap(), at, "{metrics}");
    // 100 s before a 120 s grant: about 20 s after the login.
    assert!(
        eventually(Duration::from_secs(40), || !expiring_lines(notify.path())
            .is_empty()),
        "no expiring notification; log:\n{}",
        d.log_text()
    );
    let line = expiring_lines(notify.path())[0].clone();
    let fired: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let due = at - 100;
    assert!(
        (due - 3..=due + 5).contains(&fired),
        "notified at {fired}, due at {due}: {line}"
    );
    assert!(line.starts_with("up expiring "), "{line}");
    // Refreshes every few seconds keep the same forecast: no second one,
    // and none after a restart either (the warning is in the store).
    std::thread::sleep(Duration::from_secs(8));
    assert!(d.stop().success());
    d.restart();
    assert_eq!(
        forecast(&d, "up"),
        Some(at),
        "the forecast survives a restart"
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(expiring_lines(notify.path()), vec![line]);
}

#[test]
fn without_refresh_expires_in_the_forecast_comes_from_introspection() {
    let idp = OidcServer::start_with(5, &[("REFRESH_TTL", "120"), ("REFRESH_EXPIRES_IN", "0")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = daemon(notify.path(), "");
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(&idp, "up", &["--introspection-url", &introspection]));
    assert_ok(&d.add_oauth(&idp, "blind", &[]));
    let (earliest, latest) = login(&d, &idp, "up");
    assert!(
        eventually(Duration::from_secs(10), || forecast(&d, "up").is_some()),
        "no forecast from introspection; log:\n{}",
        d.log_text()
    );
    let at = forecast(&d, "up").unwrap();
    assert!(
        (earliest - 5..=latest + 5).contains(&at),
        "forecast {at}, truth between {earliest} and {latest}"
    );
    // Without an introspection endpoint nothing can tell: unknown.
    d.login(&idp, "blind");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(forecast(&d, "blind"), None);
    let text = stdout(&d.tokenctl(&["show", "blind"]));
    assert!(text.contains("unknown"), "{text}");
    // A warning of its own: `edit --warn-before`, an app's only.
    assert_ok(&d.tokenctl(&["edit", "up", "--warn-before", "3d"]));
    let out = d.tokenctl(&["show", "up", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        show["spec"]["oauth2"]["refresh_warn_before_secs"], 259_200,
        "{show}"
    );
    assert_ok(&d.tokenctl(&["edit", "up", "--no-warn-before"]));
    d.add_bearer("static", "tok");
    let refused = d.tokenctl(&["edit", "static", "--warn-before", "1h"]);
    assert!(
        stderr(&refused).contains("--warn-before"),
        "{}",
        stderr(&refused)
    );
    assert!(!refused.status.success());
    // The default warning (3 days) is far beyond a 120 s grant: notified
    // once, at once.
    assert!(eventually(Duration::from_secs(10), || expiring_lines(
        notify.path()
    )
    .len()
        == 1));
}

/// Review of issue 21, item 1: an answer without `refresh_expires_in`
/// keeps the previous refresh token's forecast until introspection tells,
/// so the warning is not given again at every rotation.
#[test]
fn an_introspected_forecast_is_warned_of_once_across_rotations() {
    let idp = OidcServer::start_with(5, &[("REFRESH_TTL", "120"), ("REFRESH_EXPIRES_IN", "0")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = daemon(notify.path(), "warn_before_secs = 200");
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(&idp, "up", &["--introspection-url", &introspection]));
    let before = idp.refreshes();
    login(&d, &idp, "up");
    assert!(
        eventually(Duration::from_secs(10), || !expiring_lines(notify.path())
            .is_empty()),
        "no expiring notification; log:\n{}",
        d.log_text()
    );
    // Access tokens of 5 s: several rotations, each introspected.
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        idp.refreshes() >= before + 4,
        "too few refreshes: {}",
        idp.refreshes() - before
    );
    assert!(forecast(&d, "up").is_some());
    let lines = expiring_lines(notify.path());
    assert_eq!(lines.len(), 1, "{lines:?}; log:\n{}", d.log_text());
}

/// Review of issue 21, item 1: with `keep_alive`, an introspected forecast
/// that stays put across a rotation is an absolute limit: no refresh for
/// it after the first (which could not tell), never faster and faster.
#[test]
fn keep_alive_does_not_chase_an_introspected_absolute_limit() {
    let idp = OidcServer::start_with(3600, &[("REFRESH_TTL", "40"), ("REFRESH_EXPIRES_IN", "0")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = daemon(notify.path(), "warn_before_secs = 100\nkeep_alive = true");
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(&idp, "up", &["--introspection-url", &introspection]));
    login(&d, &idp, "up");
    let before = idp.refreshes();
    // The first forecast cannot tell a limit that moves: one refresh at
    // halfway (20 s); then the forecast stayed put, so none before the
    // grant ends (without the fix: at 30, 35, 37.5… s).
    std::thread::sleep(Duration::from_secs(37));
    let n = idp.refreshes() - before;
    assert!(n <= 1, "{n} keep-alive refreshes; log:\n{}", d.log_text());
}

/// Review of issue 21, item 2: an `expiring` warning whose notify command
/// cannot start (16 run already) waits for a place; it is never noted as
/// given without its command running. Twenty credentials warn at once
/// while every command blocks: 16 run, the other 4 once the first end.
#[test]
fn expiring_waits_for_a_notify_command_place_and_runs_once() {
    let idp = OidcServer::start_with(5, &[("REFRESH_TTL", "120")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let config = format!(
        "notify_command = \"echo $TOKEND_CREDENTIAL $TOKEND_STATE now >> {}; while [ ! -e {} ]; do sleep 0.2; done\"\n[refresh]\nwarn_before_secs = 200\n",
        notify.path().display(),
        release.display()
    );
    let d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for name in &names {
        assert_ok(&d.add_oauth(&idp, name, &[]));
        d.login(&idp, name);
    }
    assert!(
        eventually(Duration::from_secs(20), || expiring_lines(notify.path())
            .len()
            >= 16),
        "{:?}; log:\n{}",
        expiring_lines(notify.path()),
        d.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(expiring_lines(notify.path()).len(), 16);
    std::fs::write(&release, "").unwrap();
    assert!(
        eventually(Duration::from_secs(20), || expiring_lines(notify.path())
            .len()
            >= 20),
        "{:?}; log:\n{}",
        expiring_lines(notify.path()),
        d.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let lines = expiring_lines(notify.path());
    for name in &names {
        let n = lines
            .iter()
            .filter(|l| l.split(' ').next() == Some(name.as_str()))
            .count();
        assert_eq!(n, 1, "{name}: {lines:?}");
    }
}

/// Review of issue 21, item 3: a refresh token dropped (`invalid_grant`:
/// needs-login) takes its forecast with it, in memory as in the row, and
/// its warning is not given.
#[test]
fn a_dropped_refresh_token_takes_its_forecast_with_it() {
    let idp = OidcServer::start_with(60, &[("REFRESH_TTL", "120")]);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let d = daemon(notify.path(), "warn_before_secs = 100");
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    login(&d, &idp, "up");
    assert!(forecast(&d, "up").is_some());
    idp.fault(r#"{"mode":"invalid_grant","count":1,"grant_type":"refresh_token"}"#);
    let out = d.tokenctl(&["refresh", "up"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = d.tokenctl(&["show", "up", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(show["state"], "needs-login", "{show}");
    assert!(show["refresh_expires_at"].is_null(), "{show}");
    // Due 20 s after the login: no warning for a grant already gone.
    std::thread::sleep(Duration::from_secs(22));
    assert_eq!(expiring_lines(notify.path()), Vec::<String>::new());
}
