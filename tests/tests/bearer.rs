//! Bearer credentials end to end through the real binaries (the UpPromote case).

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use tokend_tests::*;

const TOKEN: &str = "upp-Zt8vQ2-secret-bearer";

#[test]
fn added_token_comes_back_through_token_header_and_exec() {
    let d = Daemon::start();
    let out = d.tokenctl_stdin(
        &[
            "add",
            "bearer",
            "uppromote",
            "--description",
            "affiliate sync",
        ],
        &format!("{TOKEN}\n"),
    );
    assert_ok(&out);
    let out = d.tokenctl(&["token", "uppromote"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    let out = d.tokenctl(&["header", "uppromote"]);
    assert_eq!(stdout(&out), format!("Authorization: Bearer {TOKEN}\n"));
    let out = d.tokenctl(&["exec", "uppromote", "--", "sh", "-c", "echo $TOKEND_TOKEN"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    let out = d.tokenctl(&[
        "exec",
        "uppromote",
        "--env",
        "API_TOKEN",
        "--",
        "sh",
        "-c",
        "echo $API_TOKEN",
    ]);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
}

#[test]
fn token_from_a_file_is_stored() {
    let d = Daemon::start();
    let file = d.dir.path().join("token.txt");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    assert_ok(&d.tokenctl(&[
        "add",
        "bearer",
        "up",
        "--token-file",
        file.to_str().unwrap(),
    ]));
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
}

#[test]
fn credentials_survive_sigterm_and_kill_9() {
    let mut d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let status = d.stop();
    assert!(status.success(), "clean stop: {status}");
    assert!(!d.socket.exists(), "socket file removed on stop");
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    d.kill9();
    assert!(
        d.socket.exists(),
        "a killed daemon leaves its socket behind"
    );
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
}

#[test]
fn unknown_credential_exits_5_naming_it() {
    let d = Daemon::start();
    let out = d.tokenctl(&["token", "missing"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("\"missing\""), "{}", stderr(&out));
}

#[test]
fn daemon_down_exits_3_with_advice() {
    let mut d = Daemon::start();
    d.stop();
    let out = d.tokenctl(&["token", "up"]);
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("tokend is not running at"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_adds_are_refused_and_change_nothing() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let bad_name = d.tokenctl_stdin(&["add", "bearer", "Bad Name"], "x");
    assert_code(&bad_name, 2);
    assert!(
        stderr(&bad_name).contains("not valid"),
        "{}",
        stderr(&bad_name)
    );
    let duplicate = d.tokenctl_stdin(&["add", "bearer", "up"], "other-token");
    assert_code(&duplicate, 1);
    assert!(
        stderr(&duplicate).contains("already exists"),
        "{}",
        stderr(&duplicate)
    );
    let empty = d.tokenctl_stdin(&["add", "bearer", "empty"], "");
    assert_code(&empty, 1);
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));
    let bad_url = d.tokenctl_stdin(&["add", "bearer", "x", "--check-url", "ftp://nope"], "t");
    assert_code(&bad_url, 1);
    // The store is unchanged: one credential, with the original token.
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&d.tokenctl(&["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
}

#[test]
fn replace_swaps_the_token_and_rm_removes_it() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    assert_ok(&d.tokenctl_stdin(&["add", "bearer", "up", "--replace"], "new-token"));
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), "new-token\n");
    assert_ok(&d.tokenctl(&["rm", "up"]));
    assert_code(&d.tokenctl(&["token", "up"]), 5);
}

#[test]
fn list_show_and_status_report_without_secrets() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["show", "up"],
        &["show", "up", "--json"],
        &["status"],
        &["status", "--json"],
    ] {
        let out = d.tokenctl(args);
        assert_ok(&out);
        assert!(!stdout(&out).contains(TOKEN), "{args:?} printed the secret");
        assert!(stdout(&out).contains("up"), "{args:?}: {}", stdout(&out));
    }
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&d.tokenctl(&["show", "up", "--json"]))).unwrap();
    assert_eq!(show["state"], "ready");
    assert_eq!(show["description"], "");
}

#[test]
fn secret_never_reaches_the_log_or_argv() {
    let d = Daemon::start_with(Options {
        log_level: Some("trace".into()),
        ..Options::default()
    });
    d.add_bearer("up", TOKEN);
    for _ in 0..3 {
        assert_ok(&d.tokenctl(&["token", "up"]));
    }
    assert!(
        !all_argv().contains(TOKEN),
        "a process argv holds the token"
    );
    let log = d.log_text();
    assert!(
        log.contains("credential added"),
        "trace log was written: {log}"
    );
    assert!(!log.contains(TOKEN), "the log holds the token:\n{log}");
}

#[test]
fn two_hundred_clients_get_their_tokens() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let socket = d.socket.clone();
    let workers: Vec<_> = (0..200)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = tokend_client::Client::connect(&socket).expect("connect");
                (0..100)
                    .filter(|_| {
                        client
                            .token("up")
                            .map(|t| t.expose() == TOKEN)
                            .unwrap_or(false)
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(ok, 200 * 100);
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start();
    let out = d.try_start_again(&[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_ok(&d.tokenctl(&["status"]));
}

#[test]
fn a_list_larger_than_a_request_frame_still_arrives() {
    let d = Daemon::start();
    let mut client = d.client();
    let description = "d".repeat(1000);
    for i in 0..120 {
        client
            .add(tokend_client::AddCredential {
                name: format!("cred-{i:03}"),
                description: description.clone(),
                kind: tokend_client::AddKind::Bearer {
                    check_url: None,
                    preset: None,
                },
                secret: tokend_client::Secret::new(format!("token-{i}")),
                replace: false,
                git_hosts: Vec::new(),
                upstream: Default::default(),
            })
            .unwrap();
    }
    let out = d.tokenctl(&["list", "--json"]);
    assert_ok(&out);
    assert!(out.stdout.len() > 120 * 1000, "the answer is over 64 KiB");
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 120);
    assert_ok(&d.tokenctl(&["status"]));
}

#[test]
fn last_use_time_survives_a_restart() {
    let mut d = Daemon::start();
    d.add_bearer("up", TOKEN);
    d.add_bearer("idle", TOKEN);
    let last_use = |d: &Daemon, name: &str| -> serde_json::Value {
        let out = d.tokenctl(&["show", name, "--json"]);
        assert_ok(&out);
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["last_use_at"].clone()
    };
    assert!(last_use(&d, "up").is_null(), "never used yet");
    assert_ok(&d.tokenctl(&["token", "up"]));
    let used = last_use(&d, "up");
    assert!(used.as_i64().is_some(), "{used}");
    d.stop();
    d.restart();
    assert_eq!(last_use(&d, "up"), used, "written at the graceful stop");
    assert!(
        last_use(&d, "idle").is_null(),
        "an unused credential stays unused"
    );
}

#[test]
fn without_ca_certificates_bearer_tokens_are_served_and_http_work_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let no_certs = [
        (
            "SSL_CERT_FILE".to_string(),
            dir.path().join("none.pem").display().to_string(),
        ),
        ("SSL_CERT_DIR".to_string(), dir.path().display().to_string()),
    ];
    let d = Daemon::start_with(Options {
        env: no_certs.to_vec(),
        ..Default::default()
    });
    let out = d.tokenctl_stdin(
        &[
            "add",
            "bearer",
            "up",
            "--check-url",
            "http://127.0.0.1:9/api/v1/affiliates",
        ],
        &format!("{TOKEN}\n"),
    );
    assert_ok(&out);
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    let out = d.tokenctl(&["check", "up"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("CA certificates"),
        "names the cause: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let mut child = std::process::Command::new(bin("tokenctl"))
        .args(["--socket", d.socket.to_str().unwrap(), "list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: the reader is gone before the answer
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn a_socket_directory_others_control_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Daemon::prepare(Options::default());
    // Like /tmp/tokend-UID made first by another user: anyone may write to
    // it, so anyone could swap the socket for their own.
    let shared = d.socket.parent().unwrap().parent().unwrap().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    d.socket = shared.join("tokend").join("tokend.sock");
    let out = run_with_timeout(d.command(), None, std::time::Duration::from_secs(20));
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("refusing") && stderr(&out).contains("anyone may write"),
        "{}",
        stderr(&out)
    );
    assert!(!shared.join("tokend").join("tokend.sock").exists());
}

#[test]
fn a_socket_directory_owned_by_another_user_is_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can give a directory to another user");
        return;
    }
    let mut d = Daemon::prepare(Options::default());
    let theirs = d.socket.parent().unwrap().parent().unwrap().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    d.socket = theirs.join("tokend.sock");
    let out = run_with_timeout(d.command(), None, std::time::Duration::from_secs(20));
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("belongs to uid 65534"),
        "{}",
        stderr(&out)
    );
}
