//! A real `tokend` process for the benchmark: its own temporary directory,
//! socket, store, key and config; the store filled directly through the
//! daemon library before start (adding thousands of credentials through
//! `tokenctl add` would spend minutes in fsyncs); stopped with SIGTERM.
//! A fleet member ([`Setup::member`]) has a PostgreSQL store and a key
//! file shared with the other members instead of its own SQLite file.

use crate::binaries::sibling_binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokend::store::StoredCredential;
use tokend::store::seal::Sealer;

/// The files of one daemon instance, before it runs.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// A fleet member's `--store URL` (instead of `--db`).
    pub store: Option<String>,
    /// A fleet member's `--key-file` (the fleet's shared key).
    pub key_file: Option<PathBuf>,
}

impl Setup {
    /// A fresh temporary directory with `config_text` as the config file.
    pub fn new(config_text: &str) -> Result<Setup, String> {
        let dir = tempfile::Builder::new()
            .prefix("tokend-bench")
            .disable_cleanup(std::env::var_os("TOKEND_BENCH_KEEP").is_some())
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text)
            .map_err(|e| format!("cannot write the config: {e}"))?;
        Ok(Setup {
            socket: dir.path().join("run").join("tokend.sock"),
            db: dir.path().join("state").join("tokend.db"),
            log: dir.path().join("tokend.log"),
            config,
            dir,
            store: None,
            key_file: None,
        })
    }

    /// A fleet member: the PostgreSQL store at `url`, sealed with the
    /// shared `key_file` (see [`crate::fleet::populate`] for filling it).
    pub fn member(config_text: &str, url: &str, key_file: &Path) -> Result<Setup, String> {
        let mut setup = Setup::new(config_text)?;
        setup.store = Some(url.to_string());
        setup.key_file = Some(key_file.to_path_buf());
        Ok(setup)
    }

    /// Writes `creds` into the store, sealed with the key file the daemon
    /// will use by default (`tokend.key` beside the database).
    pub fn populate(&self, creds: &[StoredCredential]) -> Result<(), String> {
        let state = self.db.parent().expect("the db has a directory");
        tokend::config::paths::ensure_private_dir(state, 0o700)
            .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
        let (sealer, _) =
            Sealer::load(None, &state.join("tokend.key"), true).map_err(|e| e.to_string())?;
        let store = tokend::store::open_sqlite(&self.db, sealer).map_err(|e| e.to_string())?;
        store.verify_key().map_err(|e| e.to_string())?;
        store.insert_many(creds).map_err(|e| e.to_string())?;
        store.checkpoint().map_err(|e| e.to_string())
    }

    /// Starts `tokend` on these files; waits for nothing (see [`Daemon::wait_ready`]).
    pub fn start(self) -> Result<Daemon, String> {
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("cannot create the daemon log: {e}"))?;
        let started = Instant::now();
        let child = self
            .command()?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tokend: {e}"))?;
        Ok(Daemon {
            setup: self,
            child: Some(child),
            started,
        })
    }

    fn command(&self) -> Result<Command, String> {
        let mut cmd = Command::new(sibling_binary("tokend")?);
        cmd.arg("--socket").arg(&self.socket);
        match (&self.store, &self.key_file) {
            (Some(url), Some(key)) => cmd.arg("--store").arg(url).arg("--key-file").arg(key),
            _ => cmd.arg("--db").arg(&self.db),
        };
        cmd.arg("--config").arg(&self.config);
        for var in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "CREDENTIALS_DIRECTORY",
            "WATCHDOG_USEC",
            "TOKEND_LOG",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        // TOKEND_BENCH_LOG sets the daemons' TOKEND_LOG (e.g. `debug`).
        if let Some(level) = std::env::var_os("TOKEND_BENCH_LOG") {
            cmd.env("TOKEND_LOG", level);
        }
        cmd.env("XDG_RUNTIME_DIR", self.dir.path().join("xdg-run"));
        Ok(cmd)
    }
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub setup: Setup,
    child: Option<Child>,
    /// When the process was spawned: start-up time counts from here.
    pub started: Instant,
}

impl Daemon {
    pub fn socket(&self) -> &Path {
        &self.setup.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until the socket answers a hello; returns the time since spawn.
    /// Polls every millisecond, so the figure is at most ~1 ms late.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration, String> {
        let deadline = self.started + limit;
        while Instant::now() < deadline {
            if tokend_client::Client::connect(&self.setup.socket).is_ok() {
                return Ok(self.started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "tokend exited at start ({status}):\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(format!(
            "tokend did not answer within {} s:\n{}",
            limit.as_secs(),
            self.log_text()
        ))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.setup.log).unwrap_or_default()
    }

    /// Log lines at WARN or ERROR level: each is a problem worth reporting.
    pub fn problems(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM and wait (up to 10 s), then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
