//! The authorization-code login's hardening (docs/DESIGN.md §3): a redirect without
//! the login's `state` changes nothing, a login completes only into the
//! credential it started for, removing a credential cancels its logins, and
//! `LoginFinish` answers within a bounded time.

// Shared with the lifecycle tests, which use the parts this file does not.
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use support::world::{World, row, world};
use tokend::config::Config;
use tokend::error::Error;
use tokend::login;
use tokend::state::credential::Credential;
use tokend_proto::{ClientAuth, CredentialSpec, CredentialState, OAuth2Spec};

const REDIRECT: &str = "http://127.0.0.1:5000/callback";

async fn login_world() -> World {
    let mut config = Config::default();
    config.refresh.http_timeout_secs = 1;
    world(3600, config).await
}

impl World {
    /// Adds (or re-adds, as `add --replace` would) an oauth2 credential that
    /// needs a login: a new `Arc` under `name` each time.
    fn add(&self, name: &str) -> Arc<Credential> {
        let spec = CredentialSpec::OAuth2(Box::new(OAuth2Spec {
            auth_url: "http://127.0.0.1:9/auth".into(),
            token_url: self.fake.url.clone(),
            client_id: "cid".into(),
            scopes: vec![],
            redirect_uri: None,
            client_auth: ClientAuth::Post,
            pkce: true,
            extra_params: vec![],
            refresh_margin_secs: None,
            refresh_warn_before_secs: None,
            endpoints: Default::default(),
            git_hosts: Vec::new(),
            upstream: None,
        }));
        self.register(row(name, spec, CredentialState::NeedsLogin))
    }

    /// Starts a login for `cred`: its id and its `state`.
    fn start(&self, cred: &Arc<Credential>) -> (String, String) {
        let challenge = login::start(&self.shared, cred, Some(REDIRECT.into()), 0).unwrap();
        let url = url::Url::parse(&challenge.authorize_url).unwrap();
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .expect("the authorize URL carries a state");
        (challenge.login_id, state)
    }

    async fn finish(&self, login_id: &str, query: &str) -> Result<String, Error> {
        login::finish(&self.shared, login_id, &format!("{REDIRECT}?{query}"), 0).await
    }
}

#[tokio::test]
async fn an_error_redirect_without_the_state_leaves_the_login_usable() {
    let w = login_world().await;
    let cred = w.add("up");
    let (id, state) = w.start(&cred);
    for stray in [
        "error=access_denied".to_string(),
        "error=access_denied&state=forged".to_string(),
        "code=c&state=forged".to_string(),
    ] {
        let Err(Error::InvalidArgument(message)) = w.finish(&id, &stray).await else {
            panic!("{stray}: accepted");
        };
        assert!(message.contains("state"), "{stray}: {message}");
        assert!(!message.contains(&state), "the state stays secret");
    }
    assert_eq!(w.shared.logins.len(), 1, "the login is still pending");
    // The real answer (here a refusal with the right state) still ends it.
    let Err(Error::Provider(message)) = w
        .finish(&id, &format!("error=access_denied&state={state}"))
        .await
    else {
        panic!("the provider's refusal was not reported");
    };
    assert!(message.contains("access_denied"), "{message}");
    assert!(w.shared.logins.is_empty());
}

#[tokio::test]
async fn cancel_drops_every_pending_login_of_that_credential_only() {
    let w = login_world().await;
    let (a, b) = (w.add("a"), w.add("b"));
    let (a1, state) = w.start(&a);
    w.start(&a);
    w.start(&b);
    assert_eq!(w.shared.logins.cancel("a"), 2);
    assert_eq!(w.shared.logins.cancel("a"), 0);
    assert_eq!(w.shared.logins.len(), 1, "b's login is untouched");
    let Err(Error::InvalidArgument(message)) =
        w.finish(&a1, &format!("code=c&state={state}")).await
    else {
        panic!("a cancelled login completed");
    };
    assert!(message.contains("no such login"), "{message}");
    assert_eq!(w.fake.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_login_cannot_complete_into_a_credential_added_again_under_its_name() {
    let w = login_world().await;
    let old = w.add("up");
    let (id, state) = w.start(&old);
    // Removed and added again (or replaced), without the cancel call.
    w.shared.registry.remove("up");
    w.add("up");
    let Err(Error::InvalidArgument(message)) =
        w.finish(&id, &format!("code=c&state={state}")).await
    else {
        panic!("the code went to the new credential");
    };
    assert!(
        message.contains("credential \"up\" was removed or replaced since this login started")
            && message.contains("tokenctl login up"),
        "{message}"
    );
    assert_eq!(
        w.fake.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the code was never sent to the new credential's token URL"
    );
    drop(old);
    let (id, state) = w.start(&w.shared.registry.get("up").unwrap());
    w.shared.registry.remove("up");
    let Err(Error::InvalidArgument(message)) =
        w.finish(&id, &format!("code=c&state={state}")).await
    else {
        panic!("a removed credential was logged in");
    };
    assert!(message.contains("removed or replaced"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn login_finish_answers_in_bounded_time_while_a_refresh_holds_the_lock() {
    let w = login_world().await;
    let cred = w.add("up");
    let (id, state) = w.start(&cred);
    let held = cred.refresh_lock.lock().await;
    let started = tokio::time::Instant::now();
    let Err(Error::Timeout(message)) = w.finish(&id, &format!("code=c&state={state}")).await else {
        panic!("finish did not time out");
    };
    let waited = started.elapsed();
    assert!(
        waited <= std::time::Duration::from_secs(1 + 10),
        "http_timeout_secs + 10 s at most, waited {waited:?}"
    );
    assert!(message.contains("\"up\""), "{message}");
    assert_eq!(
        w.fake.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the provider was never contacted"
    );
    drop(held);
}
