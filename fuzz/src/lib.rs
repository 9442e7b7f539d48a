//! Helpers shared by the fuzz targets and the seed writer: the dispatch
//! target's input format, the rewrite that keeps fuzzed requests off the
//! network, and a few well-formed inputs to start the corpus from.

use tokend::config::Config;
use tokend_proto::{
    AddCredential, AddKind, AuditQuery, ClientAuth, EditCredential, NamedPrincipal, OAuth2Request,
    Principal, Request, Secret, TokenUse, write_frame,
};

/// Where every URL the daemon might contact is pointed: the discard port on
/// loopback, which nothing listens on, so each attempt fails at once.
pub const CLOSED_URL: &str = "http://127.0.0.1:9/fuzz";

/// One step of a dispatch input: `[peer selector byte][frame]`, where the
/// frame is the wire format (4-byte BE length, bincode body). Odd selector
/// bytes mean the unprivileged peer, even ones the admin.
pub fn step(as_user: bool, request: &Request) -> Vec<u8> {
    let mut out = vec![u8::from(as_user)];
    write_frame(&mut out, request).expect("seed requests encode");
    out
}

/// Rewrites every URL the daemon would contact (check, token, authorize and
/// introspection URLs, the issuer, and anything a preset would fill in) to
/// [`CLOSED_URL`], unless it already points there or is not an http(s) URL
/// (then the daemon refuses it and contacts nothing). Fuzzing must never send traffic beyond 127.0.0.1.
pub fn keep_local(request: &mut Request, config: &Config) {
    let Request::Add(add) = request else {
        return;
    };
    match &mut add.kind {
        AddKind::Bearer { check_url, preset } => {
            local(check_url);
            if check_url.is_none()
                && preset
                    .as_deref()
                    .is_some_and(|p| tokend::config::preset::bearer_check_url(p).is_ok())
            {
                *check_url = Some(CLOSED_URL.into());
            }
        }
        AddKind::OAuth2(req) | AddKind::ClientCredentials(req) => {
            let preset = req
                .preset
                .as_deref()
                .and_then(|p| tokend::config::preset::lookup(config, p).ok());
            if let Some(preset) = preset {
                // A known preset fills in remote endpoints (or templates
                // whose host comes from fuzzed variables): override every
                // one a flag can, and its issuer, which adding would fetch.
                req.auth_url = Some(CLOSED_URL.into());
                req.token_url = Some(CLOSED_URL.into());
                req.introspection_url = Some(CLOSED_URL.into());
                req.device_authorization_url = Some(CLOSED_URL.into());
                if preset.issuer.is_some() {
                    req.issuer = Some(CLOSED_URL.into());
                }
            }
            local(&mut req.auth_url);
            local(&mut req.token_url);
            local(&mut req.introspection_url);
            local(&mut req.device_authorization_url);
            // Discovery fetches from the issuer when the credential is added.
            local(&mut req.issuer);
        }
    }
}

fn local(url: &mut Option<String>) {
    let Some(text) = url.as_deref() else {
        return;
    };
    let Ok(parsed) = url::Url::parse(text) else {
        return;
    };
    let web = matches!(parsed.scheme(), "http" | "https");
    let is_closed_port = parsed.host_str() == Some("127.0.0.1") && parsed.port() == Some(9);
    if web && !is_closed_port {
        *url = Some(CLOSED_URL.into());
    }
}

/// Well-formed inputs covering every request kind, to start the corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let oauth = |client_id: &str| OAuth2Request {
        auth_url: Some(CLOSED_URL.into()),
        token_url: Some(CLOSED_URL.into()),
        client_id: client_id.into(),
        scopes: vec!["read".into()],
        redirect_uri: Some("http://127.0.0.1:1/callback".into()),
        client_auth: Some(ClientAuth::Basic),
        pkce: true,
        extra_params: vec![("audience".into(), "api".into())],
        device_authorization_url: Some(CLOSED_URL.into()),
        ..Default::default()
    };
    let add = |name: &str, kind: AddKind, secret: &str| {
        Request::Add(Box::new(AddCredential {
            name: name.into(),
            description: "fuzz".into(),
            kind,
            secret: Secret::new(secret),
            replace: true,
            git_hosts: vec!["git.example.com".into()],
            upstream: Default::default(),
        }))
    };
    let name = |n: &str| n.to_string();
    let requests = [
        add(
            "b",
            AddKind::Bearer {
                check_url: Some(CLOSED_URL.into()),
                preset: None,
            },
            "tok",
        ),
        add("o", AddKind::OAuth2(oauth("cid")), "secret"),
        add("c", AddKind::ClientCredentials(oauth("cc")), "secret"),
        Request::Token {
            name: name("b"),
            min_valid_secs: 30,
        },
        Request::Reject {
            name: name("c"),
            token: Some(Secret::new("old")),
            rejected_by: Some("git.example.com".into()),
        },
        Request::TokenFor {
            name: name("b"),
            min_valid_secs: 0,
            purpose: TokenUse::Git,
        },
        Request::Audit(AuditQuery {
            credential: Some(name("b")),
            since: Some(0),
            user: Some("0".into()),
            limit: 10,
        }),
        Request::Audit(AuditQuery::default()),
        Request::Refresh { name: name("c") },
        Request::Check { name: name("b") },
        Request::Show { name: name("o") },
        Request::List,
        Request::Status,
        Request::Allow {
            name: name("b"),
            principal: Principal::User(65534),
        },
        Request::Deny {
            name: name("b"),
            principal: Principal::Group(65534),
        },
        Request::AllowNamed {
            name: name("b"),
            principal: NamedPrincipal::User("root".into()),
        },
        Request::DenyNamed {
            name: name("b"),
            principal: NamedPrincipal::Group("no-such-group".into()),
        },
        Request::Edit(Box::new(EditCredential {
            name: name("b"),
            description: Some("edited".into()),
            api_url: Some(Some(CLOSED_URL.into())),
            retry_on: Some(Some(vec![401, 403])),
            check_url: Some(None),
            scopes: None,
            git_hosts: Some(vec!["git.example.com".into()]),
            warn_before_secs: None,
        })),
        Request::LoginStart {
            name: name("o"),
            redirect_uri: None,
        },
        Request::LoginFinish {
            login_id: name("nope"),
            redirect_url: "http://127.0.0.1:1/callback?code=x&state=y".into(),
        },
        Request::DeviceLoginStart { name: name("o") },
        Request::DeviceLoginFinish {
            login_id: name("nope"),
            timeout_secs: 1,
        },
        Request::Remove { name: name("c") },
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .flat_map(|r| [step(false, r), step(true, r)])
        .collect();
    // One input that builds state and then uses it.
    seeds.push(requests.iter().flat_map(|r| step(false, r)).collect());
    seeds
}
