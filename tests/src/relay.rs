//! A relay between a fleet member and the test cluster's Unix socket that
//! can hold back, or cut after, a chosen statement: how the fencing tests
//! (`tests/tests/fencing.rs`) lose a COMMIT's answer, or slow one
//! statement of a refresh, at an exact step, over a real connection.
//!
//! Statements are recognised by a piece of their text in what the client
//! sends (tokio-postgres sends each statement's text in one write: a
//! simple query, or the Parse of an extended one).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do with the next client write that holds a needle.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Forward it this much later.
    Delay(Duration),
    /// Forward it, give the server time to act and answer, then cut every
    /// connection through the relay before the answer reaches the client,
    /// and refuse new ones for this long.
    CutAfter(Duration),
    /// Never forward it: cut every connection at once, and refuse new
    /// ones for this long (the statement fails and does nothing).
    CutBefore(Duration),
}

#[derive(Default)]
struct Rules {
    /// Armed rules, each used once.
    armed: Vec<(Vec<u8>, Action)>,
    /// New connections are closed at once until then.
    refuse_until: Option<Instant>,
    /// Every open connection's two sockets, to cut them all at once.
    open: Vec<(UnixStream, UnixStream)>,
    /// How many rules fired.
    fired: usize,
}

/// A running relay; stops accepting when dropped.
pub struct PgRelay {
    dir: tempfile::TempDir,
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
}

impl PgRelay {
    /// Relays a socket of its own to the cluster's socket in `upstream_dir`.
    pub fn start(upstream_dir: &Path) -> PgRelay {
        let dir = tempfile::tempdir().expect("relay dir");
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("relay socket");
        listener.set_nonblocking(true).expect("non-blocking");
        let upstream = upstream_dir.join(".s.PGSQL.5432");
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rules.clone(), stop.clone());
        std::thread::spawn(move || accept(listener, upstream, r, s));
        PgRelay { dir, rules, stop }
    }

    /// The store URL that goes through the relay.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@/tokend?host={}",
            self.dir.path().display()
        )
    }

    /// The next client write holding `needle` reaches the server `delay` late.
    pub fn delay_once(&self, needle: &str, delay: Duration) {
        self.arm(needle, Action::Delay(delay));
    }

    /// The next client write holding `needle` reaches the server, which
    /// acts on it, but its answer never comes back: every connection is
    /// cut, and new ones are refused for `refuse_for`.
    pub fn cut_after_once(&self, needle: &str, refuse_for: Duration) {
        self.arm(needle, Action::CutAfter(refuse_for));
    }

    /// The next client write holding `needle` never reaches the server:
    /// every connection is cut, and new ones are refused for `refuse_for`.
    pub fn cut_before_once(&self, needle: &str, refuse_for: Duration) {
        self.arm(needle, Action::CutBefore(refuse_for));
    }

    /// Cuts every connection through the relay now, and refuses new ones
    /// for `refuse_for`: the member loses the database.
    pub fn cut_now(&self, refuse_for: Duration) {
        let mut r = self.lock();
        r.refuse_until = Some(Instant::now() + refuse_for);
        cut_all(&mut r);
    }

    /// How many armed rules have fired.
    pub fn fired(&self) -> usize {
        self.lock().fired
    }

    fn arm(&self, needle: &str, action: Action) {
        self.lock().armed.push((needle.as_bytes().to_vec(), action));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PgRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        cut_all(&mut self.lock());
    }
}

fn accept(
    listener: UnixListener,
    upstream: PathBuf,
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let refused = {
            let r = rules.lock().unwrap_or_else(|p| p.into_inner());
            r.refuse_until.is_some_and(|t| Instant::now() < t)
        };
        if refused {
            continue; // dropped: closed at once
        }
        let Ok(server) = UnixStream::connect(&upstream) else {
            continue;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .push((c2, s2));
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let r = rules.clone();
        std::thread::spawn(move || client_to_server(client, server, r));
        std::thread::spawn(move || pump(s3, c3));
    }
}

/// The server's answers, as they come.
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// What the client sends, through the armed rules.
fn client_to_server(mut client: UnixStream, mut server: UnixStream, rules: Arc<Mutex<Rules>>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let action = {
            let mut r = rules.lock().unwrap_or_else(|p| p.into_inner());
            let hit = r
                .armed
                .iter()
                .position(|(needle, _)| chunk.windows(needle.len()).any(|w| w == needle));
            hit.map(|i| {
                r.fired += 1;
                r.armed.remove(i).1
            })
        };
        match action {
            Some(Action::Delay(d)) => std::thread::sleep(d),
            Some(Action::CutAfter(refuse_for)) => {
                // The client hears nothing more; the server gets the
                // statement, acts and answers into the relay, which drops
                // the answer.
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.write_all(chunk);
                std::thread::sleep(Duration::from_millis(300));
                let mut r = rules.lock().unwrap_or_else(|p| p.into_inner());
                r.refuse_until = Some(Instant::now() + refuse_for);
                cut_all(&mut r);
                return;
            }
            Some(Action::CutBefore(refuse_for)) => {
                let mut r = rules.lock().unwrap_or_else(|p| p.into_inner());
                r.refuse_until = Some(Instant::now() + refuse_for);
                cut_all(&mut r);
                return;
            }
            None => {}
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

fn cut_all(r: &mut Rules) {
    for (client, server) in r.open.drain(..) {
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = server.shutdown(std::net::Shutdown::Both);
    }
}
