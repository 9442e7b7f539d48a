//! The rotation promise end to end (docs/RULES.md): a refresh token is never
//! sent twice and never lost, whatever happens to the process, the provider
//! or the credential: kills mid-refresh settled by introspection, a replace
//! during a refresh, grants without refresh tokens, odd token responses, a
//! provider asking to wait, and cleartext endpoints.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::*;

fn show(d: &Daemon, name: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&d.tokenctl(&["show", name, "--json"]))).expect("show JSON")
}

fn token(d: &Daemon, name: &str) -> String {
    let out = d.tokenctl(&["token", name]);
    assert_ok(&out);
    stdout(&out).trim().to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A daemon with `up`, an auth-code credential of `idp` with its
/// introspection endpoint, logged in. A 2-second HTTP timeout: a journal
/// mark's lease (1 s + 2 s + 3 s, docs/RULES.md "Fencing") keeps a restart
/// from settling a doubt for up to 6 s.
fn logged_in(idp: &OidcServer) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some(
            "[refresh]\nstartup_spread_secs = 0\nwait_secs = 5\nhttp_timeout_secs = 2\n".into(),
        ),
        ..Options::default()
    });
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(idp, "up", &["--introspection-url", &introspection]));
    d.login(idp, "up");
    d
}

/// `tokenctl refresh up` in the background.
fn refresh_in_background(d: &Daemon) -> Child {
    Command::new(bin("tokenctl"))
        .args(["refresh", "up"])
        .env("TOKEND_SOCKET", &d.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tokenctl refresh")
}

/// Waits until the provider has received `n` refresh requests.
fn wait_for_refresh_posts(idp: &OidcServer, n: u64) {
    assert!(
        eventually(Duration::from_secs(10), || {
            idp.stats()["token_posts_by_grant"]["refresh_token"].as_u64() >= Some(n)
        }),
        "the refresh never reached the provider"
    );
}

#[test]
fn a_kill_after_the_provider_rotated_asks_for_a_login_without_reuse_and_serves_a_live_token() {
    let idp = OidcServer::start(60);
    let mut d = logged_in(&idp);
    let before = token(&d, "up");
    idp.fault(r#"{"mode":"hold","delay_ms":5000,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(&d);
    wait_for_refresh_posts(&idp, 1);
    assert!(eventually(Duration::from_secs(5), || idp.stats()["held"] == 1));
    d.kill9();
    let _ = child.wait();
    idp.fault(r#"{"mode":"none"}"#);
    d.restart();
    // Nothing is introspected before the dead refresh's lease is over.
    assert_eq!(idp.stats()["introspections"], 0);
    assert!(
        eventually(Duration::from_secs(15), || show(&d, "up")["state"]
            == "needs-login"),
        "{}",
        d.log_text()
    );
    let info = show(&d, "up");
    let reason = info["reason"].as_str().unwrap();
    assert!(reason.contains("introspection says"), "{reason}");
    assert!(reason.contains("log in before then"), "{reason}");
    // The token from before the kill is still served, and still accepted.
    let served = token(&d, "up");
    assert_eq!(served, before);
    assert!(idp.introspect(&served), "the provider still accepts it");
    let stats = idp.stats();
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(stats["introspected_inactive_rotated"], 1, "{stats}");
    assert_eq!(
        stats["token_posts_by_grant"]["refresh_token"], 1,
        "never resent"
    );
    // A login brings it back.
    d.login(&idp, "up");
    assert_eq!(show(&d, "up")["state"], "ready");
}

#[test]
fn a_kill_before_the_provider_processed_the_refresh_keeps_the_grant_alive() {
    let idp = OidcServer::start(60);
    let mut d = logged_in(&idp);
    idp.fault(r#"{"mode":"stall","delay_ms":5000,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(&d);
    wait_for_refresh_posts(&idp, 1);
    d.kill9();
    let _ = child.wait();
    idp.fault(r#"{"mode":"none"}"#);
    d.restart();
    // Introspected once the dead refresh's lease is over: still active,
    // so the refresh goes on.
    assert!(
        eventually(Duration::from_secs(15), || {
            idp.stats()["token_success"]["refresh_token"] == 1
        }),
        "{}",
        d.log_text()
    );
    assert_eq!(show(&d, "up")["state"], "ready");
    // And the next refresh works too: the grant is alive, no login needed.
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    let stats = idp.stats();
    assert_eq!(stats["introspected_active"], 1, "{stats}");
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(stats["token_success"]["refresh_token"], 2, "{stats}");
    assert!(idp.introspect(&token(&d, "up")));
}

#[test]
fn a_replace_during_a_slow_refresh_keeps_the_replacement_before_and_after_a_restart() {
    let idp = OidcServer::start(60);
    let mut d = logged_in(&idp);
    idp.fault(r#"{"mode":"delay","delay_ms":2000,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(&d);
    wait_for_refresh_posts(&idp, 1);
    let out = d.tokenctl_stdin(&["add", "bearer", "up", "--replace"], "the-replacement");
    assert_ok(&out);
    let _ = child.wait();
    assert_eq!(token(&d, "up"), "the-replacement");
    assert_eq!(
        show(&d, "up")["spec"]["bearer"]["check_url"],
        serde_json::Value::Null
    );
    d.stop();
    d.spawn();
    assert_eq!(token(&d, "up"), "the-replacement", "after a restart too");
}

#[test]
fn a_grant_without_a_refresh_token_is_served_until_it_expires_then_asks_for_a_login() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    // The code exchange answers with a 20-second token and no refresh token.
    idp.fault(
        r#"{"mode":"body","grant_type":"authorization_code","count":1,
            "body":{"access_token":"no-refresh-at","token_type":"Bearer","expires_in":20}}"#,
    );
    let started = std::time::Instant::now();
    d.login(&idp, "up");
    assert_eq!(show(&d, "up")["has_refresh_token"], false);
    std::thread::sleep(Duration::from_secs(17).saturating_sub(started.elapsed()));
    assert_eq!(token(&d, "up"), "no-refresh-at", "served at second 17");
    std::thread::sleep(Duration::from_secs(21).saturating_sub(started.elapsed()));
    let out = d.tokenctl(&["token", "up"]);
    assert_code(&out, 5);
    assert!(
        stderr(&out).contains("tokenctl login up"),
        "{}",
        stderr(&out)
    );
    assert_eq!(show(&d, "up")["state"], "needs-login");
    assert_eq!(idp.stats()["token_posts_by_grant"]["refresh_token"], 0);
}

#[test]
fn odd_token_responses_neither_panic_nor_loop() {
    let idp = OidcServer::start(3600);
    let d = logged_in(&idp);
    let body = |json: &str| {
        format!(r#"{{"mode":"body","grant_type":"refresh_token","count":1,"body":{json}}}"#)
    };
    for (json, lo, hi) in [
        (
            r#"{"access_token":"huge","token_type":"Bearer","expires_in":1e15}"#,
            364 * 86_400,
            366 * 86_400,
        ),
        (
            r#"{"access_token":"zero","token_type":"Bearer","expires_in":0}"#,
            55,
            61,
        ),
        (
            r#"{"access_token":"neg","token_type":"Bearer","expires_in":-5}"#,
            55,
            61,
        ),
        (
            r#"{"access_token":"lower","token_type":"bearer","expires_in":300}"#,
            295,
            301,
        ),
    ] {
        idp.fault(&body(json));
        assert_ok(&d.tokenctl(&["refresh", "up"]));
        let info = show(&d, "up");
        assert_eq!(info["state"], "ready", "{json}: {info}");
        let life = info["expires_at"].as_i64().unwrap() - now();
        assert!((lo..=hi).contains(&life), "{json}: lifetime {life}");
    }
    let posts = || {
        idp.stats()["token_posts_by_grant"]["refresh_token"]
            .as_u64()
            .unwrap()
    };
    // A 200 that is not JSON: in doubt, introspected later, not looped.
    idp.fault(r#"{"mode":"garbage","count":1,"grant_type":"refresh_token"}"#);
    let out = d.tokenctl(&["refresh", "up"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in doubt"), "{}", stderr(&out));
    let after = posts();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        posts(),
        after,
        "no retry within the pause after an odd answer"
    );
    let info = show(&d, "up");
    assert_eq!(info["state"], "ready");
    assert!(
        info["last_error"].as_str().unwrap().contains("in doubt"),
        "{info}"
    );
    // A 200 without an access token or a refresh token: the refresh token
    // sent is spent; a login is asked for, nothing is sent again.
    idp.fault(&body(r#"{"token_type":"Bearer","expires_in":60}"#));
    let mut d = logged_in(&idp);
    let out = d.tokenctl(&["refresh", "up"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without an access_token"),
        "{}",
        stderr(&out)
    );
    let after = posts();
    assert!(!d.tokenctl(&["refresh", "up"]).status.success());
    assert_eq!(posts(), after, "nothing is sent after it");
    let info = show(&d, "up");
    assert_eq!(info["state"], "needs-login");
    assert!(info["reason"].as_str().unwrap().contains("spent"), "{info}");
    assert!(d.is_running(), "no panic:\n{}", d.log_text());
}

#[test]
fn a_provider_asking_to_wait_gets_one_request_for_three_refreshes_and_a_reject() {
    let idp = OidcServer::start(3600);
    let d = logged_in(&idp);
    idp.fault(r#"{"mode":"429","retry_after":600,"grant_type":"refresh_token"}"#);
    let first = d.tokenctl(&["refresh", "up"]);
    assert!(!first.status.success());
    assert!(stderr(&first).contains("slow_down"), "{}", stderr(&first));
    for _ in 0..2 {
        let out = d.tokenctl(&["refresh", "up"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("next attempt"), "{}", stderr(&out));
    }
    let current = token(&d, "up");
    let out = d.tokenctl_stdin(&["reject", "up", "--token-stdin"], &current);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("next attempt"), "{}", stderr(&out));
    assert_eq!(idp.stats()["token_posts_by_grant"]["refresh_token"], 1);
    assert_eq!(token(&d, "up"), current, "the held token is still served");
}

#[test]
fn cleartext_endpoints_off_the_machine_are_refused_naming_https() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let out = d.tokenctl_stdin(
        &[
            "add",
            "oauth2",
            "far",
            "--auth-url",
            "https://idp.example.invalid/auth",
            "--token-url",
            "http://example.invalid/token",
            "--client-id",
            "c",
        ],
        "secret",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
    assert_code(&d.tokenctl(&["show", "far"]), 5);
    // Loopback http is fine: the login works end to end.
    assert_ok(&d.add_oauth(&idp, "near", &[]));
    d.login(&idp, "near");
}
