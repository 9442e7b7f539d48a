//! `tokenctl add … --api-url/--retry-on` and `tokenctl edit` end to end
//! (issue 20, item 1): settings change in place, on one host and across a
//! fleet, while the secrets, the grant and the tokens stay; bad values are
//! refused with nothing changed; an edited row is still vouched for by the
//! key after a restart.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::path::PathBuf;
use std::time::Duration;
use tokend_tests::helpers::{fleet_logs, write_key};
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::postgres::PgCluster;
use tokend_tests::*;

const TOKEN: &str = "upp-edit-Zt8vQ2-bearer";

fn show(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.tokenctl(&["--json", "show", name]);
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).expect("show --json")
}

/// The upstream of a shown credential's spec, whatever its kind.
fn upstream(info: &serde_json::Value) -> serde_json::Value {
    let spec = info["spec"].as_object().expect("spec");
    let (_, inner) = spec.iter().next().expect("a kind");
    inner["upstream"].clone()
}

#[test]
fn a_bearer_tokens_settings_change_in_place_and_survive_a_restart() {
    let mut d = Daemon::start();
    assert_ok(&d.tokenctl_stdin(
        &[
            "add",
            "bearer",
            "up",
            "--preset",
            "uppromote",
            "--retry-on",
            "403",
        ],
        &format!("{TOKEN}\n"),
    ));
    let info = show(&d, "up");
    assert_eq!(
        upstream(&info)["api_url"],
        "https://aff-api.uppromote.com/api/v1/",
        "the preset gives UpPromote's API: {info}"
    );
    assert_eq!(upstream(&info)["retry_on"], serde_json::json!([403]));
    let text = stdout(&d.tokenctl(&["show", "up"]));
    assert!(
        text.contains("https://aff-api.uppromote.com/api/v1/"),
        "{text}"
    );

    let out = d.tokenctl(&[
        "edit",
        "up",
        "--api-url",
        "http://127.0.0.1:9/api/",
        "--retry-on",
        "default",
        "--description",
        "affiliate sync",
        "--no-check-url",
    ]);
    assert_ok(&out);
    let said = stderr(&out);
    for what in ["description", "check URL", "API URL", "retry statuses"] {
        assert!(said.contains(what), "edit says what changed: {said}");
    }
    let check = |d: &Daemon| {
        let info = show(d, "up");
        assert_eq!(info["description"], "affiliate sync", "{info}");
        assert_eq!(upstream(&info)["api_url"], "http://127.0.0.1:9/api/");
        assert!(
            upstream(&info)["retry_on"].is_null(),
            "back to the default: {info}"
        );
        assert!(info["spec"]["bearer"]["check_url"].is_null(), "{info}");
        assert_eq!(info["state"], "ready", "{info}");
        assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    };
    check(&d);
    // The edited row carries a tag over its new settings: after a restart
    // it is still trusted, and still says what the edit made it.
    d.restart();
    check(&d);
    assert!(!d.log_text().contains(TOKEN), "the token is never logged");
}

#[test]
fn bad_edits_are_refused_and_change_nothing() {
    let server = OidcServer::start(3600);
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    assert_ok(&d.tokenctl(&["edit", "up", "--api-url", "https://api.example.com/v1/"]));
    let before = show(&d, "up");
    for (args, says) in [
        (
            vec!["edit", "up", "--api-url", "http://api.example.com/"],
            "http://",
        ),
        (
            vec!["edit", "up", "--api-url", "https://api.example.com/?key=1"],
            "query",
        ),
        (vec!["edit", "up", "--retry-on", "302"], "400 to 599"),
        (vec!["edit", "up", "--scope", "read"], "--scope"),
        (
            vec!["edit", "up", "--description", "two\nlines"],
            "one line",
        ),
        (vec!["edit", "up"], "nothing to change"),
    ] {
        let out = d.tokenctl(&args);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(show(&d, "up"), before, "{args:?} changed something");
    }
    let out = d.tokenctl(&["edit", "up", "--retry-on", "401,abc"]);
    assert_code(&out, 2);
    let out = d.tokenctl(&["edit", "nope", "--description", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));

    assert_ok(&d.add_client_credentials(&server, "cc", "tokend-cc-secret"));
    let out = d.tokenctl(&["edit", "cc", "--check-url", "https://api.example.com/me"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bearer"), "{}", stderr(&out));
}

#[test]
fn an_oauth2_grant_keeps_its_tokens_through_an_edit() {
    let server = OidcServer::start(3600);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&server, "ut", &[]));
    d.login(&server, "ut");
    let token = stdout(&d.tokenctl(&["token", "ut"]));
    let refreshes = server.refreshes();
    assert_ok(&d.tokenctl(&[
        "edit",
        "ut",
        "--api-url",
        "http://127.0.0.1:9/",
        "--scope",
        "openid",
        "--scope",
        "email",
        "--git-host",
        "git.example.com",
    ]));
    let info = show(&d, "ut");
    assert_eq!(
        info["spec"]["oauth2"]["scopes"],
        serde_json::json!(["openid", "email"])
    );
    assert_eq!(
        info["spec"]["oauth2"]["git_hosts"],
        serde_json::json!(["git.example.com"])
    );
    assert_eq!(upstream(&info)["api_url"], "http://127.0.0.1:9/");
    assert_eq!(info["state"], "ready", "{info}");
    assert_eq!(
        stdout(&d.tokenctl(&["token", "ut"])),
        token,
        "the same token"
    );
    assert_eq!(server.refreshes(), refreshes, "an edit sends nothing");
    // The grant still refreshes after it.
    assert_ok(&d.tokenctl(&["refresh", "ut"]));
    assert_ne!(stdout(&d.tokenctl(&["token", "ut"])), token);
    assert_eq!(server.stats()["refresh_token_reuse"], 0);
}

#[test]
fn an_edit_on_one_member_of_a_fleet_reaches_the_others() {
    let pg = PgCluster::start();
    let keys = tempfile::tempdir().expect("key dir");
    let key: PathBuf = keys.path().join("fleet.key");
    write_key(&key);
    let members: Vec<Daemon> = (0..2)
        .map(|_| {
            Daemon::start_with(Options {
                store: Some(pg.url()),
                key_file: Some(key.clone()),
                ..Options::default()
            })
        })
        .collect();
    members[0].add_bearer("up", TOKEN);
    assert!(
        eventually(Duration::from_secs(5), || members[1]
            .tokenctl(&["token", "up"])
            .status
            .success()),
        "{}",
        fleet_logs(&members, Some(&pg), 30)
    );
    assert_ok(&members[0].tokenctl(&[
        "edit",
        "up",
        "--api-url",
        "https://api.example.com/v2/",
        "--description",
        "moved",
    ]));
    assert!(
        eventually(Duration::from_secs(5), || {
            let info = show(&members[1], "up");
            info["description"] == "moved"
                && upstream(&info)["api_url"] == "https://api.example.com/v2/"
        }),
        "member 2 never saw the edit: {}",
        fleet_logs(&members, Some(&pg), 30)
    );
    let info = show(&members[1], "up");
    assert_eq!(
        info["state"], "ready",
        "trusted on the other member: {info}"
    );
    assert_eq!(
        stdout(&members[1].tokenctl(&["token", "up"])),
        format!("{TOKEN}\n")
    );
}
