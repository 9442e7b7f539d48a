//! tokenctl's command line without a daemon. (This integration test also
//! makes `cargo test --workspace` build the `tokenctl` binary.)

use std::process::Command;

fn tokenctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
    cmd.env("TOKEND_SOCKET", "/nonexistent/tokend.sock");
    cmd
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(tokenctl().output().unwrap().status.code(), Some(2));
    assert_eq!(
        tokenctl().args(["token"]).output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(
        tokenctl()
            .args(["frobnicate"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn no_daemon_exits_3_naming_the_socket() {
    let out = tokenctl().args(["token", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokend is not running at /nonexistent/tokend.sock"),
        "{err}"
    );
}
