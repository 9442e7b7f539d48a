//! The HTTP/JSON API on `http.sock` (docs/HTTP.md) end to end: curl and
//! Node read tokens, another local user gets exactly what the main socket
//! would give them, reject against the real OAuth2 server, hostile and
//! numerous clients, the trace log, and docs/openapi.yaml against the
//! running server.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::Duration;
use tokend_tests::http::HttpClient;
use tokend_tests::oidc::OidcServer;
use tokend_tests::users::{Other, other_user};
use tokend_tests::*;

const TOKEN: &str = "upp-http-e2e-3f9c1d7a";

/// A daemon holding the bearer credential `up`.
fn with_bearer(options: Options) -> Daemon {
    let d = Daemon::start_with(options);
    d.add_bearer("up", TOKEN);
    d
}

/// `curl --unix-socket http.sock -s -i ARGS URL` (status line and headers
/// included), optionally as another user.
fn curl(d: &Daemon, path: &str, args: &[&str], who: Option<Other>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.arg("--unix-socket")
        .arg(d.http_socket())
        .args(["-s", "-S", "-i", "--max-time", "30"])
        .args(args)
        .arg(format!("http://localhost{path}"));
    if let Some(who) = who {
        who.run_as(&mut cmd);
    }
    run_with_timeout(cmd, None, Duration::from_secs(60))
}

/// curl's answer split: status, lowercased head, body.
fn split(out: &Output) -> (u16, String, String) {
    assert_ok(out);
    let text = stdout(out);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn curl_reads_the_token_as_json_and_as_text_and_errors_are_json() {
    let d = with_bearer(Options::default());
    let (status, head, body) = split(&curl(&d, "/v1/credentials/up/token", &[], None));
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let token = json(&body);
    assert_eq!(token["access_token"], TOKEN);
    assert_eq!(token["token_type"], "Bearer");
    assert!(
        token["expires_at"].is_null() && token["expires_in"].is_null(),
        "{token}"
    );

    let out = curl(
        &d,
        "/v1/credentials/up/token",
        &["-H", "accept: text/plain"],
        None,
    );
    let (status, head, body) = split(&out);
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert_eq!(body, TOKEN, "the bare token, no newline");

    let (status, _, body) = split(&curl(&d, "/v1/credentials/nope/token", &[], None));
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "unknown_credential");
    assert!(json(&body)["message"].as_str().unwrap().contains("nope"));

    let (status, head, body) = split(&curl(&d, "/v1/credentials/up/token", &["-X", "POST"], None));
    assert_eq!(status, 405);
    assert!(head.contains("allow: get"), "{head}");
    assert_eq!(json(&body)["error"], "method_not_allowed");

    let (status, _, body) = split(&curl(&d, "/v1/nothing", &[], None));
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "not_found");

    let (status, _, body) = split(&curl(&d, "/v1/credentials/up/token?min_valid=x", &[], None));
    assert_eq!(status, 400);
    assert_eq!(json(&body)["error"], "bad_request");

    // The same objects as tokenctl's --json.
    let (_, _, body) = split(&curl(&d, "/v1/credentials/up", &[], None));
    let mut shown = json(&body);
    let mut cli = json(&stdout(&d.tokenctl(&["show", "up", "--json"])));
    for v in [&mut shown, &mut cli] {
        v.as_object_mut().unwrap().remove("last_use_at");
    }
    assert_eq!(shown, cli);
    let (_, _, body) = split(&curl(&d, "/v1/credentials", &[], None));
    assert_eq!(json(&body)["credentials"][0]["name"], "up");
    assert!(!body.contains(TOKEN), "the list holds no secret");
    let (_, _, body) = split(&curl(&d, "/v1/status", &[], None));
    assert_eq!(json(&body)["credentials"][0]["state"], "ready");
    let (_, _, body) = split(&curl(&d, "/v1/health", &[], None));
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "ok", "version": "0.1.0"})
    );
}

#[test]
fn node_reads_the_token_with_http_get_and_a_socket_path() {
    let d = with_bearer(Options::default());
    let script = r#"
        const http = require('http');
        http.get({socketPath: process.argv[1], path: '/v1/credentials/up/token'}, (res) => {
            let data = '';
            res.on('data', (c) => data += c);
            res.on('end', () => { console.log(res.statusCode + ' ' + JSON.parse(data).access_token); });
        }).on('error', (e) => { console.error(e); process.exit(1); });
    "#;
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(script).arg(d.http_socket());
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), format!("200 {TOKEN}"));
}

#[test]
fn another_user_gets_403_until_allowed_and_403_again_after_deny() {
    let Some(who) = other_user() else { return };
    let d = with_bearer(Options::default());
    d.open_to_everyone();
    set_mode(&d.http_socket(), 0o666);
    let path = "/v1/credentials/up/token";

    let (status, _, body) = split(&curl(&d, path, &[], Some(who)));
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"], "permission_denied");
    assert!(!body.contains(TOKEN));
    let (_, _, body) = split(&curl(&d, "/v1/credentials", &[], Some(who)));
    assert_eq!(json(&body)["credentials"], serde_json::json!([]));

    let uid = who.uid.to_string();
    assert_ok(&d.tokenctl(&["allow", "up", "--user", &uid]));
    let (status, _, body) = split(&curl(&d, path, &[], Some(who)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["access_token"], TOKEN);

    assert_ok(&d.tokenctl(&["deny", "up", "--user", &uid]));
    let (status, _, body) = split(&curl(&d, path, &[], Some(who)));
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(TOKEN));
}

#[test]
fn reject_with_the_current_token_gives_a_fresh_one_the_provider_accepts_and_with_the_old_one_changes_nothing()
 {
    let idp = OidcServer::start(600);
    let d = Daemon::start_with(Options {
        config: Some("[refresh]\nstartup_spread_secs = 0\n".into()),
        ..Options::default()
    });
    assert_ok(&d.add_oauth(&idp, "app", &[]));
    d.login(&idp, "app");
    let mut http = d.http();
    let token = |http: &mut HttpClient| {
        let r = http.get("/v1/credentials/app/token").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert!(j["expires_in"].as_i64().unwrap() > 500, "{j}");
        assert!(j["expires_at"].as_str().unwrap().ends_with('Z'), "{j}");
        j["access_token"].as_str().unwrap().to_string()
    };
    let old = token(&mut http);
    let body = serde_json::json!({ "token": old }).to_string();
    let r = http
        .request(
            "POST",
            "/v1/credentials/app/reject",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["refreshed"], true, "{}", r.text());
    assert!(r.json()["expires_in"].as_i64().unwrap() > 500);
    let fresh = token(&mut http);
    assert_ne!(fresh, old);
    assert!(
        idp.introspect(&fresh),
        "the provider accepts the fresh token"
    );

    let refreshes = idp.refreshes();
    let r = http
        .request("POST", "/v1/credentials/app/reject", &[], body.as_bytes())
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["refreshed"], false, "{}", r.text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("already replaced")
    );
    assert_eq!(token(&mut http), fresh, "nothing changed");
    assert_eq!(idp.refreshes(), refreshes, "no request to the provider");

    let r = http
        .request("POST", "/v1/credentials/app/refresh", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["refreshed"], true);
    assert_ne!(token(&mut http), fresh);
}

#[test]
fn a_credential_that_needs_a_login_is_a_409_with_its_state() {
    let idp = OidcServer::start(600);
    let d = Daemon::start();
    assert_ok(&d.add_oauth(&idp, "app", &[]));
    let r = d.http().get("/v1/credentials/app/token").unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "not_usable");
    assert_eq!(r.json()["state"], "needs-login");
}

/// Asserts that a normal request is still answered.
fn still_answers(d: &mut Daemon) {
    assert!(d.is_running(), "tokend died:\n{}", d.log_text());
    let r = d.http().get("/v1/credentials/up/token").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["access_token"], TOKEN);
}

#[test]
fn hostile_clients_lose_only_their_own_connection() {
    let mut d = with_bearer(Options::default());
    let socket = d.http_socket();

    // 4 KiB of random bytes: an error answer (hyper's 400) or a close.
    let mut noise = vec![0u8; 4096];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
        .unwrap();
    let mut s = UnixStream::connect(&socket).unwrap();
    let _ = s.write_all(&noise);
    drop(s);
    still_answers(&mut d);

    // A 1 MiB header: 431 when the client reads before the close.
    let mut c = HttpClient::connect(&socket).unwrap();
    let huge = "a".repeat(1 << 20);
    if let Ok(r) = c.request("GET", "/v1/health", &[("X-Huge", &huge)], b"") {
        assert_eq!(r.status, 431);
    }
    still_answers(&mut d);

    // A body over 64 KiB: 413.
    let mut c = d.http();
    let body = vec![b' '; 64 * 1024 + 1];
    if let Ok(r) = c.request("POST", "/v1/credentials/up/reject", &[], &body) {
        assert_eq!(r.status, 413, "{}", r.text());
        assert_eq!(r.json()["error"], "payload_too_large");
    }
    still_answers(&mut d);

    // 300 clients that never finish their request head.
    let stuck: Vec<UnixStream> = (0..300)
        .map(|_| {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.write_all(b"GET /v1/credentials/up/token HTTP/1.1\r\nHost: loc")
                .unwrap();
            s
        })
        .collect();
    still_answers(&mut d);
    // The head deadline (limits.frame_timeout_secs, 5 s) closes them.
    for mut s in stuck {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a stuck client is closed, not answered");
    }
    still_answers(&mut d);
}

#[test]
fn sixty_four_kept_alive_clients_make_two_hundred_requests_each() {
    let d = with_bearer(Options::default());
    let socket = d.http_socket();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = HttpClient::connect(&socket).unwrap();
                for n in 0..200 {
                    let r = if (i + n) % 2 == 0 {
                        c.get("/v1/credentials/up/token").unwrap()
                    } else {
                        c.request(
                            "GET",
                            "/v1/credentials/up/token",
                            &[("Accept", "text/plain")],
                            b"",
                        )
                        .unwrap()
                    };
                    assert_eq!(r.status, 200);
                    if (i + n) % 2 == 0 {
                        assert_eq!(r.json()["access_token"], TOKEN);
                    } else {
                        assert_eq!(r.text(), TOKEN);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
}

#[test]
fn the_token_never_appears_in_the_trace_log() {
    let mut d = with_bearer(Options {
        log_level: Some("trace".into()),
        ..Options::default()
    });
    let mut c = d.http();
    assert_eq!(
        c.get("/v1/credentials/up/token").unwrap().json()["access_token"],
        TOKEN
    );
    let r = c
        .request(
            "GET",
            "/v1/credentials/up/token",
            &[("Accept", "text/plain")],
            b"",
        )
        .unwrap();
    assert_eq!(r.text(), TOKEN);
    let body = serde_json::json!({ "token": TOKEN }).to_string();
    let _ = c.request("POST", "/v1/credentials/up/reject", &[], body.as_bytes());
    let _ = c.request(
        "POST",
        "/v1/credentials/up/reject",
        &[],
        format!("\"{TOKEN}\"").as_bytes(),
    );
    drop(c);
    d.stop();
    let log = d.log_text();
    assert!(
        log.contains("HTTP request"),
        "the requests were traced:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

#[test]
fn the_http_socket_can_be_moved_or_turned_off() {
    let mut d = Daemon::prepare(Options {
        config: Some("[http]\nenabled = false\n".into()),
        ..Options::default()
    });
    d.spawn();
    assert!(!d.http_socket().exists(), "no http.sock when disabled");
    d.stop();
    let elsewhere = d.dir.path().join("api").join("custom.sock");
    std::fs::write(&d.config, format!("[http]\nsocket = {:?}\n", elsewhere)).unwrap();
    d.spawn();
    let mut c = HttpClient::connect(&elsewhere).unwrap();
    assert_eq!(c.get("/v1/health").unwrap().status, 200);
    d.stop();
    assert!(!elsewhere.exists(), "removed at a clean stop");
}

/// The `responses` of one operation, `$ref`s resolved one level.
fn response_codes(op: &serde_yaml_ng::Value) -> BTreeSet<u16> {
    op["responses"]
        .as_mapping()
        .expect("responses")
        .keys()
        .map(|k| k.as_str().expect("a status string").parse().unwrap())
        .collect()
}

#[test]
fn openapi_documents_every_route_the_server_answers_and_no_other() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .unwrap();
    let spec: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is YAML");
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            documented.insert((
                method.as_str().unwrap().to_ascii_uppercase(),
                path.as_str().unwrap().to_string(),
            ));
        }
    }
    let served: BTreeSet<(String, String)> = tokend::server::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.yaml against the daemon's routes"
    );

    // Every documented route answers with a documented status and type.
    let idp = OidcServer::start(600);
    let d = Daemon::start_with(Options {
        config: Some("[refresh]\nstartup_spread_secs = 0\n".into()),
        ..Options::default()
    });
    assert_ok(&d.add_oauth(&idp, "app", &[]));
    d.login(&idp, "app");
    let mut c = d.http();
    for (method, template) in &documented {
        let op = &spec["paths"][template.as_str()][method.to_ascii_lowercase().as_str()];
        let path = template.replace("{name}", "app");
        if op["responses"]["200"]["content"]["text/event-stream"].is_mapping() {
            // A stream never ends: on a connection of its own, its head only.
            let r = d.http().request(method, &path, &[], b"").unwrap();
            assert_eq!(r.status, 200, "{method} {path}");
            assert_eq!(
                r.header("content-type"),
                Some("text/event-stream"),
                "{method} {path}"
            );
            continue;
        }
        let r = c.request(method, &path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        let codes = response_codes(op);
        assert!(
            codes.contains(&r.status),
            "{method} {path}: {} undocumented",
            r.status
        );
        // The one type its 200 documents: JSON but for the metrics' text.
        let content = op["responses"]["200"]["content"].as_mapping().unwrap();
        let documented_type = content.keys().next().unwrap().as_str().unwrap();
        assert_eq!(
            r.header("content-type"),
            Some(documented_type),
            "{method} {path}"
        );
        if documented_type != "application/json" {
            continue;
        }
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        let schema = match schema["$ref"].as_str() {
            Some(r) => &spec["components"]["schemas"][r.rsplit('/').next().unwrap()],
            None => schema,
        };
        let body = r.json();
        for key in schema["required"].as_sequence().expect("required keys") {
            let key = key.as_str().unwrap();
            assert!(
                body.get(key).is_some(),
                "{method} {path}: no {key:?} in {body}"
            );
        }
        // Errors are documented too: the unknown credential.
        if template.contains("{name}") {
            let r = c
                .request(method, &template.replace("{name}", "nope"), &[], b"")
                .unwrap();
            assert!(
                codes.contains(&r.status),
                "{method} {template}: {} undocumented",
                r.status
            );
            assert_eq!(r.json()["error"], "unknown_credential");
        }
        // Other methods: 405 with Allow.
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if other != method && !documented.contains(&(other.to_string(), template.clone())) {
                let r = c.request(other, &path, &[], b"").unwrap();
                assert_eq!(r.status, 405, "{other} {path}");
                assert_eq!(r.header("allow"), Some(method.as_str()));
            }
        }
    }
    for path in [
        "/",
        "/v1",
        "/v1/credentials/app/check",
        "/v1/login",
        "/v2/health",
        "/v1/credentials/app/token/x",
    ] {
        let r = c.get(path).unwrap();
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (404, "not_found".into()),
            "{path}"
        );
    }
}

#[test]
fn both_sockets_passed_by_systemd_are_served_and_told_apart() {
    let tool = std::path::Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        tool.exists(),
        "{} is missing: apt-get install systemd",
        tool.display()
    );
    let mut d = with_bearer(Options::default());
    d.stop();
    let (main, http) = (d.socket.clone(), d.http_socket());
    d.launch_with(|tokend| {
        // The HTTP socket first: tokend must not rely on the order.
        let mut cmd = Command::new(tool);
        cmd.arg("--listen").arg(&http).arg("--listen").arg(&main);
        for (key, value) in tokend.get_envs() {
            if let Some(value) = value {
                cmd.arg("-E").arg(format!(
                    "{}={}",
                    key.to_string_lossy(),
                    value.to_string_lossy()
                ));
            }
        }
        cmd.arg(tokend.get_program()).args(tokend.get_args());
        cmd
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(http.exists() && main.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sockets never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // This connection is what makes systemd-socket-activate start tokend.
    let r = HttpClient::connect(&http)
        .unwrap()
        .get("/v1/credentials/up/token")
        .unwrap();
    assert_eq!(r.json()["access_token"], TOKEN);
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    d.wait_for_log("using the HTTP API socket passed by systemd");
    assert!(d.stop().success(), "{}", d.log_text());
    assert!(
        http.exists() && main.exists(),
        "passed sockets belong to systemd"
    );
}

#[test]
fn both_sockets_share_the_connection_limit() {
    let d = with_bearer(Options {
        config: Some("[limits]\nmax_connections = 4\n".into()),
        ..Options::default()
    });
    // Two places on the main socket, two on the HTTP one: all taken.
    let _main = [d.client(), d.client()];
    let mut held = [d.http(), d.http()];
    for c in &mut held {
        assert_eq!(c.get("/v1/health").unwrap().status, 200);
    }
    let r = d.http().get("/v1/health").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "busy");
    assert!(
        r.json()["message"].as_str().unwrap().contains("limit of 4"),
        "{}",
        r.text()
    );
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = d.http().get("/v1/health");
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place came free");
        std::thread::sleep(Duration::from_millis(50));
    }
}
