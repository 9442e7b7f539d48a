//! The daemon's own command line. (Having an integration test here also makes
//! `cargo test --workspace` build the `tokend` binary the end-to-end tests run.)

use std::process::Command;

fn tokend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokend"))
}

#[test]
fn version_and_help() {
    let out = tokend().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tokend "));
    let out = tokend().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--system"));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = tokend().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn broken_config_stops_start_up_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[refresh]\nmargin_secs = 10\nbogus_key = 1\n").unwrap();
    let out = tokend()
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--db")
        .arg(dir.path().join("db/t.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("line 3") && err.contains("bogus_key"),
        "{err}"
    );
}
