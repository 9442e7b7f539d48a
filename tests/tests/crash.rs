//! Crash safety of the rotation (docs/DESIGN.md §4.3): `kill -9` the daemon at many
//! random moments, many of them during a refresh, while it refreshes about
//! every second against a real server that revokes the grant on reuse.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::time::{Duration, Instant};
use tokend_tests::helpers::Rng;
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::*;

/// The credential's state and reason, from `show --json`.
fn state(d: &Daemon) -> (String, String) {
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&d.tokenctl(&["show", "up", "--json"]))).unwrap_or_default();
    let text = |k: &str| show[k].as_str().unwrap_or_default().to_string();
    (text("state"), text("reason"))
}

/// Ready again with a token, or (after introspection said the held refresh
/// token was rotated) asking for a login.
fn settled(d: &Daemon) -> Option<bool> {
    let mut outcome = None;
    eventually(Duration::from_secs(15), || {
        outcome = match state(d).0.as_str() {
            "ready" => d
                .tokenctl(&["token", "up"])
                .status
                .success()
                .then_some(true),
            "needs-login" => Some(false),
            _ => None,
        };
        outcome.is_some()
    });
    outcome
}

#[test]
fn kill_9_at_a_hundred_random_moments_never_sends_a_refresh_token_twice() {
    let kills: u32 = std::env::var("TOKEND_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed = seed_from_env("TOKEND_CRASH_SEED");
    let mut rng = Rng(seed);
    // Two-second tokens are refreshed about every second. Each refresh is
    // held 250 ms at the provider: for half of the kills *before* it is
    // processed ("delay": a request whose client is gone is never
    // processed), for the other half *after* ("hold": the provider rotated,
    // and the answer dies with the daemon).
    let idp = OidcServer::start(2);
    // A 2-second HTTP timeout: a journal mark's lease (1 s + 2 s + 3 s,
    // docs/RULES.md) keeps a restart from settling a doubt for up to 6 s.
    let config = "[refresh]\nstartup_spread_secs = 0\nwait_secs = 5\nhttp_timeout_secs = 2\n";
    let mut d = Daemon::start_with(Options {
        config: Some(config.into()),
        log_level: Some("info".into()),
        ..Options::default()
    });
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(&idp, "up", &["--introspection-url", &introspection]));
    d.login(&idp, "up");
    let (mut logins, mut rotated_kills) = (0u32, 0u32);
    let started = Instant::now();
    for kill in 0..kills {
        let rotate_first = rng.below(2) == 0;
        rotated_kills += u32::from(rotate_first);
        let mode = if rotate_first { "hold" } else { "delay" };
        idp.fault(&format!(
            r#"{{"mode":"{mode}","delay_ms":250,"grant_type":"refresh_token"}}"#
        ));
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        d.kill9();
        d.restart();
        match settled(&d) {
            Some(true) => {}
            Some(false) => {
                // Only a refresh token the provider really rotated is given up.
                let (_, reason) = state(&d);
                assert!(
                    reason.contains("introspection says"),
                    "kill {kill}: a login is asked for another reason: {reason}\n{}",
                    d.log_text()
                );
                logins += 1;
                d.login(&idp, "up");
            }
            None => panic!(
                "kill {kill}: neither ready nor asking for a login: {:?}\n{}",
                state(&d),
                d.log_text()
            ),
        }
    }
    // Each start after a kill that cut a refresh short says so once.
    let mid_refresh = d.log_text().matches("stopped during a refresh").count() as u32;
    let stats = idp.stats();
    let count = |k: &str| stats[k].as_u64().unwrap_or(0);
    eprintln!(
        "{kills} kills in {:?} ({rotated_kills} with the answer held after the rotation): {mid_refresh} during a refresh; introspection said {} still active (grant kept, no login), {} rotated (login asked: {logins}); provider saw {} refresh requests, {} reuses",
        started.elapsed(),
        count("introspected_active"),
        count("introspected_inactive_rotated"),
        stats["token_requests"]["refresh_token"],
        count("refresh_token_reuse"),
    );
    assert_eq!(
        count("refresh_token_reuse"),
        0,
        "a refresh token was sent twice: {stats}"
    );
    assert_eq!(
        count("introspected_inactive_other"),
        0,
        "a grant was given up whose refresh token had not rotated: {stats}"
    );
    assert_eq!(
        count("introspected_inactive_rotated"),
        u64::from(logins),
        "every login asked for follows a real rotation: {stats}"
    );
    assert!(
        mid_refresh >= kills / 20,
        "too few kills landed during a refresh ({mid_refresh}) to test anything"
    );
}
