//! Shared harness for the end-to-end tests: start the real `tokend` in a
//! temporary directory with its own socket, store and key, drive it with the
//! real `tokenctl`, and clean up even when a test fails.
//!
//! Unix only (signals, file modes, Unix users): on other systems the crate
//! is empty, so that the workspace still builds for Windows.

#![cfg(unix)]

pub mod browser;
pub mod helpers;
pub mod http;
pub mod oidc;
pub mod postgres;
pub mod relay;
pub mod users;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (next to `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .expect("deps dir")
        .parent()
        .expect("profile dir")
        .to_path_buf()
}

/// The path of a workspace binary; panics with advice if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (which builds it) or `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A running daemon in its own temporary directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The SQLite store (`--db`); unused when `Options::store` names another.
    pub db: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    /// `--db PATH`, or `--store URL` when the options name a store.
    store_args: [String; 2],
    /// Arguments after the config: `--key-file`, then `Options::args`.
    args: Vec<String>,
    child: Option<Child>,
}

/// How to start a daemon.
#[derive(Default, Clone)]
pub struct Options {
    /// Config file text (written to `config.toml`).
    pub config: Option<String>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// `TOKEND_LOG` (default `debug`).
    pub log_level: Option<String>,
    /// `--store URL` instead of `--db PATH` (the daemon refuses both).
    pub store: Option<String>,
    /// `--key-file PATH`: the sealing key, e.g. one shared by a fleet.
    pub key_file: Option<PathBuf>,
    /// More arguments for `tokend`, after all the others.
    pub args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon with the embedded defaults.
    pub fn start() -> Daemon {
        Daemon::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Daemon {
        let mut daemon = Daemon::prepare(options);
        daemon.spawn();
        daemon
    }

    /// Sets up the directory, config and environment without starting the
    /// process, for tests that start it themselves (`launch_with`).
    pub fn prepare(options: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tokend-e2e")
            .tempdir()
            .expect("temp dir");
        // World-traversable, so a second (unprivileged) user can reach the socket
        // when a test opens it up on purpose.
        set_mode(dir.path(), 0o755);
        let socket = dir.path().join("run").join("tokend.sock");
        let db = dir.path().join("state").join("tokend.db");
        let config = dir.path().join("config.toml");
        if let Some(text) = &options.config {
            std::fs::write(&config, text).expect("write config");
        }
        let mut env = options.env.clone();
        env.push((
            "TOKEND_LOG".into(),
            options.log_level.clone().unwrap_or_else(|| "debug".into()),
        ));
        let store_args = match &options.store {
            Some(url) => ["--store".to_string(), url.clone()],
            None => ["--db".to_string(), path_string(&db)],
        };
        let mut args = Vec::new();
        if let Some(key) = &options.key_file {
            args.extend(["--key-file".to_string(), path_string(key)]);
        }
        args.extend(options.args.iter().cloned());
        Daemon {
            log: dir.path().join("tokend.log"),
            dir,
            socket,
            db,
            config,
            env,
            store_args,
            args,
            child: None,
        }
    }

    /// Adds (or replaces) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// The `tokend` command line and environment this daemon starts with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("tokend"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(&self.store_args)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args);
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("CREDENTIALS_DIRECTORY");
        cmd.env("XDG_RUNTIME_DIR", self.dir.path().join("xdg-run"));
        cmd.env("XDG_STATE_HOME", self.dir.path().join("xdg-state"));
        cmd.env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts (or restarts) the process and waits until it answers.
    pub fn spawn(&mut self) {
        self.launch_with(|cmd| cmd);
        self.wait_ready();
    }

    /// Starts the process without waiting for it to answer, for tests that
    /// watch readiness themselves. `wrap` gets the `tokend` command and
    /// returns the one to run (e.g. under `systemd-socket-activate`); stderr
    /// goes to the log either way.
    pub fn launch_with(&mut self, wrap: impl FnOnce(Command) -> Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = wrap(self.command())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tokend");
        self.child = Some(child);
    }

    /// Whether the process is still alive (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until `tokenctl status` succeeds; panics with the log on failure.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("tokend exited early ({status}):\n{}", self.log_text());
            }
            if tokend_client::Client::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tokend did not become ready:\n{}", self.log_text());
    }

    /// A second start attempt (e.g. with another key); returns its output.
    pub fn try_start_again(&self, extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command();
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, None, Duration::from_secs(20))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(20))
            .expect("tokend did not stop after SIGTERM")
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 20 s) until the log has a line containing `needle` and
    /// returns that line; panics with the whole log otherwise. For effects
    /// the daemon only reports in its log, such as a reload.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} after 20 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> tokend_client::Client {
        tokend_client::Client::connect(&self.socket).expect("connect to tokend")
    }

    /// Runs `tokenctl ARGS` against this daemon.
    pub fn tokenctl(&self, args: &[&str]) -> Output {
        self.tokenctl_stdin(args, "")
    }

    /// Runs `tokenctl ARGS` with `stdin` piped in.
    pub fn tokenctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(bin("tokenctl"));
        cmd.args(args).env("TOKEND_SOCKET", &self.socket);
        run_with_timeout(cmd, Some(stdin), Duration::from_secs(60))
    }

    /// Adds a bearer credential (token on stdin); panics if refused.
    pub fn add_bearer(&self, name: &str, token: &str) {
        let out = self.tokenctl_stdin(&["add", "bearer", name], token);
        assert_ok(&out);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command with optional stdin, killing it after `limit`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let _ = pipe.write_all(text.as_bytes());
    }
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: signal 0 only checks whether the process exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        signal(pid, libc::SIGKILL);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = watchdog.join();
    out
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn path_string(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_string()
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// Asserts the exit code, showing the output otherwise.
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// Every process's argv, for "no secret in argv" checks.
pub fn all_argv() -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            all.push_str(&String::from_utf8_lossy(&cmdline).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

impl Daemon {
    /// `tokenctl add oauth2 NAME` against `server`'s auth-code client
    /// (client secret from a file), plus `extra` arguments.
    pub fn add_oauth(&self, server: &oidc::OidcServer, name: &str, extra: &[&str]) -> Output {
        let secret = self.dir.path().join(format!("{name}.secret"));
        let (client, secret_text) = if extra.contains(&"basic") {
            ("tokend-basic", "tokend-basic-secret")
        } else {
            ("tokend-test", "tokend-test-secret")
        };
        std::fs::write(&secret, secret_text).expect("secret file");
        let (auth, token) = (server.auth_url(), server.token_url());
        let mut args = vec![
            "add",
            "oauth2",
            name,
            "--auth-url",
            &auth,
            "--token-url",
            &token,
            "--client-id",
            client,
        ];
        let secret = secret.to_str().expect("utf-8").to_string();
        args.extend(["--client-secret-file", &secret, "--scope", "openid"]);
        args.extend(extra);
        self.tokenctl(&args)
    }

    /// `tokenctl add client-credentials NAME` against `server`'s
    /// client-credentials client, its secret (`secret`) from a file.
    pub fn add_client_credentials(
        &self,
        server: &oidc::OidcServer,
        name: &str,
        secret: &str,
    ) -> Output {
        let file = self.dir.path().join(format!("{name}.secret"));
        std::fs::write(&file, secret).expect("secret file");
        let token = server.token_url();
        let file = file.to_str().expect("utf-8").to_string();
        self.tokenctl(&[
            "add",
            "client-credentials",
            name,
            "--token-url",
            &token,
            "--client-id",
            "tokend-cc",
            "--client-secret-file",
            &file,
        ])
    }

    /// Starts `tokenctl login NAME ARGS` and returns it with the authorize URL
    /// it printed on its first line.
    pub fn start_login(&self, name: &str, args: &[&str]) -> (Child, String) {
        self.spawn_login(name, &["--no-browser"], args, None)
    }

    /// Like [`Daemon::start_login`], but tokenctl opens a browser: `browser`'s
    /// stand-in for `xdg-open`.
    pub fn start_login_in(
        &self,
        browser: &browser::FakeBrowser,
        name: &str,
        args: &[&str],
    ) -> (Child, String) {
        self.spawn_login(name, &[], args, Some(browser))
    }

    fn spawn_login(
        &self,
        name: &str,
        flags: &[&str],
        args: &[&str],
        browser: Option<&browser::FakeBrowser>,
    ) -> (Child, String) {
        let mut cmd = Command::new(bin("tokenctl"));
        cmd.args(["login", name, "--timeout", "60"])
            .args(flags)
            .args(args)
            .env("TOKEND_SOCKET", &self.socket);
        if let Some(browser) = browser {
            browser.apply(&mut cmd);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokenctl login");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("first line");
        (child, line.trim().to_string())
    }

    /// A complete login through the loopback listener; panics on failure.
    pub fn login(&self, server: &oidc::OidcServer, name: &str) {
        let (child, url) = self.start_login(name, &[]);
        let redirect = server.browse(&url);
        let page = oidc::curl(&["-s", &redirect]);
        let out = child.wait_with_output().expect("tokenctl login");
        assert_ok(&out);
        assert!(page.contains("Logged in"), "the browser was told: {page}");
    }
}

/// Standard base64, no line breaks: how a secret would look in a dump or
/// a file if something stored it encoded instead of sealed.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The seed of a randomised test: `$var` when set (to replay a failure),
/// else the clock. Printed either way, so a failing run can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("{var}={seed}");
    seed
}
