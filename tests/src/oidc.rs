//! The real OAuth2 server of the end-to-end tests (`tests/oidc`, npm's
//! `oidc-provider`), and a "browser" that completes its login without a human.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Installs the server's npm packages once, if `.ci/run` has not already.
fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let dir = oidc_dir();
        if dir.join("node_modules/oidc-provider").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the OAuth2 end-to-end tests (apt-get install npm)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    });
}

/// A running oidc-provider; stopped on drop.
pub struct OidcServer {
    child: Child,
    pub issuer: String,
}

impl OidcServer {
    /// Starts the server; access tokens live `access_ttl` seconds.
    pub fn start(access_ttl: u64) -> OidcServer {
        OidcServer::start_with(access_ttl, &[])
    }

    /// Starts the server with extra settings from tests/oidc/README.md,
    /// e.g. `("DISCOVERY", "rfc8414")`.
    pub fn start_with(access_ttl: u64, env: &[(&str, &str)]) -> OidcServer {
        ensure_installed();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(oidc_dir())
            .env("PORT", "0")
            .env("ACCESS_TTL", access_ttl.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is needed for the OAuth2 end-to-end tests");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read LISTENING line");
        // Keep draining: a write to a closed pipe would kill the server.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let issuer = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        OidcServer { child, issuer }
    }

    pub fn auth_url(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The RFC 7662 introspection endpoint.
    pub fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// Plays the browser: follows redirects (with cookies) from the authorize
    /// URL until one leaves for the `redirect_uri` it names, and returns that URL.
    pub fn browse(&self, authorize_url: &str) -> String {
        let redirect_prefix = &query_param(authorize_url, "redirect_uri")
            .expect("the authorize URL names its redirect_uri");
        let jar = tempfile::NamedTempFile::new().expect("cookie jar");
        let jar = jar.path().to_str().expect("utf-8 path").to_string();
        let mut url = authorize_url.to_string();
        for _ in 0..12 {
            let next = curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-c",
                &jar,
                "-b",
                &jar,
                "-w",
                "%{redirect_url}",
                &url,
            ]);
            assert!(!next.is_empty(), "no redirect from {url}");
            if next.starts_with(redirect_prefix) {
                return next;
            }
            url = next;
        }
        panic!("the login never redirected to {redirect_prefix}");
    }

    /// The RFC 8628 device authorization endpoint.
    pub fn device_auth_url(&self) -> String {
        format!("{}/device/auth", self.issuer)
    }

    /// Plays the user of a device login: opens `verification_uri_complete`
    /// (the code filled in), confirms the code on the confirmation page and
    /// lets the server's automatic interaction log in and consent. Panics
    /// unless the server ends on its "approved" page (tests/oidc/README.md,
    /// "Device flow").
    pub fn approve_device(&self, verification_uri_complete: &str) {
        let page = DevicePage::open(verification_uri_complete);
        let confirm = page.submit(&[]);
        let code = page.user_code.as_str();
        assert!(
            confirm.contains(&format!("DEVICE CODE CONFIRM {code}")),
            "no confirmation page for {code}: {confirm}"
        );
        let confirmed = DevicePage {
            xsrf: xsrf_of(&confirm),
            ..page
        };
        let done = confirmed.submit(&["-L", "-d", "confirm=yes"]);
        assert!(
            done.contains("DEVICE LOGIN APPROVED"),
            "the device login was not approved: {done}"
        );
    }

    /// Plays a user who refuses a device login: opens
    /// `verification_uri_complete` and presses "Abort", which makes the
    /// server answer the device's polls with `access_denied`.
    pub fn deny_device(&self, verification_uri_complete: &str) {
        let page = DevicePage::open(verification_uri_complete);
        let done = page.submit(&["-d", "abort=yes"]);
        assert!(
            done.contains("DEVICE LOGIN ABORTED"),
            "the device login was not aborted: {done}"
        );
    }

    /// Whether the server considers `token` an active access token.
    pub fn introspect(&self, token: &str) -> bool {
        self.introspection(token)["active"] == true
    }

    /// The server's RFC 7662 answer about `token`. The client secret and
    /// the token go to curl on stdin, never in its argv, where the tests
    /// that check every process's argv for secrets would see them.
    pub fn introspection(&self, token: &str) -> serde_json::Value {
        let body = format!(
            "client_id=tokend-test&client_secret=tokend-test-secret&token={}",
            form_escape(token)
        );
        let url = format!("{}/token/introspection", self.issuer);
        let out = crate::run_with_timeout(
            {
                let mut cmd = Command::new("curl");
                cmd.args([
                    "-s",
                    "--max-time",
                    "20",
                    "-X",
                    "POST",
                    "--data-binary",
                    "@-",
                    &url,
                ]);
                cmd
            },
            Some(&body),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("introspection answered {text}"))
    }

    pub fn stats(&self) -> serde_json::Value {
        let body = curl(&["-s", &format!("{}/test/stats", self.issuer)]);
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Sets a token-endpoint fault (see tests/oidc/README.md).
    pub fn fault(&self, json: &str) {
        self.post_test("fault", json);
    }

    /// POSTs `json` to the server's test-only `/test/WHAT`.
    fn post_test(&self, what: &str, json: &str) {
        curl(&[
            "-s",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            json,
            &format!("{}/test/{what}", self.issuer),
        ]);
    }

    /// The base URL of the server's resource API (`/api/`), which answers
    /// 403 for a token that is not an active access token of this server,
    /// as Uptempo's API does (tests/oidc/README.md).
    pub fn api_url(&self) -> String {
        format!("{}/api/", self.issuer)
    }

    /// The requests the resource API saw, oldest first (tokens as numbers).
    pub fn api_requests(&self) -> Vec<serde_json::Value> {
        let body = curl(&["-s", &format!("{}/test/api", self.issuer)]);
        let seen: serde_json::Value = serde_json::from_str(&body).expect("api JSON");
        seen["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Changes how the resource API answers: `{"mode": "always403"}`,
    /// `{"refuse_seen": true}` (the tokens seen so far are refused from
    /// now on; the grant stays valid), `{"reset": true}`…
    pub fn api_control(&self, json: &str) {
        self.post_test("api", json);
    }

    pub fn refreshes(&self) -> u64 {
        self.stats()["token_requests"]["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The device flow's user-code form, as a browser holds it: its cookies,
/// the form's anti-forgery value and target, and the code.
struct DevicePage {
    jar: tempfile::NamedTempFile,
    action: String,
    xsrf: String,
    user_code: String,
}

impl DevicePage {
    /// GETs the verification URI: oidc-provider answers with a form that a
    /// browser submits at once (the code, and an `xsrf` bound to the cookie).
    fn open(verification_uri_complete: &str) -> DevicePage {
        let user_code = query_param(verification_uri_complete, "user_code")
            .expect("verification_uri_complete carries user_code");
        let jar = tempfile::NamedTempFile::new().expect("cookie jar");
        let path = jar.path().to_str().expect("utf-8 path").to_string();
        let page = curl(&["-s", "-c", &path, "-b", &path, verification_uri_complete]);
        let action = between(&page, "action=\"", "\"")
            .unwrap_or_else(|| panic!("no form on the device page: {page}"));
        DevicePage {
            jar,
            action,
            xsrf: xsrf_of(&page),
            user_code,
        }
    }

    /// POSTs the form (xsrf and user code) with `extra` curl arguments;
    /// returns the page the server answers (after redirects with `-L`).
    fn submit(&self, extra: &[&str]) -> String {
        let path = self.jar.path().to_str().expect("utf-8 path");
        let xsrf = format!("xsrf={}", self.xsrf);
        let code = format!("user_code={}", self.user_code);
        let mut args = vec![
            "-s",
            "-c",
            path,
            "-b",
            path,
            "--data-urlencode",
            &xsrf,
            "--data-urlencode",
            &code,
        ];
        args.extend(extra);
        args.push(&self.action);
        curl(&args)
    }
}

fn xsrf_of(page: &str) -> String {
    between(page, "name=\"xsrf\" value=\"", "\"")
        .unwrap_or_else(|| panic!("no xsrf on the device page: {page}"))
}

/// The text between the first `start` and the next `end`.
fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(rest[..rest.find(end)?].to_string())
}

/// A query parameter of `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs curl and returns its stdout.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is needed for the end-to-end tests");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `application/x-www-form-urlencoded` escaping of one value.
fn form_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits up to `limit` for `check` to hold, polling.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}
