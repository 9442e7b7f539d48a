//! [`Client::watch`]: the daemon's live events (docs/HTTP.md, "Events").
//!
//! It speaks HTTP to `GET /v1/events` on the daemon's HTTP socket
//! (`http.sock`), not a new request on the main socket: the stream, its
//! access checks per event, its heartbeats and the dropping of a reader
//! that falls behind exist there once, for every language; a streaming
//! variant of the bincode protocol would be a second implementation of the
//! same thing (and a protocol change for a one-way stream of JSON). The
//! HTTP needed is small — one GET, a status line, headers, a chunked body
//! of `event:`/`data:` lines — and is read here with the standard library.

use crate::Error;
use crate::blocking::Client;
use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{ConnectOptions, GenericFilePath, Stream, ToFsName};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokend_proto::{ErrorCode, RemoteError};

/// How long a stream may stay silent before it is taken as dead and opened
/// again: the daemon sends a heartbeat every 15 s. (Unix; a Windows pipe
/// has no read timeout, and a dead daemon there ends the stream instead.)
pub const WATCH_SILENCE: Duration = Duration::from_secs(45);

/// The pause before the first attempt to open a stream again; it
/// doubles with each attempt up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// The longest pause between two attempts to open a stream again.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// A stream that lived this long was a good one: the pause starts again
/// from [`FIRST_PAUSE`]. One that ended sooner (`dropped` at once, a
/// daemon that closes every stream) keeps doubling it: never a hot loop.
const STABLE: Duration = Duration::from_secs(30);

/// One event: its kind (`current`, `refreshed`, `state`, `expiring`,
/// `added`, `removed`) and its JSON (docs/HTTP.md, "Events").
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: String,
    pub data: serde_json::Value,
}

impl Event {
    /// The credential it is about.
    pub fn name(&self) -> Option<&str> {
        self.data.get("name").and_then(|n| n.as_str())
    }
}

/// The events of [`Client::watch`], as an iterator that blocks for the
/// next one. A stream that ends (the daemon restarted, the reader fell
/// behind, nothing came for [`WATCH_SILENCE`]) is opened again after a
/// short pause, and starts again with `current` events. A refusal (unknown
/// credential, permission denied) is yielded as an error, and then the
/// iterator ends; so does a daemon that cannot be reached the first time.
pub struct Watch {
    socket: PathBuf,
    path: String,
    lines: Option<Lines>,
    backoff: Backoff,
    opened: Option<Instant>,
    started: bool,
    ended: bool,
}

impl Client {
    /// The daemon's events for credential `name` (every credential this
    /// user may use when `None`): the current state of each first, then
    /// what happens to them. See [`Watch`]. The stream has a connection of
    /// its own, to the HTTP socket beside this client's socket
    /// (`$TOKEND_HTTP_SOCKET` if set).
    pub fn watch(&self, name: Option<&str>) -> Result<Watch, Error> {
        if let Some(name) = name {
            tokend_proto::validate_name(name).map_err(|e| {
                Error::Remote(RemoteError::new(ErrorCode::BadRequest, e.to_string()))
            })?;
        }
        let socket = std::env::var_os("TOKEND_HTTP_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| tokend_proto::paths::http_socket_beside(self.socket()));
        let path = match name {
            Some(name) => format!("/v1/events?credential={name}"),
            None => "/v1/events".into(),
        };
        Ok(Watch {
            socket,
            path,
            lines: None,
            backoff: Backoff::default(),
            opened: None,
            started: false,
            ended: false,
        })
    }
}

impl Iterator for Watch {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.ended {
                return None;
            }
            let lines = match self.lines.as_mut() {
                Some(lines) => lines,
                None => match open(&self.socket, &self.path) {
                    Ok(lines) => {
                        self.opened = Some(Instant::now());
                        self.lines.insert(lines)
                    }
                    Err(e) if !self.started || !retried(&e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                    Err(_) => {
                        std::thread::sleep(self.backoff.next());
                        continue;
                    }
                },
            };
            match lines.next_event() {
                Some(event) if event.kind != "dropped" => {
                    self.started = true;
                    return Some(Ok(event));
                }
                // Dropped (fell behind) or ended: opened again after a
                // pause that grows unless the stream lived long.
                _ => {
                    self.lines = None;
                    let lived = self.opened.take().map_or(Duration::ZERO, |t| t.elapsed());
                    std::thread::sleep(self.backoff.after_stream(lived));
                }
            }
        }
    }
}

/// The pauses before opening a stream again: [`FIRST_PAUSE`], doubling
/// up to [`MAX_PAUSE`], from the start again only after a stream that
/// lived [`STABLE`].
#[derive(Debug)]
struct Backoff {
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { pause: FIRST_PAUSE }
    }
}

impl Backoff {
    /// The pause after a failed attempt to open the stream.
    fn next(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(MAX_PAUSE);
        pause
    }

    /// The pause after a stream that `lived` this long ended.
    fn after_stream(&mut self, lived: Duration) -> Duration {
        if lived >= STABLE {
            self.pause = FIRST_PAUSE;
        }
        self.next()
    }
}

/// Whether opening a stream again after `e` is worth it: the daemon away
/// (restarting), not a refusal.
fn retried(e: &Error) -> bool {
    matches!(
        e,
        Error::DaemonUnreachable { .. } | Error::Timeout { .. } | Error::Connection(_)
    )
}

/// Opens the stream ([`open_now`]). A Windows pipe has no read timeout,
/// so there the opening runs on a thread of its own and is given up after
/// [`WATCH_SILENCE`] (as `blocking.rs` does for a call): a pipe squatter
/// that never answers cannot block [`Watch`] for ever. The thread, left
/// behind, ends when the pipe does.
#[cfg(windows)]
fn open(socket: &Path, path: &str) -> Result<Lines, Error> {
    let (s, p) = (socket.to_path_buf(), path.to_string());
    let (done, answer) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("tokend-watch-open".into())
        .spawn(move || {
            let _ = done.send(open_now(&s, &p));
        })
        .map_err(|e| Error::Connection(format!("cannot start the stream's thread: {e}")))?;
    answer
        .recv_timeout(WATCH_SILENCE)
        .unwrap_or_else(|_| Err(Error::timeout(socket, WATCH_SILENCE)))
}

/// Opens the stream ([`open_now`]), under the socket's read timeout.
#[cfg(not(windows))]
fn open(socket: &Path, path: &str) -> Result<Lines, Error> {
    open_now(socket, path)
}

/// Opens the stream: the request sent, the answer's head read; an error
/// answer as the error it names.
fn open_now(socket: &Path, path: &str) -> Result<Lines, Error> {
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| Error::unreachable(socket, e))?;
    let stream = ConnectOptions::new()
        .name(name)
        .connect_sync()
        .map_err(|e| Error::unreachable(socket, e))?;
    crate::ops::check_server(socket, &stream)?;
    // A Windows pipe has no read timeout: silence is not detected there.
    let _ = stream.set_recv_timeout(Some(WATCH_SILENCE));
    let mut reader = BufReader::new(stream);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    let lost = |e: std::io::Error| Error::Connection(format!("the event stream: {e}"));
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(lost)?;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(lost)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Connection("the event stream's answer is not HTTP".into()))?;
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(lost)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (key, value) = header.split_once(':').unwrap_or((header, ""));
        match key.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    if status != 200 {
        let mut body = vec![0; length.min(64 * 1024)];
        reader.read_exact(&mut body).map_err(lost)?;
        return Err(refusal(status, &body));
    }
    if !chunked {
        return Err(Error::Connection(
            "the event stream is not chunked (is this tokend's HTTP socket?)".into(),
        ));
    }
    Ok(Lines {
        reader,
        chunk_left: 0,
        done: false,
    })
}

/// The error an error answer names (`{"error", "message"}`, docs/HTTP.md).
fn refusal(status: u16, body: &[u8]) -> Error {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = json["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("tokend answered HTTP {status}"));
    match json["error"].as_str() {
        Some("permission_denied") => Error::PermissionDenied(message),
        Some("unknown_credential") => Error::UnknownCredential(message),
        Some("bad_request") => Error::Remote(RemoteError::new(ErrorCode::BadRequest, message)),
        _ => Error::Remote(RemoteError::new(ErrorCode::Internal, message)),
    }
}

/// The stream's body: chunked transfer decoded, then SSE lines.
struct Lines {
    reader: BufReader<Stream>,
    chunk_left: usize,
    done: bool,
}

impl Lines {
    /// The next whole event, or `None` when the stream ended or broke.
    fn next_event(&mut self) -> Option<Event> {
        let (mut kind, mut data) = (String::from("message"), String::new());
        loop {
            let line = self.line()?;
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if line.is_empty() && !data.is_empty() {
                let data = serde_json::from_str(&data).ok()?;
                return Some(Event { kind, data });
            }
        }
    }

    /// One line of the body (without its newline).
    fn line(&mut self) -> Option<String> {
        let mut bytes = Vec::new();
        loop {
            let b = self.byte()?;
            if b == b'\n' {
                let text = String::from_utf8_lossy(&bytes);
                return Some(text.trim_end_matches('\r').to_string());
            }
            bytes.push(b);
            if bytes.len() > 1 << 20 {
                return None;
            }
        }
    }

    /// One byte of the decoded body.
    fn byte(&mut self) -> Option<u8> {
        if self.done {
            return None;
        }
        if self.chunk_left == 0 {
            let mut size = String::new();
            // The CRLF that ends the previous chunk, then the size line.
            while size.trim().is_empty() {
                size.clear();
                if self.reader.read_line(&mut size).ok()? == 0 {
                    return None;
                }
            }
            let hex = size.trim().split(';').next().unwrap_or("");
            self.chunk_left = usize::from_str_radix(hex, 16).ok()?;
            if self.chunk_left == 0 {
                self.done = true;
                return None;
            }
        }
        let mut b = [0u8; 1];
        self.reader.read_exact(&mut b).ok()?;
        self.chunk_left -= 1;
        Some(b[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reopening_backs_off_and_starts_again_only_after_a_long_stream() {
        let mut b = Backoff::default();
        let failed: Vec<_> = (0..7).map(|_| b.next()).collect();
        assert_eq!(
            failed,
            [
                ms(250),
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(8_000),
                ms(10_000)
            ]
        );
        // Streams dropped at once (even after an event or two) keep the
        // pause growing: no hot loop.
        let mut b = Backoff::default();
        let short: Vec<_> = (0..4).map(|_| b.after_stream(ms(100))).collect();
        assert_eq!(short, [ms(250), ms(500), ms(1_000), ms(2_000)]);
        // A stream that lived 30 s was a good one: from the start again.
        assert_eq!(b.after_stream(STABLE), ms(250));
        assert_eq!(b.after_stream(ms(10)), ms(500));
    }
}
