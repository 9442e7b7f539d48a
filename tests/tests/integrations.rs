//! tokend from other tools, end to end: real git calling
//! `tokenctl git-credential`, and kubectl's exec credential protocol
//! (`tokenctl exec-credential`), with tokens from the real OAuth2 server.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokend_tests::oidc::OidcServer;
use tokend_tests::*;

const REQUEST: &str = "protocol=https\nhost=git.example.test\n\n";

/// `git -c credential.helper= -c credential.helper=HELPER… ARGS` against
/// `d`, isolated from the user's and the system's git config, never prompting.
fn git(d: &Daemon, helpers: &[String], args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new("git");
    cmd.args(["-c", "credential.helper="]);
    for helper in helpers {
        cmd.arg("-c").arg(format!("credential.helper={helper}"));
    }
    cmd.args(args)
        .env("TOKEND_SOCKET", &d.socket)
        .env("HOME", d.dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS");
    run_with_timeout(cmd, Some(stdin), Duration::from_secs(60))
}

/// The helper as a git config value: `!/path/to/tokenctl git-credential NAME`.
fn helper(name: &str) -> String {
    format!("!{} git-credential {name}", bin("tokenctl").display())
}

/// The value of `key=` in git-credential output.
fn field(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn token(d: &Daemon, name: &str) -> String {
    let out = d.tokenctl(&["token", name]);
    assert_ok(&out);
    stdout(&out).trim().to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The bearer credential `forge` for the git host of [`REQUEST`].
fn add_forge(d: &Daemon, token: &str) {
    let args = ["add", "bearer", "forge", "--git-host", "git.example.test"];
    assert_ok(&d.tokenctl_stdin(&args, token));
}

/// `tokenctl git-credential forge OPERATION` with git's request on stdin.
fn helper_run(d: &Daemon, operation: &str, request: &str) -> Output {
    d.tokenctl_stdin(&["git-credential", "forge", operation], request)
}

/// `show forge --json`.
fn show(d: &Daemon) -> serde_json::Value {
    let out = d.tokenctl(&["show", "forge", "--json"]);
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).expect("show --json")
}

/// git ≥ 2.46 passes `capability[]=authtype` to helpers.
fn git_has_authtype() -> bool {
    let out = Command::new("git").arg("--version").output().expect("git");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    (major, minor) >= (2, 46)
}

#[test]
fn git_credential_fill_through_real_git_prints_the_token() {
    let d = Daemon::start();
    add_forge(&d, "forge-token-123");
    let out = git(&d, &[helper("forge")], &["credential", "fill"], REQUEST);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(
        field(&text, "password").as_deref(),
        Some("forge-token-123"),
        "{text}"
    );
    assert_eq!(field(&text, "username").as_deref(), Some("tokend"));
    assert_eq!(field(&text, "host").as_deref(), Some("git.example.test"));
    assert!(
        field(&text, "password_expiry_utc").is_none(),
        "a bearer token does not expire: {text}"
    );

    // --username, and a username in git's request, are answered as given.
    let named = format!("{} --username oauth2", helper("forge"));
    let text = stdout(&git(&d, &[named], &["credential", "fill"], REQUEST));
    assert_eq!(
        field(&text, "username").as_deref(),
        Some("oauth2"),
        "{text}"
    );
    let request = "protocol=https\nhost=git.example.test\nusername=alice\n\n";
    let text = stdout(&git(
        &d,
        &[helper("forge")],
        &["credential", "fill"],
        request,
    ));
    assert_eq!(field(&text, "username").as_deref(), Some("alice"), "{text}");
}

#[test]
fn git_credential_with_authtype_answers_a_bearer_credential() {
    let d = Daemon::start();
    add_forge(&d, "forge-token-123");
    let request = "capability[]=authtype\nprotocol=https\nhost=git.example.test\n\n";
    let out = d.tokenctl_stdin(&["git-credential", "forge", "get"], request);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "capability[]=authtype"), "{text}");
    assert_eq!(field(&text, "authtype").as_deref(), Some("Bearer"));
    assert_eq!(
        field(&text, "credential").as_deref(),
        Some("forge-token-123")
    );
    assert!(field(&text, "password").is_none(), "{text}");

    if !git_has_authtype() {
        println!("note: this git is older than 2.46 (no authtype): skipped the part through git");
        return;
    }
    let out = git(&d, &[helper("forge")], &["credential", "fill"], request);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(
        field(&text, "authtype").as_deref(),
        Some("Bearer"),
        "{text}"
    );
    assert_eq!(
        field(&text, "credential").as_deref(),
        Some("forge-token-123")
    );
}

#[test]
fn git_credential_erase_of_the_current_token_gets_a_fresh_one_the_server_accepts() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "forge", &["--git-host", "git.example.test"]));
    d.login(&idp, "forge");

    let out = git(&d, &[helper("forge")], &["credential", "fill"], REQUEST);
    assert_ok(&out);
    let filled = stdout(&out);
    let first = field(&filled, "password").expect("a password");
    assert_eq!(first, token(&d, "forge"));
    assert!(idp.introspect(&first));
    let expiry: i64 = field(&filled, "password_expiry_utc")
        .expect("an expiring token has password_expiry_utc")
        .parse()
        .unwrap();
    assert!(expiry > now() && expiry <= now() + 61, "{expiry}");

    // git sends `erase` to its helpers when the server refused what `fill`
    // gave it: `git credential reject` with that answer.
    let refused = git(&d, &[helper("forge")], &["credential", "reject"], &filled);
    assert_ok(&refused);
    let out = git(&d, &[helper("forge")], &["credential", "fill"], REQUEST);
    assert_ok(&out);
    let fresh = field(&stdout(&out), "password").unwrap();
    assert_ne!(fresh, first, "erase of the current token refreshes it");
    assert!(idp.introspect(&fresh), "the server accepts the fresh token");

    // The stale token again (helper called directly, with `credential=`): a no-op.
    let stale = format!("capability[]=authtype\nauthtype=Bearer\ncredential={first}\n\n");
    assert_ok(&d.tokenctl_stdin(&["git-credential", "forge", "erase"], &stale));
    assert_eq!(token(&d, "forge"), fresh);
    // And an erase without any token does nothing either.
    assert_ok(&d.tokenctl_stdin(&["git-credential", "forge", "erase"], REQUEST));
    assert_eq!(token(&d, "forge"), fresh);
}

#[test]
fn git_credential_for_an_unknown_credential_fails_so_git_asks_the_next_helper() {
    let d = Daemon::start();
    let out = d.tokenctl_stdin(&["git-credential", "nosuch", "get"], REQUEST);
    assert_code(&out, 5);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));

    let fallback =
        "!f() { echo username=next; echo password=from-the-next-helper; }; f".to_string();
    let out = git(
        &d,
        &[helper("nosuch"), fallback],
        &["credential", "fill"],
        REQUEST,
    );
    assert_ok(&out);
    assert_eq!(
        field(&stdout(&out), "password").as_deref(),
        Some("from-the-next-helper")
    );
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));

    // Alone, the unknown credential leaves git with nothing: it fails.
    let out = git(&d, &[helper("nosuch")], &["credential", "fill"], REQUEST);
    assert!(!out.status.success(), "{}", stdout(&out));
}

#[test]
fn git_credential_answers_nothing_for_another_host_or_for_plain_http_to_another_machine() {
    let d = Daemon::start();
    add_forge(&d, "forge-token-123");
    let quiet = |request: &str, note: &str| {
        let out = helper_run(&d, "get", request);
        assert_ok(&out);
        assert!(stdout(&out).is_empty(), "{request:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(note), "{request:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("forge-token-123"));
    };
    // Another host: nothing, exit 0, and a note saying why.
    quiet(
        "protocol=https\nhost=elsewhere.example\n\n",
        "is for git.example.test, not elsewhere.example",
    );
    quiet(
        "protocol=https\nhost=git.example.test:8443\n\n",
        "not git.example.test:8443",
    );
    // Its own host over plain http: the token would cross the network.
    quiet("protocol=http\nhost=git.example.test\n\n", "unencrypted");
    quiet("host=git.example.test\n\n", "names no protocol");
    // Real git moves on to its next helper.
    let fallback =
        "!f() { echo username=next; echo password=from-the-next-helper; }; f".to_string();
    let other = "protocol=https\nhost=elsewhere.example\n\n";
    let out = git(
        &d,
        &[helper("forge"), fallback],
        &["credential", "fill"],
        other,
    );
    assert_ok(&out);
    assert_eq!(
        field(&stdout(&out), "password").as_deref(),
        Some("from-the-next-helper")
    );

    // http to this machine is fine when the credential names that host.
    let args = ["add", "bearer", "local", "--git-host", "127.0.0.1:3000"];
    assert_ok(&d.tokenctl_stdin(&args, "local-token"));
    let request = "protocol=http\nhost=127.0.0.1:3000\n\n";
    let out = d.tokenctl_stdin(&["git-credential", "local", "get"], request);
    assert_ok(&out);
    assert_eq!(
        field(&stdout(&out), "password").as_deref(),
        Some("local-token")
    );

    // Without --git-host: the check URL's host, else no host at all.
    let args = [
        "add",
        "bearer",
        "api",
        "--check-url",
        "https://git.example.test/api/me",
    ];
    assert_ok(&d.tokenctl_stdin(&args, "api-token"));
    let out = d.tokenctl_stdin(&["git-credential", "api", "get"], REQUEST);
    assert_eq!(
        field(&stdout(&out), "password").as_deref(),
        Some("api-token")
    );
    d.add_bearer("plain", "plain-token");
    let out = d.tokenctl_stdin(&["git-credential", "plain", "get"], REQUEST);
    assert_ok(&out);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("names no git host"),
        "{}",
        stderr(&out)
    );
    let shown = stdout(&d.tokenctl(&["show", "plain"]));
    assert!(
        shown.contains("git hosts") && shown.contains("none"),
        "{shown}"
    );
    let shown = stdout(&d.tokenctl(&["show", "forge"]));
    assert!(shown.contains("git.example.test"), "{shown}");

    // A URL where a host belongs is refused, saying so.
    let args = [
        "add",
        "bearer",
        "bad",
        "--git-host",
        "https://git.example.test",
    ];
    let out = d.tokenctl_stdin(&args, "t");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a URL, not a host"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn git_credential_erase_of_a_bearer_token_marks_it_rejected_by_the_host() {
    let d = Daemon::start();
    add_forge(&d, "forge-token-123");
    // A token that is not the held one changes nothing, nor does another host.
    let stale = "protocol=https\nhost=git.example.test\npassword=old-token\n\n";
    assert_ok(&helper_run(&d, "erase", stale));
    let elsewhere = "protocol=https\nhost=elsewhere.example\npassword=forge-token-123\n\n";
    assert_ok(&helper_run(&d, "erase", elsewhere));
    assert_eq!(show(&d)["state"], "ready");

    // git sends `erase` after the server refused what `fill` gave it.
    let out = git(&d, &[helper("forge")], &["credential", "fill"], REQUEST);
    assert_ok(&out);
    let refused = git(
        &d,
        &[helper("forge")],
        &["credential", "reject"],
        &stdout(&out),
    );
    assert_ok(&refused);
    let info = show(&d);
    assert_eq!(info["state"], "failing", "{info}");
    let reason = info["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rejected by git.example.test"), "{info}");
    let text = stdout(&d.tokenctl(&["show", "forge"]));
    assert!(text.contains("rejected by git.example.test"), "{text}");
    // The refused token is no longer handed out, to git or anyone.
    assert_code(&d.tokenctl(&["token", "forge"]), 5);

    // The helper called directly (`credential=`, git ≥ 2.46): exit 0 as well.
    add_forge_again(&d);
    let request = "capability[]=authtype\nprotocol=https\nhost=git.example.test\nauthtype=Bearer\ncredential=forge-token-456\n\n";
    assert_ok(&helper_run(&d, "erase", request));
    assert_eq!(show(&d)["state"], "failing");
}

/// `forge` replaced with a new token, `forge-token-456`.
fn add_forge_again(d: &Daemon) {
    let args = [
        "add",
        "bearer",
        "forge",
        "--git-host",
        "git.example.test",
        "--replace",
    ];
    assert_ok(&d.tokenctl_stdin(&args, "forge-token-456"));
    assert_eq!(show(d)["state"], "ready");
}

#[test]
fn git_credential_store_and_unknown_operations_are_ignored_without_the_daemon() {
    let mut d = Daemon::start();
    d.stop();
    let input = "protocol=https\nhost=h\nusername=u\npassword=secret-from-git\n\n";
    for op in ["store", "some-future-operation"] {
        let out = d.tokenctl_stdin(&["git-credential", "forge", op], input);
        assert_ok(&out);
        assert!(stdout(&out).is_empty() && stderr(&out).is_empty(), "{op}");
    }
    // `get` needs the daemon: it fails (exit 3) and echoes nothing git sent.
    let out = d.tokenctl_stdin(&["git-credential", "forge", "get"], input);
    assert_code(&out, 3);
    assert!(!stderr(&out).contains("secret-from-git"));
    assert!(stdout(&out).is_empty());
}

#[test]
fn exec_credential_prints_a_v1_exec_credential_the_server_accepts() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "kube", &[]));
    d.login(&idp, "kube");
    let out = d.tokenctl(&["exec-credential", "kube"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(v["kind"], "ExecCredential");
    let token = v["status"]["token"].as_str().expect("status.token");
    assert!(idp.introspect(token), "the server accepts the token");
    let stamp = v["status"]["expirationTimestamp"]
        .as_str()
        .expect("status.expirationTimestamp");
    assert!(stamp.ends_with('Z'), "UTC: {stamp}");
    let at = humantime::parse_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("{stamp} is not RFC 3339: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(at > now() && at <= now() + 61, "{stamp}");
}

#[test]
fn exec_credential_answers_in_the_version_kubernetes_exec_info_asks_for() {
    let d = Daemon::start();
    d.add_bearer("kube", "kube-token");
    let run = |info: &str| {
        let mut cmd = Command::new(bin("tokenctl"));
        cmd.args(["exec-credential", "kube"])
            .env("TOKEND_SOCKET", &d.socket)
            .env("KUBERNETES_EXEC_INFO", info);
        run_with_timeout(cmd, None, Duration::from_secs(60))
    };
    let out = run(
        r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}"#,
    );
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1beta1");
    assert_eq!(v["status"]["token"], "kube-token");
    assert!(
        v["status"].get("expirationTimestamp").is_none(),
        "a bearer token does not expire: {v}"
    );

    let out = run(r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#);
    assert_code(&out, 1);
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("v1alpha1") && stderr(&out).contains("v1beta1"),
        "{}",
        stderr(&out)
    );

    let out = d.tokenctl(&["exec-credential", "nosuch"]);
    assert_code(&out, 5);
    assert!(stdout(&out).is_empty());
}

#[test]
fn help_lists_the_integrations() {
    let out = Command::new(bin("tokenctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    for command in ["git-credential", "exec-credential"] {
        assert!(help.contains(command), "{help}");
    }
}
