//! A private PostgreSQL cluster for the fleet tests: `initdb` into a short
//! temporary directory under `/tmp` (`/var/tmp` if `/tmp` is closed to the
//! server's user), a server listening on a Unix socket in
//! that directory only (`listen_addresses=''`, no TCP port), trust
//! authentication for the superuser `postgres`, and a database `tokend`.
//! Dropped: stopped at once (`-m immediate`) and removed.
//!
//! The server binaries come from the highest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package; `.ci/run` installs it), else from `PATH`.
//! `initdb` and `pg_ctl` refuse to run as root: as root, they run as the
//! user `postgres` (created by the package) through `runuser`, and the
//! cluster's directory belongs to that user. The clients (`psql`,
//! `pg_dump`, `createdb`) run as the caller, connecting as `postgres`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The database every cluster creates, named in [`PgCluster::url`].
pub const DATABASE: &str = "tokend";

/// A running (or stopped) private PostgreSQL server.
pub struct PgCluster {
    /// `/tmp/pgXXXXXX`: holds `data/`, the socket and `server.log`.
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The unprivileged user the server runs as when the tests run as root.
    run_as: Option<String>,
    running: bool,
}

impl PgCluster {
    /// Creates and starts a cluster with the database `tokend`; panics with
    /// the server's log (or advice, when PostgreSQL is not installed).
    pub fn start() -> PgCluster {
        let bin = server_bin_dir();
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        // Short on purpose: a Unix socket path has room for ~107 bytes, and
        // the socket is `DIR/.s.PGSQL.5432`.
        let dir = tempfile::Builder::new()
            .prefix("pg")
            .tempdir_in(base_dir(as_root))
            .expect("temp dir for PostgreSQL");
        crate::set_mode(dir.path(), 0o755);
        let run_as = as_root.then(|| {
            let user = "postgres";
            let (uid, gid) = user_ids(user).unwrap_or_else(|| {
                panic!(
                    "running as root, the PostgreSQL server needs an unprivileged user {user:?}, \
                     which Debian's postgresql package creates: apt-get install postgresql"
                )
            });
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster directory to postgres");
            user.to_string()
        });
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            running: false,
        };
        let data = cluster.data_dir();
        let out = cluster.server_tool(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "--auth=trust",
                "-U",
                "postgres",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            crate::stdout(&out),
            crate::stderr(&out)
        );
        cluster.start_again();
        let out = cluster.client("createdb", &[DATABASE]);
        assert!(
            out.status.success(),
            "createdb {DATABASE} failed: {}\n{}",
            crate::stderr(&out),
            cluster.log_text()
        );
        cluster
    }

    /// `postgresql://postgres@/tokend?host=SOCKDIR`: the store URL of a fleet member.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@/{DATABASE}?host={}",
            self.socket_dir().display()
        )
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.5432`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (every start appends to it).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts the server again on the same data directory, after [`stop`](Self::stop);
    /// returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the cluster is already running");
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c shared_buffers=16MB",
            self.socket_dir().display()
        );
        let (data, log) = (self.data_dir(), self.log_path());
        let out = self.server_tool(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}): {}{}\nserver log:\n{}",
            out.status,
            crate::stdout(&out),
            crate::stderr(&out),
            self.log_text()
        );
        self.running = true;
    }

    /// Alias of [`start_again`](Self::start_again), for symmetry with [`stop`](Self::stop).
    pub fn restart(&mut self) {
        self.start_again();
    }

    /// Stops the server (`pg_ctl -m fast`: open sessions are ended, the
    /// server shuts down cleanly) and waits until it is gone.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        assert!(self.running, "the cluster is not running");
        let data = self.data_dir();
        let out = self.server_tool(
            "pg_ctl",
            &["-D", path_str(&data), "-m", mode, "-w", "-t", "60", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} failed ({}): {}{}\nserver log:\n{}",
            out.status,
            crate::stdout(&out),
            crate::stderr(&out),
            self.log_text()
        );
        self.running = false;
    }

    /// Runs `sql` with psql in the database `tokend` and returns its output
    /// unaligned, tuples only (`-A -t`), trimmed; panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.try_psql(sql);
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}\nserver log:\n{}",
            crate::stderr(&out),
            self.log_text()
        );
        crate::stdout(&out).trim().to_string()
    }

    /// Runs `sql` with psql and returns the whole output, for queries that may fail.
    pub fn try_psql(&self, sql: &str) -> Output {
        self.client(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                DATABASE,
                "-c",
                sql,
            ],
        )
    }

    /// `pg_dump` of the database `tokend`, as plain SQL text.
    pub fn dump(&self) -> String {
        let out = self.client("pg_dump", &["--no-owner", DATABASE]);
        assert!(
            out.status.success(),
            "pg_dump failed: {}\nserver log:\n{}",
            crate::stderr(&out),
            self.log_text()
        );
        String::from_utf8(out.stdout).expect("pg_dump prints UTF-8 (the database is UTF8)")
    }

    /// A client program (`psql`, `pg_dump`, `createdb`) as the caller,
    /// connecting through the socket as `postgres`.
    fn client(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-U", "postgres"])
            .args(args);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        crate::run_with_timeout(cmd, None, Duration::from_secs(60))
    }

    /// A server program (`initdb`, `pg_ctl`), as `postgres` when root.
    fn server_tool(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args)
            // The caller's directory may be closed to `postgres`.
            .current_dir(self.dir.path())
            .env("LC_ALL", "C");
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        // pg_ctl starts the server with its output appended to the log
        // (`-l`) and stdin from /dev/null: no pipe of ours stays open.
        crate::run_with_timeout(cmd, None, Duration::from_secs(120))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let postmaster = self.postmaster_pid();
            let out = self.server_tool(
                "pg_ctl",
                &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
            );
            // Never leave a server behind: if pg_ctl could not stop it,
            // its postmaster goes the hard way.
            if !out.status.success()
                && let Some(pid) = postmaster
            {
                crate::signal(pid, libc::SIGKILL);
            }
            self.running = false;
        }
        // The TempDir removes the directory (root may; otherwise it is ours).
    }
}

/// libpq's environment, which would otherwise steer the clients elsewhere.
const PG_ENV: [&str; 8] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGOPTIONS",
    "PGDATA",
];

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The directory of the PostgreSQL server binaries: the highest version
/// under `/usr/lib/postgresql/*/bin`, else wherever `initdb` is on `PATH`
/// (following a symlink to the real directory, which has `pg_ctl` and
/// `pg_dump` too). Panics with advice when there is none.
pub fn server_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.exists())
    });
    if let Some(initdb) = on_path {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().expect("initdb's directory").to_path_buf();
    }
    panic!(
        "the fleet tests need a PostgreSQL server (initdb, pg_ctl, psql, pg_dump), found neither in \
         /usr/lib/postgresql/*/bin nor on PATH: apt-get install postgresql (.ci/run does)"
    );
}

/// Where the cluster's directory goes: `/tmp`, unless the server runs as
/// `postgres` and `/tmp` is closed to other users (a root process with
/// `--key-file /tmp/KEY` once made it 0700), then `/var/tmp`.
fn base_dir(as_root: bool) -> &'static str {
    use std::os::unix::fs::PermissionsExt;
    let open_to_all = |dir: &str| {
        std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
    };
    if !as_root || open_to_all("/tmp") {
        return "/tmp";
    }
    assert!(
        open_to_all("/var/tmp"),
        "/tmp and /var/tmp are closed to other users: the user postgres cannot reach a \
         cluster in them (their usual mode is 1777: chmod 1777 /tmp)"
    );
    "/var/tmp"
}

/// The uid and gid of `user`, if it exists.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let name = CString::new(user).ok()?;
    // SAFETY: passwd is plain data (integers and pointers); all zeroes is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, which outlive the call,
    // and sets `found` to `&mut pw` or null.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}
