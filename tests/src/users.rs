//! A second, unprivileged local user (`tokend-e2e`) for the tests that
//! check what the daemon does for someone other than its own user.
//!
//! Needs root (to run programs as another uid). CI creates the user with
//! `useradd --system --no-create-home --shell /usr/sbin/nologin tokend-e2e`;
//! [`other_user`] creates it the same way when it is missing.

use crate::{Daemon, bin, run_with_timeout, set_mode};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

pub const USER: &str = "tokend-e2e";

/// The second user's uid and primary gid.
#[derive(Clone, Copy, Debug)]
pub struct Other {
    pub uid: u32,
    pub gid: u32,
}

impl Other {
    /// Makes `cmd` run as this user (uid and primary gid, no home).
    pub fn run_as<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("HOME", "/nonexistent").uid(self.uid).gid(self.gid)
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn lookup() -> Option<Other> {
    let out = Command::new("getent")
        .args(["passwd", USER])
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = line.trim().split(':').collect();
    Some(Other {
        uid: fields.get(2)?.parse().ok()?,
        gid: fields.get(3)?.parse().ok()?,
    })
}

/// The second user, created the way CI creates it if missing. `None` when
/// not root: these tests cannot switch users then.
pub fn other_user() -> Option<Other> {
    if !is_root() {
        eprintln!("test skipped: it must run as root to act as a second user ({USER})");
        return None;
    }
    static CREATE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATE.lock().unwrap_or_else(|p| p.into_inner());
    if lookup().is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {USER} failed: {status}");
    }
    let other = lookup().expect("the second user exists");
    assert_ne!(other.uid, 0);
    Some(other)
}

impl Daemon {
    /// Opens the socket to every local user on purpose, so that only the
    /// daemon's own checks stand between them and it.
    pub fn open_to_everyone(&self) {
        set_mode(self.socket.parent().expect("socket directory"), 0o755);
        set_mode(&self.socket, 0o666);
    }

    /// `tokenctl ARGS` as the second user, with `stdin`.
    pub fn tokenctl_as(&self, who: Other, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(bin("tokenctl"));
        cmd.args(args).env("TOKEND_SOCKET", &self.socket);
        who.run_as(&mut cmd);
        run_with_timeout(cmd, Some(stdin), Duration::from_secs(60))
    }
}
