//! Arbitrary requests through the daemon's real dispatch
//! (`tokend::handler::handle`) against a real store, as an admin peer and as
//! an unprivileged one. No input may panic the handler, and two access rules
//! are checked on every answer: an unprivileged peer never gets an admin
//! request through, and never gets a token (or a list entry) of a credential
//! it is not allowed to use.
//!
//! Input: repeated `[peer selector][frame]` steps (see `tokend_fuzz::step`).
//! The daemon state persists across inputs, like a long-running daemon's.
//! URLs are pinned to 127.0.0.1:9 first (`tokend_fuzz::keep_local`).

#![no_main]

use interprocess::local_socket::tokio::prelude::*;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use tokend::config::Config;
use tokend::config::access::{Peer, Policy};
use tokend::config::paths::{Overrides, Paths};
use tokend::state::Shared;
use tokend::store::seal::Sealer;
use tokend_proto::{ErrorCode, FrameError, Principal, Request, Response, read_frame};

/// The uid/gid the unprivileged peer runs as (nobody/nogroup).
const NOBODY: u32 = 65534;

/// More credentials than this and the extras are removed after an input, so
/// that `list` and `status` stay fast over millions of inputs.
const MAX_CREDENTIALS: usize = 32;

struct Harness {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    config: Config,
    admin: Peer,
    user: Peer,
    /// Not running as root: both peers are this process, and "unprivileged"
    /// is made by switching the policy to another daemon uid for that step.
    by_policy: bool,
    _dir: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

impl Harness {
    fn new() -> Harness {
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            // SAFETY: runs once, before this process starts any thread that
            // reads the environment (the HTTP client reads proxies when built).
            unsafe { std::env::remove_var(var) };
        }
        // tmpfs if there is one: every add is an fsync'd SQLite commit.
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm").to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("tokend-fuzz")
            .tempdir_in(base)
            .expect("temp dir");
        // Traversable, so the unprivileged peer can reach the peer socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let paths = Paths::resolve(
            false,
            &Overrides {
                socket: Some(dir.path().join("tokend.sock")),
                db: Some(dir.path().join("state").join("tokend.db")),
                config: Some(dir.path().join("config.toml")),
                key_file: Some(dir.path().join("state").join("tokend.key")),
                http_socket: None,
                store: None,
            },
        );
        let store =
            tokend::store::open_sqlite(&paths.db, Sealer::from_key(&[7u8; 32])).expect("store");
        store.verify_key().expect("key check");
        let mut config = Config::default();
        // Bounded waits: nothing listens on 127.0.0.1:9, but be sure.
        config.refresh.http_timeout_secs = 2;
        config.refresh.wait_secs = 2;
        let uid = unsafe { libc::geteuid() };
        let shared = Shared::new(
            store,
            paths,
            config.clone(),
            Policy {
                daemon_uid: uid,
                admin_gid: None,
            },
        );
        let (admin, user) = rt.block_on(peers(&dir.path().join("peers.sock")));
        let harness = Harness {
            by_policy: admin.uid == user.uid,
            rt,
            shared,
            config,
            admin,
            user,
            _dir: dir,
        };
        for seed in tokend_fuzz::seeds() {
            harness.run(&seed);
        }
        harness
    }

    /// Runs every step of one input.
    fn run(&self, data: &[u8]) {
        let mut rest = data;
        while let Some((&selector, tail)) = rest.split_first() {
            rest = tail;
            let mut request = match read_frame::<Request>(&mut rest) {
                Ok(request) => request,
                // The frame was consumed whole; go on with the next step.
                Err(FrameError::Decode(_)) => continue,
                Err(_) => break,
            };
            tokend_fuzz::keep_local(&mut request, &self.config);
            self.step(selector & 1 == 1, request);
        }
        self.trim();
    }

    fn step(&self, as_user: bool, request: Request) {
        let peer = if as_user { &self.user } else { &self.admin };
        let policy_uid = if as_user && self.by_policy {
            peer.uid.wrapping_add(1)
        } else {
            self.admin.uid
        };
        self.shared.replace_config(
            self.config.clone(),
            Policy {
                daemon_uid: policy_uid,
                admin_gid: None,
            },
        );
        let admin_request = matches!(
            request,
            Request::Add(_)
                | Request::Remove { .. }
                | Request::Allow { .. }
                | Request::Deny { .. }
                | Request::AllowNamed { .. }
                | Request::DenyNamed { .. }
                | Request::Edit(_)
                | Request::LoginStart { .. }
                | Request::LoginFinish { .. }
                | Request::DeviceLoginStart { .. }
                | Request::DeviceLoginFinish { .. }
        );
        let token_of = match &request {
            Request::Token { name, .. } | Request::TokenFor { name, .. } => Some(name.clone()),
            _ => None,
        };
        let listing = matches!(request, Request::List);
        let response = self
            .rt
            .block_on(tokend::handler::handle(&self.shared, peer, request));
        if !as_user {
            return;
        }
        if admin_request {
            assert!(
                matches!(&response, Response::Error(e) if e.code == ErrorCode::PermissionDenied),
                "an unprivileged peer got an admin request through: {response:?}"
            );
        }
        if let (Some(name), Response::Token(_)) = (&token_of, &response) {
            assert!(
                self.may_use(name),
                "uid {} got the token of {name:?}",
                peer.uid
            );
        }
        if let Response::Audit(entries) = &response {
            for e in entries {
                let owned = e
                    .credential
                    .as_deref()
                    .and_then(|n| self.shared.registry.get(n));
                // The credential it owns now, as it is now: not an earlier
                // credential of the same name.
                assert!(
                    owned.is_some_and(
                        |c| c.owner_uid == peer.uid && e.incarnation == Some(c.incarnation)
                    ),
                    "uid {} read the audit entry {e:?} of a credential it does not own",
                    peer.uid
                );
            }
        }
        if let (true, Response::List(list)) = (listing, &response) {
            for info in list {
                assert!(
                    self.may_use(&info.name),
                    "uid {} sees {:?}",
                    peer.uid,
                    info.name
                );
            }
        }
    }

    /// Whether the unprivileged peer may use `name`, by the rules of DESIGN
    /// §5 restated here (owner or allow list; a group entry is accepted
    /// without resolving the peer's supplementary groups).
    fn may_use(&self, name: &str) -> bool {
        let Some(cred) = self.shared.registry.get(name) else {
            return false;
        };
        let uid = self.user.uid;
        cred.owner_uid == uid
            || cred.with_live(|l| {
                l.allowed
                    .iter()
                    .any(|p| *p == Principal::User(uid) || matches!(p, Principal::Group(_)))
            })
    }

    /// Keeps the store small: removes credentials beyond the limit.
    fn trim(&self) {
        let all = self.shared.registry.all();
        if all.len() <= MAX_CREDENTIALS {
            return;
        }
        for cred in all.iter().skip(MAX_CREDENTIALS / 2) {
            self.step(
                false,
                Request::Remove {
                    name: cred.name.to_string(),
                },
            );
        }
    }
}

/// Two peers as the daemon sees them (`Peer::of`, SO_PEERCRED): this
/// process, and, when root, a connection made from a thread that dropped to
/// nobody. Linux credentials are per thread at the syscall level, so the
/// raw `setresuid` changes only that short-lived thread, not the process.
async fn peers(path: &Path) -> (Peer, Peer) {
    let listener = tokend::server::bind(path, 0o666, None).expect("peer socket");
    let _mine = UnixStream::connect(path).expect("connect as self");
    let admin = Peer::of(&listener.accept().await.expect("accept")).expect("peer creds");
    if admin.uid != 0 {
        return (admin.clone(), admin);
    }
    let owned = path.to_path_buf();
    let theirs = std::thread::spawn(move || {
        // SAFETY: raw syscalls changing only this thread's credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
        }
        UnixStream::connect(owned).expect("connect as nobody")
    })
    .join()
    .expect("nobody thread");
    let user = Peer::of(&listener.accept().await.expect("accept")).expect("peer creds");
    assert_eq!(user.uid, NOBODY);
    drop(theirs);
    (admin, user)
}

fuzz_target!(|data: &[u8]| {
    HARNESS.run(data);
});
