//! A fake OAuth2 token endpoint on 127.0.0.1 for the refresh storm: answers
//! every grant after a fixed delay (a real provider's latency), rotates
//! refresh tokens like Uptempo (a used one dies; sending it again is an
//! error), and counts requests, requests per client (one client per
//! credential in the fixtures) and the peak number answered at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The refresh token credential `i` starts with.
pub fn initial_refresh_token(i: usize) -> String {
    format!("rt-initial-{i:06}")
}

/// What the provider has seen so far.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub answered_ok: AtomicU64,
    /// Malformed requests and unknown grants.
    pub bad_requests: AtomicU64,
    /// Refresh tokens sent a second time: the bug docs/DESIGN.md §4.2 forbids.
    pub reused_refresh_tokens: AtomicU64,
    in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    issued: AtomicU64,
    spent: Mutex<HashSet<String>>,
    /// Requests per `client_id` (each fixture credential has its own).
    per_client: Mutex<HashMap<String, u32>>,
    last_answer: Mutex<Option<Instant>>,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    pub fn last_answer(&self) -> Option<Instant> {
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests per client: (clients seen, the most from one client, the
    /// clients that sent more than one, up to 5 of them by name).
    pub fn per_client(&self) -> (usize, u32, usize, Vec<String>) {
        let map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let max = map.values().copied().max().unwrap_or(0);
        let mut repeated: Vec<String> = map
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(c, n)| format!("{c} ({n})"))
            .collect();
        let count = repeated.len();
        repeated.sort();
        repeated.truncate(5);
        (map.len(), max, count, repeated)
    }
}

/// The running endpoint; stops when dropped.
pub struct FakeProvider {
    _runtime: tokio::runtime::Runtime,
    pub token_url: String,
    pub stats: Arc<Stats>,
}

impl FakeProvider {
    /// Listens on an ephemeral port; every answer waits `delay` first.
    pub fn start(delay: Duration) -> Result<FakeProvider, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the fake provider's runtime: {e}"))?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("fake provider: cannot listen: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stats = Arc::new(Stats::default());
        runtime.spawn(accept_loop(listener, stats.clone(), delay));
        Ok(FakeProvider {
            _runtime: runtime,
            token_url: format!("http://127.0.0.1:{port}/token"),
            stats,
        })
    }
}

async fn accept_loop(listener: TcpListener, stats: Arc<Stats>, delay: Duration) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, stats.clone(), delay));
    }
}

/// Serves one keep-alive connection, request after request.
async fn serve(stream: TcpStream, stats: Arc<Stats>, delay: Duration) {
    let mut stream = BufReader::new(stream);
    while let Some(body) = read_request(&mut stream).await {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        let (status, json) = answer(&stats, &body);
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
        *stats.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// Reads one request's head and body; `None` when the connection ends or
/// the request is not something this endpoint understands.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((key, value)) = header.split_once(':')
            && key.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length.min(64 * 1024)];
    stream.read_exact(&mut body).await.ok()?;
    String::from_utf8(body).ok()
}

/// The answer to one form-encoded grant.
fn answer(stats: &Stats, body: &str) -> (&'static str, String) {
    let field = |key: &str| {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let refused = |error: &str| ("400 Bad Request", format!("{{\"error\":\"{error}\"}}"));
    if let Some(client) = field("client_id") {
        *stats
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client)
            .or_default() += 1;
    }
    match field("grant_type").as_deref() {
        Some("refresh_token") => {
            let Some(rt) = field("refresh_token") else {
                stats.bad_requests.fetch_add(1, Ordering::SeqCst);
                return refused("invalid_request");
            };
            let fresh = stats
                .spent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rt);
            if !fresh {
                stats.reused_refresh_tokens.fetch_add(1, Ordering::SeqCst);
                return refused("invalid_grant");
            }
        }
        Some("client_credentials") => {}
        _ => {
            stats.bad_requests.fetch_add(1, Ordering::SeqCst);
            return refused("unsupported_grant_type");
        }
    }
    let n = stats.issued.fetch_add(1, Ordering::SeqCst);
    stats.answered_ok.fetch_add(1, Ordering::SeqCst);
    let json = format!(
        "{{\"access_token\":\"at-fresh-{n}\",\"refresh_token\":\"rt-{n}\",\"expires_in\":3600,\"token_type\":\"Bearer\"}}"
    );
    ("200 OK", json)
}
