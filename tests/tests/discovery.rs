//! Issuer discovery end to end: `tokenctl add … --issuer URL` against the
//! real oidc-provider (and, for an issuer with a path, a one-document HTTP
//! server), precedence flag > discovery > preset, and the refusals.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use tokend_tests::oidc::OidcServer;
use tokend_tests::*;

/// `tokenctl add oauth2 NAME --issuer ISSUER` for the auth-code client,
/// secret on stdin, plus `extra` arguments.
fn add_with_issuer(d: &Daemon, name: &str, issuer: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "add",
        "oauth2",
        name,
        "--issuer",
        issuer,
        "--client-id",
        "tokend-test",
        "--scope",
        "openid",
    ];
    args.extend(extra);
    d.tokenctl_stdin(&args, "tokend-test-secret")
}

/// The credential's settings from `show --json` (the inner spec).
fn spec(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.tokenctl(&["show", name, "--json"]);
    assert_ok(&out);
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("show JSON");
    let spec = info["spec"].as_object().expect("spec").clone();
    spec.into_iter().next().expect("one kind").1
}

/// Endpoint name → source, from a spec.
fn sources(spec: &serde_json::Value) -> BTreeMap<String, String> {
    spec["endpoints"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_issuer_fills_in_every_endpoint_and_the_login_works() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    assert_ok(&add_with_issuer(&d, "up", &idp.issuer, &[]));
    let s = spec(&d, "up");
    let i = &idp.issuer;
    assert_eq!(s["auth_url"], format!("{i}/auth"));
    assert_eq!(s["token_url"], format!("{i}/token"));
    assert_eq!(
        s["endpoints"]["introspection_url"],
        format!("{i}/token/introspection")
    );
    assert_eq!(
        s["endpoints"]["revocation_url"],
        format!("{i}/token/revocation")
    );
    assert_eq!(
        s["endpoints"]["device_authorization_url"],
        format!("{i}/device/auth")
    );
    assert_eq!(s["endpoints"]["issuer"], i.as_str());
    assert_eq!(
        sources(&s),
        map(&[
            ("issuer", "flag"),
            ("authorization", "discovery"),
            ("token", "discovery"),
            ("introspection", "discovery"),
            ("revocation", "discovery"),
            ("device_authorization", "discovery"),
        ])
    );
    let shown = stdout(&d.tokenctl(&["show", "up"]));
    for line in [
        format!("{i}/token (discovery)"),
        format!("{i}/auth (discovery)"),
        format!("{i}/token/introspection (discovery)"),
        format!("{i}/token/revocation (discovery)"),
        format!("{i}/device/auth (discovery)"),
        format!("{i} (flag)"),
    ] {
        assert!(shown.contains(&line), "no {line:?} in:\n{shown}");
    }
    d.login(&idp, "up");
    let token = stdout(&d.tokenctl(&["token", "up"]));
    assert!(idp.introspect(token.trim()), "the server accepts the token");
}

#[test]
fn explicit_urls_override_discovery_and_show_as_flag() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let token_url = idp.token_url();
    let introspection = format!("{}/token/introspection", idp.issuer);
    assert_ok(&add_with_issuer(
        &d,
        "up",
        &idp.issuer,
        &[
            "--token-url",
            &token_url,
            "--introspection-url",
            &introspection,
        ],
    ));
    let s = spec(&d, "up");
    let src = sources(&s);
    assert_eq!(src["token"], "flag");
    assert_eq!(src["introspection"], "flag");
    assert_eq!(src["authorization"], "discovery");
    let shown = stdout(&d.tokenctl(&["show", "up"]));
    assert!(shown.contains(&format!("{token_url} (flag)")), "{shown}");
    d.login(&idp, "up");
}

#[test]
fn an_issuer_that_differs_from_the_document_is_refused_naming_both() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let with_slash = format!("{}/", idp.issuer);
    let out = add_with_issuer(&d, "up", &with_slash, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{with_slash:?}")) && err.contains(&format!("{:?}", idp.issuer)),
        "{err}"
    );
    assert!(err.contains("RFC 8414"), "{err}");
    assert_code(&d.tokenctl(&["show", "up"]), 5);
}

#[test]
fn an_issuer_without_a_document_names_every_url_tried() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let issuer = format!("{}/nowhere", idp.issuer);
    let out = add_with_issuer(&d, "up", &issuer, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    for url in [
        format!("{issuer}/.well-known/openid-configuration"),
        format!(
            "{}/.well-known/oauth-authorization-server/nowhere",
            idp.issuer
        ),
        format!("{}/.well-known/openid-configuration/nowhere", idp.issuer),
        format!("{issuer}/.well-known/oauth-authorization-server"),
    ] {
        assert!(err.contains(&url), "{url} not named in: {err}");
    }
    assert!(err.contains("404"), "{err}");
}

#[test]
fn the_rfc_8414_document_is_used_when_openid_configuration_is_missing() {
    let idp = OidcServer::start_with(60, &[("DISCOVERY", "rfc8414")]);
    let d = Daemon::start();
    assert_ok(&add_with_issuer(&d, "up", &idp.issuer, &[]));
    let s = spec(&d, "up");
    assert_eq!(s["token_url"], idp.token_url());
    assert_eq!(sources(&s)["token"], "discovery");
    assert!(
        d.log_text()
            .contains("/.well-known/oauth-authorization-server"),
        "the log names the document used:\n{}",
        d.log_text()
    );
    d.login(&idp, "up");
}

#[test]
fn a_cleartext_issuer_is_refused_before_any_request() {
    let d = Daemon::start();
    let out = add_with_issuer(&d, "up", "http://example.invalid", &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    // A fetch would have failed to resolve the name instead.
    assert!(
        err.contains("https://") && err.contains("the issuer"),
        "{err}"
    );
    assert!(!err.contains("cannot fetch"), "{err}");
    assert!(!d.log_text().contains("endpoints discovered"));
}

#[test]
fn client_credentials_with_an_issuer_get_a_token() {
    let idp = OidcServer::start(60);
    let d = Daemon::start();
    let out = d.tokenctl_stdin(
        &[
            "add",
            "client-credentials",
            "cc",
            "--issuer",
            &idp.issuer,
            "--client-id",
            "tokend-cc",
        ],
        "tokend-cc-secret",
    );
    assert_ok(&out);
    let s = spec(&d, "cc");
    assert_eq!(s["token_url"], idp.token_url());
    let src = sources(&s);
    assert_eq!(src["token"], "discovery");
    assert!(
        !src.contains_key("authorization"),
        "no authorize step: {src:?}"
    );
    let out = d.tokenctl(&["token", "cc"]);
    assert_ok(&out);
    assert!(idp.introspect(stdout(&out).trim()));
}

#[test]
fn a_preset_issuer_is_discovered_and_preset_urls_fill_only_the_gaps() {
    // Without the device flow, the document lists no device authorization
    // endpoint: the gap the preset fills.
    let idp = OidcServer::start_with(60, &[("DEVICE_FLOW", "0")]);
    let host = idp.issuer.trim_start_matches("http://").to_string();
    let d = Daemon::start_with(Options {
        config: Some(
            "[presets.local]\n\
             issuer = \"http://{host}\"\n\
             revocation_url = \"http://{host}/not-this-one\"\n\
             device_authorization_url = \"http://{host}/device\"\n"
                .into(),
        ),
        ..Default::default()
    });
    let var = format!("host={host}");
    let out = d.tokenctl_stdin(
        &[
            "add",
            "oauth2",
            "up",
            "--preset",
            "local",
            "--preset-var",
            &var,
            "--client-id",
            "tokend-test",
            "--scope",
            "openid",
        ],
        "tokend-test-secret",
    );
    assert_ok(&out);
    let s = spec(&d, "up");
    assert_eq!(
        s["endpoints"]["revocation_url"],
        format!("{}/token/revocation", idp.issuer),
        "discovery beats the preset"
    );
    assert_eq!(
        s["endpoints"]["device_authorization_url"],
        format!("{}/device", idp.issuer),
        "the preset fills what the document lacks"
    );
    assert_eq!(
        sources(&s),
        map(&[
            ("issuer", "preset"),
            ("authorization", "discovery"),
            ("token", "discovery"),
            ("introspection", "discovery"),
            ("revocation", "discovery"),
            ("device_authorization", "preset"),
        ])
    );
}

/// A one-document HTTP server on loopback: `document(base)` at `path`, 404
/// for everything else. Returns its base URL and the paths requested.
fn metadata_server(
    path: &'static str,
    document: impl Fn(&str) -> String + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requested = Arc::new(Mutex::new(Vec::new()));
    let (seen, body) = (requested.clone(), document(&base));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(target.clone());
            let (status, text) = if target == path {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "{}")
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (base, requested)
}

#[test]
fn an_issuer_with_a_path_is_found_at_the_rfc_8414_inserted_url() {
    let (base, requested) = metadata_server(
        "/.well-known/oauth-authorization-server/tenant",
        |base| {
            format!(
                r#"{{"issuer":"{base}/tenant","token_endpoint":"{base}/tenant/token","grant_types_supported":["client_credentials"]}}"#
            )
        },
    );
    let d = Daemon::start();
    let issuer = format!("{base}/tenant");
    let out = d.tokenctl_stdin(
        &[
            "add",
            "client-credentials",
            "cc",
            "--issuer",
            &issuer,
            "--client-id",
            "c",
        ],
        "secret",
    );
    assert_ok(&out);
    assert_eq!(spec(&d, "cc")["token_url"], format!("{issuer}/token"));
    let requested = requested.lock().unwrap().clone();
    assert_eq!(
        requested[..2],
        [
            "/tenant/.well-known/openid-configuration".to_string(),
            "/.well-known/oauth-authorization-server/tenant".to_string(),
        ],
        "OpenID Discovery's URL first, then RFC 8414's"
    );
}
