//! A private PostgreSQL cluster for the fleet benchmark: `initdb` in a
//! temporary directory, a server listening on a Unix socket only
//! (`listen_addresses=''`, the socket in that directory), trust
//! authentication for the superuser `postgres`, `fsync=off` (the figures
//! are about tokend, not the disk). Stopped with `pg_ctl -m immediate`
//! when dropped.
//!
//! The binaries are the highest version in `/usr/lib/postgresql/*/bin`
//! (Debian's layout), else `initdb` and `pg_ctl` on `PATH`. `initdb`
//! refuses to run as root, so as root the server runs as the `postgres`
//! user (`runuser -u postgres --`), which then owns the directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running cluster; stopped (and its directory removed) when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl` and `createdb` are ("" for `PATH`).
    bin: PathBuf,
    /// Run the server's commands through `runuser -u postgres` (as root).
    as_postgres: bool,
    running: bool,
}

impl Cluster {
    /// The directory of the PostgreSQL binaries, or why there is none.
    pub fn binaries() -> Result<PathBuf, String> {
        let mut best: Option<(u32, PathBuf)> = None;
        if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
            for v in versions.flatten() {
                let bin = v.path().join("bin");
                let number = v.file_name().to_string_lossy().parse::<u32>().ok();
                if let Some(n) = number
                    && bin.join("initdb").exists()
                    && best.as_ref().is_none_or(|(b, _)| n > *b)
                {
                    best = Some((n, bin));
                }
            }
        }
        if let Some((_, bin)) = best {
            return Ok(bin);
        }
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("initdb").exists()));
        if on_path {
            return Ok(PathBuf::new());
        }
        Err("no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH; install them (Debian: apt-get install postgresql)".into())
    }

    /// Creates and starts a cluster. The temporary directory is short
    /// (`/tmp/tbpgXXXXXX`): a Unix socket's path must fit in 108 bytes.
    pub fn start() -> Result<Cluster, String> {
        let bin = Cluster::binaries()?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("tbpg")
            .disable_cleanup(std::env::var_os("TOKEND_BENCH_KEEP").is_some())
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a directory for PostgreSQL: {e}"))?;
        let mut cluster = Cluster {
            dir,
            bin,
            as_postgres,
            running: false,
        };
        if as_postgres {
            let owner = Command::new("chown")
                .arg("postgres:")
                .arg(cluster.dir.path())
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !owner.success() {
                return Err(format!(
                    "cannot give {} to the postgres user (is there one?)",
                    cluster.dir.path().display()
                ));
            }
        }
        let data = cluster.data();
        cluster.server("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .arg("--no-instructions");
        })?;
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c max_connections=200",
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster
            .server("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .arg("-o")
                    .arg(&options)
                    .args(["-w", "-t", "60", "start"]);
            })
            .map_err(|e| format!("{e}\n{}", cluster.log_tail()))?;
        cluster.running = true;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The socket directory (the cluster's own directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates database `name`; returns the store URL tokend takes for it.
    pub fn create_db(&self, name: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.tool("createdb"));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-U", "postgres", name]);
        run(&mut cmd)?;
        Ok(self.url(name))
    }

    /// `postgresql://postgres@/NAME?host=DIR`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql://postgres@/{name}?host={}",
            self.socket_dir().display()
        )
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a server-side command (as the `postgres` user when root).
    fn server(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Result<(), String> {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.tool(tool))
                .current_dir("/");
            c
        } else {
            Command::new(self.tool(tool))
        };
        args(&mut cmd);
        run(&mut cmd)
    }

    /// CPU time used by the server so far (postmaster and its processes,
    /// live or exited), in seconds.
    pub fn cpu_secs(&self) -> Result<f64, String> {
        let pid_file = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("{} holds no pid", pid_file.display()))?;
        crate::procfs::tree_cpu_secs(pid)
    }

    /// The end of the server's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self.server("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "stop"]);
            });
        }
    }
}

/// Runs `cmd` with its output captured; its stderr in the error.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .env_remove("PGHOST")
        .env_remove("PGDATABASE")
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<&OsStr> = cmd.get_args().collect();
    Err(format!(
        "{} {:?} failed ({}): {}",
        cmd.get_program().to_string_lossy(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}
