//! An in-repo OAuth2 token endpoint for the lifecycle tests: rotates refresh
//! tokens, detects reuse (and then revokes the grant, as strict providers
//! do), and injects faults on demand. A test double, so it speaks just enough
//! HTTP/1.1 for reqwest: one request per connection.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the next request gets instead of a normal answer.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16, &'static str),
    RetryAfter(u64),
    Drop,
    /// Answers nothing for this long, then drops the connection unprocessed.
    Stall(Duration),
    Garbage,
    /// Processed (a refresh token rotates), then the connection is dropped:
    /// the answer is lost after the provider acted.
    Lost,
    /// Processed after this delay, answered normally.
    Slow(Duration),
    /// This status and JSON body, without processing.
    Body(u16, &'static str),
}

#[derive(Debug, Default)]
pub struct State {
    /// The refresh token that is currently valid (one grant).
    pub live_refresh: Option<String>,
    pub used_refresh: HashSet<String>,
    pub reuse_detected: usize,
    pub revoked: bool,
    pub issued: usize,
    pub faults: VecDeque<Fault>,
    pub lifetime_secs: u64,
    pub grants: Vec<String>,
    /// Introspection requests, and how many said "active".
    pub introspections: usize,
    pub introspected_active: usize,
    /// Every refresh token sent with a refresh, in order, faulted or not.
    pub sent_refresh: Vec<String>,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    pub requests: Arc<AtomicUsize>,
}

impl FakeProvider {
    /// The RFC 7662 endpoint of this provider.
    pub fn introspection_url(&self) -> String {
        self.url.replace("/token", "/introspect")
    }

    pub async fn start(lifetime_secs: u64) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            lifetime_secs,
            ..State::default()
        }));
        let fake = FakeProvider {
            url,
            state,
            requests: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        fake
    }

    /// Issues the first pair, as a code exchange would; returns the refresh token.
    pub fn grant(&self) -> String {
        let mut s = self.state.lock().unwrap();
        s.issued += 1;
        let rt = format!("rt-{}", s.issued);
        s.live_refresh = Some(rt.clone());
        s.revoked = false;
        rt
    }

    /// How many times `refresh_token` was sent with a refresh.
    pub fn times_sent(&self, refresh_token: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.sent_refresh
            .iter()
            .filter(|t| *t == refresh_token)
            .count()
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    pub fn refreshes(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    async fn serve(&self, mut stream: TcpStream) {
        let Some((path, body)) = read_request(&mut stream).await else {
            return;
        };
        if path == "/introspect" {
            let reply = self.introspect(&body);
            return respond(&mut stream, 200, "", &reply).await;
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Some((_, rt)) =
            url::form_urlencoded::parse(body.as_bytes()).find(|(k, _)| k == "refresh_token")
        {
            self.state
                .lock()
                .unwrap()
                .sent_refresh
                .push(rt.into_owned());
        }
        let fault = self.state.lock().unwrap().faults.pop_front();
        let (status, extra, reply) = match fault {
            Some(Fault::Drop) => return,
            Some(Fault::Status(code, error)) => {
                (code, String::new(), format!("{{\"error\":\"{error}\"}}"))
            }
            Some(Fault::RetryAfter(secs)) => (429, format!("Retry-After: {secs}\r\n"), "{}".into()),
            Some(Fault::Garbage) => (200, String::new(), "<html>oops</html>".into()),
            Some(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                return;
            }
            Some(Fault::Lost) => {
                self.answer(&body);
                return;
            }
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                self.answer(&body)
            }
            Some(Fault::Body(code, body)) => (code, String::new(), body.to_string()),
            None => self.answer(&body),
        };
        respond(&mut stream, status, &extra, &reply).await;
    }

    /// `active` while the token is the live, unused refresh token.
    fn introspect(&self, body: &str) -> String {
        let token = url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let mut s = self.state.lock().unwrap();
        let active = !s.revoked && s.live_refresh.as_deref() == Some(token.as_str());
        s.introspections += 1;
        s.introspected_active += usize::from(active);
        format!("{{\"active\":{active}}}")
    }

    fn answer(&self, body: &str) -> (u16, String, String) {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let mut s = self.state.lock().unwrap();
        s.grants.push(get("grant_type").unwrap_or_default());
        let invalid = (
            400,
            String::new(),
            "{\"error\":\"invalid_grant\"}".to_string(),
        );
        match get("grant_type").as_deref() {
            Some("refresh_token") => {
                let rt = get("refresh_token").unwrap_or_default();
                if s.used_refresh.contains(&rt) {
                    // Reuse of a rotated token: revoke the whole grant.
                    s.reuse_detected += 1;
                    s.revoked = true;
                    s.live_refresh = None;
                    return invalid;
                }
                if s.revoked || s.live_refresh.as_deref() != Some(rt.as_str()) {
                    return invalid;
                }
                s.used_refresh.insert(rt);
            }
            Some("client_credentials") => {}
            _ => {
                return (
                    400,
                    String::new(),
                    "{\"error\":\"unsupported_grant_type\"}".into(),
                );
            }
        }
        s.issued += 1;
        let n = s.issued;
        let rt = format!("rt-{n}");
        s.live_refresh = Some(rt.clone());
        // `refresh_expires_in: 0`, as Keycloak says of an offline token: no
        // limit, so no forecast and no introspection after the commit (the
        // introspections these tests count are the doubts settled).
        let reply = format!(
            "{{\"access_token\":\"at-{n}\",\"refresh_token\":\"{rt}\",\"expires_in\":{},\"refresh_expires_in\":0,\"token_type\":\"Bearer\"}}",
            s.lifetime_secs
        );
        (200, String::new(), reply)
    }
}

async fn respond(stream: &mut TcpStream, status: u16, extra: &str, reply: &str) {
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads the request line's path, the headers and a Content-Length body.
async fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some((path, body));
            }
        }
    }
}
