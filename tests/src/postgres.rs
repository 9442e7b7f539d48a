//! A private PostgreSQL cluster for the fleet tests: `initdb` into a short
//! temporary directory under `/tmp` (`/var/tmp` if `/tmp` is closed to the
//! server's user), a server listening on a Unix socket in
//! that directory only (`listen_addresses=''`, no TCP port), trust
//! authentication for the superuser `postgres`, and a database `tokend`.
//! Dropped: stopped at once (`-m immediate`) and removed.
//!
//! [`PgCluster::start_tcp`] also listens on 127.0.0.1 at a free port, with
//! TLS (`ssl = on`, the certificate and key the test made, `hostssl` in
//! `pg_hba.conf`) and/or cleartext (`hostnossl`), for the tests of TLS to
//! the database.
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
    /// The port: of the TCP listener if any, and in the socket's name.
    port: u16,
    /// Server options for TCP and TLS (`-c …`), empty for a socket only.
    tcp_options: String,
}

/// How a cluster listens on 127.0.0.1, beside its Unix socket.
pub struct Tcp {
    /// The server's certificate chain and private key, PEM: `ssl = on` and
    /// `hostssl` lines in `pg_hba.conf`. `None`: `ssl = off`.
    pub tls: Option<ServerTls>,
    /// Whether `pg_hba.conf` also admits TCP connections without TLS.
    pub cleartext: bool,
}

/// A server certificate and its key, as PEM text.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl PgCluster {
    /// Creates and starts a cluster with the database `tokend`; panics with
    /// the server's log (or advice, when PostgreSQL is not installed).
    pub fn start() -> PgCluster {
        PgCluster::start_with(None)
    }

    /// A cluster that also listens on 127.0.0.1 ([`PgCluster::tcp_url`]):
    /// with TLS, cleartext, or both, as `tcp` says.
    pub fn start_tcp(tcp: Tcp) -> PgCluster {
        PgCluster::start_with(Some(tcp))
    }

    fn start_with(tcp: Option<Tcp>) -> PgCluster {
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
            port: 5432,
            tcp_options: String::new(),
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
        if let Some(tcp) = tcp {
            cluster.listen_on_tcp(tcp);
        }
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
        let port = match self.port {
            5432 => String::new(),
            port => format!("&port={port}"),
        };
        format!(
            "postgresql://postgres@/{DATABASE}?host={}{port}",
            self.socket_dir().display()
        )
    }

    /// `postgresql://postgres@HOST:PORT/tokend`: the store URL over TCP, for
    /// a cluster started with [`PgCluster::start_tcp`]; `host` is the name
    /// the member dials (and checks the certificate for): `127.0.0.1` or
    /// `localhost`.
    pub fn tcp_url(&self, host: &str) -> String {
        assert!(
            !self.tcp_options.is_empty(),
            "the cluster listens on a Unix socket only: start it with PgCluster::start_tcp"
        );
        format!("postgresql://postgres@{host}:{}/{DATABASE}", self.port)
    }

    /// Sets the cluster up to listen on 127.0.0.1 at a free port: writes the
    /// certificate and key into its directory (mode 0600, the server's
    /// user's, as PostgreSQL demands of a key) and `pg_hba.conf`.
    fn listen_on_tcp(&mut self, tcp: Tcp) {
        self.port = free_port();
        let mut options = format!("-p {} -c listen_addresses=127.0.0.1", self.port);
        let mut hba = String::from("local all all trust\n");
        if let Some(tls) = &tcp.tls {
            let cert = self.server_file("server.crt", &tls.cert_pem);
            let key = self.server_file("server.key", &tls.key_pem);
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
            hba.push_str("hostssl all all 127.0.0.1/32 trust\n");
        }
        if tcp.cleartext {
            hba.push_str("hostnossl all all 127.0.0.1/32 trust\n");
        }
        self.server_file("data/pg_hba.conf", &hba);
        self.tcp_options = options;
    }

    /// Writes `text` to `name` in the cluster's directory, readable by the
    /// server's user only.
    fn server_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a file of the cluster");
        crate::set_mode(&path, 0o600);
        if let Some(user) = &self.run_as {
            let (uid, gid) = user_ids(user).expect("the server's user");
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .expect("chown to the server's user");
        }
        path
    }

    /// Whether every TCP connection to the server is encrypted, and how many
    /// there are: `pg_stat_ssl` of the sessions with a client address.
    pub fn tcp_sessions(&self) -> (u64, u64) {
        let counts = self.psql(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.client_addr IS NOT NULL",
        );
        let (tls, clear) = counts.split_once('|').expect("two counts");
        (
            tls.parse().expect("a count"),
            clear.parse().expect("a count"),
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
        let listen = match self.tcp_options.as_str() {
            "" => "-c listen_addresses=''",
            tcp => tcp,
        };
        let options = format!(
            "{listen} -k {} -c fsync=off -c shared_buffers=16MB",
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
            .args(["-p", &self.port.to_string()])
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

/// A TCP port on 127.0.0.1 that nobody listens on now (the kernel's pick).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

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
