//! No secrets in core dumps: the daemon makes itself non-dumpable at start,
//! unless `TOKEND_ALLOW_CORE_DUMPS=1` says otherwise for debugging.
//!
//! The kernel's sign of a non-dumpable process is that its /proc files
//! belong to root, whoever runs it; so the daemon is run by the second,
//! unprivileged user (`tokend-e2e`, see tests/src/users.rs). Needs root.

#![cfg(target_os = "linux")] // PR_SET_DUMPABLE and /proc are Linux's

use std::os::unix::fs::MetadataExt;
use tokend_tests::users::{Other, other_user};
use tokend_tests::*;

/// A daemon started by `who` (its directory is theirs), with `env`.
fn daemon_run_by(who: Other, env: &[(&str, &str)]) -> Daemon {
    let mut d = Daemon::prepare(Options {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    });
    let dir = std::ffi::CString::new(d.dir.path().to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; chown of a directory this test created.
    assert_eq!(unsafe { libc::chown(dir.as_ptr(), who.uid, who.gid) }, 0);
    d.launch_with(|mut cmd| {
        who.run_as(&mut cmd);
        cmd
    });
    d.wait_ready();
    d
}

fn environ_owner(d: &Daemon) -> u32 {
    std::fs::metadata(format!("/proc/{}/environ", d.pid()))
        .expect("the daemon's /proc entry")
        .uid()
}

#[test]
fn the_daemon_is_not_dumpable() {
    let Some(who) = other_user() else { return };
    let d = daemon_run_by(who, &[]);
    assert_eq!(
        environ_owner(&d),
        0,
        "the /proc files of a non-dumpable process belong to root, not to the user running it"
    );
    d.add_bearer("up", "dump-test-secret");
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), "dump-test-secret\n");
}

#[test]
fn core_dumps_can_be_allowed_for_debugging_and_that_is_logged() {
    let Some(who) = other_user() else { return };
    let d = daemon_run_by(who, &[("TOKEND_ALLOW_CORE_DUMPS", "1")]);
    assert_eq!(
        environ_owner(&d),
        who.uid,
        "dumpable: its /proc files are the user's"
    );
    let line = d.wait_for_log("core dumps are allowed");
    assert!(line.contains("WARN"), "{line}");
}

#[test]
fn a_bad_value_of_the_debug_variable_is_refused_with_the_reason() {
    let d = Daemon::prepare(Options::default());
    let out = d.try_start_again(&[("TOKEND_ALLOW_CORE_DUMPS", "yes")]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("TOKEND_ALLOW_CORE_DUMPS must be 1") && said.contains("\"yes\""),
        "{said}"
    );
}
