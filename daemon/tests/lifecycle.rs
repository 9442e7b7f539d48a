//! The token lifecycle (docs/DESIGN.md §4) against an in-repo fake provider with
//! rotation, reuse detection, fault injection and a shiftable clock.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::fake_provider::Fault;
use support::world::{World, row, world};
use tokend::config::Config;
use tokend::error::Error;
use tokend::state::credential::Credential;
use tokend::token;
use tokend::token::Forcer;
use tokend_proto::{
    ClientAuth, ClientCredentialsSpec, CredentialSpec, CredentialState, Endpoints, OAuth2Spec,
    Secret,
};

fn quick_config() -> Config {
    let mut c = Config::default();
    c.refresh.http_timeout_secs = 1;
    c.refresh.wait_secs = 5;
    c
}

impl World {
    /// An oauth2 credential holding `at-0` (expiring in `expires_in` s) and a live refresh token.
    fn oauth(&self, name: &str, expires_in: i64) -> Arc<Credential> {
        self.oauth_with(name, expires_in, false)
    }

    /// The same, with the provider's introspection endpoint when `introspect`.
    fn oauth_with(&self, name: &str, expires_in: i64, introspect: bool) -> Arc<Credential> {
        let endpoints = Endpoints {
            introspection_url: introspect.then(|| self.fake.introspection_url()),
            ..Endpoints::default()
        };
        let spec = CredentialSpec::OAuth2(Box::new(OAuth2Spec {
            auth_url: "http://127.0.0.1:9/auth".into(),
            token_url: self.fake.url.clone(),
            client_id: "cid".into(),
            scopes: vec![],
            redirect_uri: None,
            client_auth: ClientAuth::Post,
            pkce: false,
            extra_params: vec![],
            refresh_margin_secs: None,
            refresh_warn_before_secs: None,
            endpoints,
            git_hosts: Vec::new(),
            upstream: None,
        }));
        let rt = self.fake.grant();
        self.insert(
            name,
            spec,
            Some("at-0"),
            Some(&rt),
            Some(self.shared.clock.now() + expires_in),
        )
    }

    fn insert(
        &self,
        name: &str,
        spec: CredentialSpec,
        at: Option<&str>,
        rt: Option<&str>,
        expires_at: Option<i64>,
    ) -> Arc<Credential> {
        let mut stored = row(name, spec, CredentialState::Ready);
        stored.access_token = at.map(Secret::new);
        stored.refresh_token = rt.map(Secret::new);
        stored.generation = 1;
        stored.expires_at = expires_at;
        let cred = self.register(stored);
        // As at a start: the expiry is anchored on the monotonic clock too.
        token::schedule_loaded(&self.shared);
        cred
    }

    /// Lets the backoff of the last failure pass (both clocks): the
    /// longest is `max_backoff_secs` (300) plus its jitter.
    fn wait_out_backoff(&self) {
        self.shared.clock.advance(400_000);
    }

    /// A refresh of `cred` in a task of its own, from the attempts seen now.
    fn spawn_refresh(
        &self,
        cred: &Arc<Credential>,
        trigger: token::Trigger,
    ) -> tokio::task::JoinHandle<Result<(), Error>> {
        let attempts = cred.live().attempts;
        tokio::spawn(token::refresh(
            self.shared.clone(),
            cred.clone(),
            attempts,
            trigger,
        ))
    }

    /// The next refresh of `cred`, which first saves the token set the
    /// store refused: it must go through and leave nothing pending.
    async fn save_pending(&self, cred: &Arc<Credential>) {
        let attempts = cred.live().attempts;
        token::refresh(
            self.shared.clone(),
            cred.clone(),
            attempts,
            token::Trigger::Demand { need_ms: 0 },
        )
        .await
        .unwrap();
        assert!(cred.live().journal.unsaved().is_none());
    }

    fn reuse(&self) -> usize {
        self.fake.state.lock().unwrap().reuse_detected
    }

    async fn token(&self, cred: &Arc<Credential>) -> Result<String, Error> {
        token::token(&self.shared, cred, 0)
            .await
            .map(|t| t.token.expose().to_string())
    }
}

#[tokio::test]
async fn a_valid_token_is_served_without_contacting_the_provider() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    assert_eq!(w.token(&cred).await.unwrap(), "at-0");
    assert_eq!(w.fake.refreshes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_at_expiry_cause_exactly_one_refresh() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", -1);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (shared, cred) = (w.shared.clone(), cred.clone());
            tokio::spawn(async move {
                token::token(&shared, &cred, 0)
                    .await
                    .map(|t| t.token.expose().to_string())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap(),
            "at-2",
            "everyone gets the one new token"
        );
    }
    assert_eq!(w.fake.refreshes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_is_never_sent_twice() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    for _ in 0..20 {
        let forced = {
            let (shared, cred) = (w.shared.clone(), cred.clone());
            tokio::spawn(async move { token::force_refresh(&shared, &cred, Forcer::Admin).await })
        };
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let (shared, cred) = (w.shared.clone(), cred.clone());
                tokio::spawn(async move { token::token(&shared, &cred, 0).await })
            })
            .collect();
        forced.await.unwrap().unwrap();
        for r in readers {
            r.await.unwrap().unwrap();
        }
    }
    let s = w.fake.state.lock().unwrap();
    assert_eq!(s.reuse_detected, 0);
    assert!(!s.revoked, "the grant is still alive");
    assert_eq!(s.used_refresh.len(), 20);
}

#[tokio::test]
async fn the_new_pair_is_committed_before_it_is_served() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", -1);
    let token = w.token(&cred).await.unwrap();
    let stored = w.shared.store.load_all().unwrap();
    assert_eq!(stored[0].access_token.as_ref().unwrap().expose(), token);
    assert_eq!(stored[0].refresh_token.as_ref().unwrap().expose(), "rt-2");
}

#[tokio::test]
async fn transient_errors_keep_the_valid_token_and_back_off() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    for fault in [
        Fault::Status(503, "temporarily_unavailable"),
        Fault::Status(500, "server_error"),
        Fault::RetryAfter(2),
    ] {
        w.wait_out_backoff();
        w.fake.fault(fault.clone());
        let now = w.shared.clock.now_ms();
        let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Provider(_)), "{fault:?}: {err}");
        assert_eq!(
            w.token(&cred).await.unwrap(),
            "at-0",
            "{fault:?}: still serving the held token"
        );
        assert!(
            w.shared.scheduler.due_of("a").unwrap() >= now + 500,
            "{fault:?}: a retry is scheduled later"
        );
        assert_eq!(cred.live().state, CredentialState::Ready);
    }
    // And it recovers on its own terms: the next attempt succeeds.
    w.wait_out_backoff();
    token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap();
    assert_eq!(w.token(&cred).await.unwrap(), "at-2");
    assert_eq!(w.fake.state.lock().unwrap().reuse_detected, 0);
}

#[tokio::test]
async fn a_user_forces_one_provider_call_per_interval_and_admins_are_not_held_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    let calls = || w.fake.requests.load(SeqCst);
    let before = calls();
    // The first forced refresh by a user who is not an admin goes through.
    let message = token::force_refresh(&w.shared, &cred, Forcer::User)
        .await
        .unwrap();
    assert!(message.starts_with("refreshed"), "{message}");
    assert_eq!(calls(), before + 1);
    // Within refresh.min_forced_interval_secs (30 by default) a refresh,
    // and a reject naming no token, answer with the state and send nothing.
    for _ in 0..5 {
        let message = token::force_refresh(&w.shared, &cred, Forcer::User)
            .await
            .unwrap();
        assert!(message.contains("not refreshing"), "{message}");
        assert!(message.contains("it is ready"), "{message}");
        let message = token::reject(&w.shared, &cred, None, Forcer::User, None)
            .await
            .unwrap();
        assert!(message.contains("not refreshing"), "{message}");
    }
    assert_eq!(calls(), before + 1, "no call within the interval");
    // A reject naming the held token is paced too (and so is the owner's):
    // a loop of `token` then `reject` of the token just served would
    // otherwise be a refresh per turn.
    let held = Secret::new(w.token(&cred).await.unwrap());
    for forcer in [Forcer::User, Forcer::Owner] {
        let message = token::reject(&w.shared, &cred, Some(&held), forcer, None)
            .await
            .unwrap();
        assert!(message.contains("not refreshing"), "{message}");
    }
    assert_eq!(calls(), before + 1);
    // An admin is never held back, and its call counts for the users.
    token::reject(&w.shared, &cred, Some(&held), Forcer::Admin, None)
        .await
        .unwrap();
    assert_eq!(calls(), before + 2);
    let message = token::force_refresh(&w.shared, &cred, Forcer::User)
        .await
        .unwrap();
    assert!(message.contains("not refreshing"), "{message}");
    assert_eq!(calls(), before + 2);
    // Once the interval is over, a user's refresh goes through again.
    w.shared.clock.advance(31_000);
    let message = token::force_refresh(&w.shared, &cred, Forcer::User)
        .await
        .unwrap();
    assert!(message.starts_with("refreshed"), "{message}");
    assert_eq!(calls(), before + 3);
    assert_eq!(w.fake.state.lock().unwrap().reuse_detected, 0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    w.fake.fault(Fault::RetryAfter(120));
    let now = w.shared.clock.now_ms();
    token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap_err();
    assert!(w.shared.scheduler.due_of("a").unwrap() >= now + 120_000);
}

#[tokio::test]
async fn backoff_grows_and_is_capped() {
    let mut config = quick_config();
    config.refresh.min_backoff_secs = 2;
    config.refresh.max_backoff_secs = 10;
    let w = world(3600, config).await;
    let cred = w.oauth("a", 3600);
    // The failure happens somewhere between `before` and `after`, so the
    // delay it scheduled lies between `due - after` and `due - before`.
    let mut delays = Vec::new();
    for _ in 0..6 {
        w.shared.clock.advance(20_000);
        w.fake.fault(Fault::Status(503, "x"));
        let before = w.shared.clock.now_ms();
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap_err();
        let after = w.shared.clock.now_ms();
        let due = w.shared.scheduler.due_of("a").unwrap();
        delays.push((due - after, due - before));
    }
    let within =
        |(shortest, longest): (i64, i64), lo: i64, hi: i64| longest >= lo && shortest <= hi;
    assert!(within(delays[0], 1_600, 2_400), "{delays:?}");
    assert!(within(delays[2], 6_400, 9_600), "{delays:?}");
    assert!(within(delays[5], 8_000, 12_000), "capped: {delays:?}");
}

#[tokio::test]
async fn invalid_grant_needs_login_stops_retrying_and_notifies_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("notify.log");
    let mut config = quick_config();
    config.notify_command = Some(format!(
        "echo \"$TOKEND_CREDENTIAL $TOKEND_STATE\" >> {}",
        log.display()
    ));
    let w = world(3600, config).await;
    let cred = w.oauth("a", -1);
    w.fake.fault(Fault::Status(400, "invalid_grant"));
    let err = w.token(&cred).await.unwrap_err();
    assert!(err.to_string().contains("tokenctl login a"), "{err}");
    assert_eq!(cred.live().state, CredentialState::NeedsLogin);
    assert!(
        cred.live().refresh_token.is_none(),
        "the dead grant is dropped"
    );
    let before = w.fake.refreshes();
    assert!(matches!(w.token(&cred).await, Err(Error::NotUsable { .. })));
    assert_eq!(w.fake.refreshes(), before, "no further attempts");
    assert!(w.shared.scheduler.due_of("a").is_none());
    for _ in 0..100 {
        if std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a needs-login\n");
    let stored = w.shared.store.load_all().unwrap();
    assert_eq!(
        stored[0].state,
        CredentialState::NeedsLogin,
        "the state survives a restart"
    );
}

#[tokio::test]
async fn reject_of_a_replaced_token_is_a_no_op() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    let message = token::reject(
        &w.shared,
        &cred,
        Some(&Secret::new("at-0")),
        Forcer::Admin,
        None,
    )
    .await
    .unwrap();
    assert!(message.contains("refreshed"), "{message}");
    assert_eq!(w.fake.refreshes(), 1);
    let message = token::reject(
        &w.shared,
        &cred,
        Some(&Secret::new("at-0")),
        Forcer::Admin,
        None,
    )
    .await
    .unwrap();
    assert!(message.contains("already replaced"), "{message}");
    assert_eq!(w.fake.refreshes(), 1);
}

#[tokio::test]
async fn a_clock_step_past_expiry_never_hands_out_the_expired_token() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    w.shared.clock.shift(2 * 3600 * 1000);
    assert_eq!(w.token(&cred).await.unwrap(), "at-2");
    assert_eq!(w.fake.refreshes(), 1);
}

#[tokio::test]
async fn min_valid_beyond_the_token_lifetime_is_refused_after_one_try() {
    let w = world(60, quick_config()).await;
    let cred = w.oauth("a", 30);
    let err = token::token(&w.shared, &cred, 3600).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(w.fake.refreshes(), 1);
    // The provider's tokens are known to last 60 s now: asking again
    // spends no refresh token on a token the client would not take.
    for min_valid in [3600, 61, 60] {
        let err = token::token(&w.shared, &cred, min_valid).await.unwrap_err();
        assert!(err.to_string().contains("last 60 s"), "{err}");
    }
    assert_eq!(w.fake.refreshes(), 1);
    assert_eq!(
        token::token(&w.shared, &cred, 10)
            .await
            .unwrap()
            .token
            .expose(),
        "at-2"
    );
}

#[tokio::test]
async fn client_credentials_are_fetched_then_renewed_ahead_of_expiry() {
    let w = world(300, quick_config()).await;
    let spec = CredentialSpec::ClientCredentials(Box::new(ClientCredentialsSpec {
        token_url: w.fake.url.clone(),
        client_id: "cc".into(),
        scopes: vec!["read".into()],
        client_auth: ClientAuth::Basic,
        refresh_margin_secs: None,
        refresh_warn_before_secs: None,
        endpoints: Default::default(),
        git_hosts: Vec::new(),
        upstream: None,
    }));
    let cred = w.insert("cc", spec, None, None, None);
    assert_eq!(w.token(&cred).await.unwrap(), "at-1");
    let due = w.shared.scheduler.due_of("cc").unwrap();
    let now = w.shared.clock.now_ms();
    assert!(
        due > now + 150_000 && due < now + 300_000,
        "renewal planned ahead of expiry: {}",
        due - now
    );
    w.shared.clock.shift(299_500);
    assert_eq!(
        w.token(&cred).await.unwrap(),
        "at-2",
        "an almost expired token is renewed first"
    );
    assert_eq!(
        w.fake.state.lock().unwrap().grants,
        vec!["client_credentials", "client_credentials"]
    );
}

/// Every way a refresh can end without a known outcome.
fn unanswered() -> [Fault; 5] {
    [
        Fault::Drop,
        Fault::Stall(Duration::from_secs(2)),
        Fault::Lost,
        Fault::Garbage,
        // A gateway that lost the provider's answer.
        Fault::Body(504, r#"{"error":"gateway_timeout"}"#),
    ]
}

#[tokio::test]
async fn a_2xx_without_a_servable_token_spends_the_refresh_token_sent() {
    let w = world(3600, quick_config()).await;
    // A DPoP token and a new refresh token: the grant goes on with it.
    let cred = w.oauth_with("dpop", 3600, true);
    let sent = cred.live().refresh_token.unwrap();
    w.fake.fault(Fault::Body(
        200,
        r#"{"access_token":"x","token_type":"DPoP","refresh_token":"rt-new","expires_in":60}"#,
    ));
    let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DPoP"), "{err}");
    assert_eq!(cred.live().state, CredentialState::Failing);
    assert_eq!(cred.live().refresh_token.unwrap().expose(), "rt-new");
    let stored = w
        .shared
        .store
        .load_named(&["dpop".into()])
        .unwrap()
        .remove(0);
    assert_eq!(stored.refresh_token.unwrap().expose(), "rt-new");
    assert_eq!(stored.state, CredentialState::Failing);
    assert!(w.token(&cred).await.is_err(), "its token is not served");
    // Forced refreshes send the new refresh token, never the one spent.
    let before = w.fake.refreshes();
    let _ = token::force_refresh(&w.shared, &cred, Forcer::Admin).await;
    w.wait_out_backoff();
    let _ = token::force_refresh(&w.shared, &cred, Forcer::Admin).await;
    assert!(w.fake.refreshes() > before);
    assert_eq!(
        w.fake.times_sent(sent.expose()),
        1,
        "the spent refresh token was sent again"
    );
    assert_eq!(w.fake.times_sent("rt-new"), 1, "the new one is used");

    // Nothing usable and no refresh token: a login, nothing sent again.
    let cred = w.oauth_with("empty", 3600, true);
    let sent = cred.live().refresh_token.unwrap();
    w.fake.fault(Fault::Body(200, r#"{"token_type":"Bearer"}"#));
    let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spent"), "{err}");
    assert_eq!(cred.live().state, CredentialState::NeedsLogin);
    let before = w.fake.refreshes();
    assert!(
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .is_err()
    );
    assert_eq!(w.fake.refreshes(), before, "nothing is sent after it");
    assert_eq!(w.fake.times_sent(sent.expose()), 1);
    assert_eq!(w.reuse(), 0);
}

#[tokio::test]
async fn without_introspection_an_unanswered_refresh_asks_for_a_login_and_keeps_serving() {
    let w = world(3600, quick_config()).await;
    for (i, fault) in unanswered().into_iter().enumerate() {
        let name = format!("c{i}");
        let cred = w.oauth(&name, 3600);
        w.fake.fault(fault.clone());
        let before = w.fake.refreshes();
        let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotUsable {
                    state: CredentialState::NeedsLogin,
                    ..
                }
            ),
            "{fault:?}: {err}"
        );
        assert!(err.to_string().contains("will not be sent again"), "{err}");
        assert_eq!(cred.live().state, CredentialState::NeedsLogin);
        assert!(
            cred.live().refresh_token.is_none(),
            "{fault:?}: never sent again"
        );
        assert_eq!(
            w.token(&cred).await.unwrap(),
            "at-0",
            "{fault:?}: still served"
        );
        let info = cred.info(w.shared.clock.now());
        assert!(info.reason.unwrap().contains("log in before then"));
        w.shared.clock.advance(3_600_000);
        assert!(w.token(&cred).await.is_err(), "expired now");
        assert_eq!(
            w.fake.refreshes(),
            before + 1,
            "{fault:?}: one request only"
        );
    }
    assert_eq!(w.reuse(), 0);
}

#[tokio::test]
async fn with_introspection_an_unanswered_refresh_is_retried_only_while_its_token_is_active() {
    let w = world(3600, quick_config()).await;
    for (i, fault) in unanswered().into_iter().enumerate() {
        let name = format!("c{i}");
        let cred = w.oauth_with(&name, 3600, true);
        w.fake.fault(fault.clone());
        let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("in doubt"), "{fault:?}: {err}");
        assert_eq!(cred.live().state, CredentialState::Ready);
        assert_eq!(w.token(&cred).await.unwrap(), "at-0");
        // Nothing is sent before the pause for an odd answer is over.
        let before = w.fake.refreshes();
        assert!(
            token::force_refresh(&w.shared, &cred, Forcer::Admin)
                .await
                .is_err()
        );
        assert_eq!(w.fake.refreshes(), before);
        w.shared.clock.advance(40_000);
        let result = token::force_refresh(&w.shared, &cred, Forcer::Admin).await;
        if matches!(fault, Fault::Lost) {
            // The provider had rotated: introspection says so, no reuse.
            let err = result.unwrap_err();
            assert!(err.to_string().contains("introspection says"), "{err}");
            assert_eq!(cred.live().state, CredentialState::NeedsLogin);
            assert_eq!(w.fake.refreshes(), before);
            assert_eq!(w.token(&cred).await.unwrap(), "at-0");
        } else {
            result.unwrap();
            assert_eq!(cred.live().state, CredentialState::Ready);
            assert_eq!(w.fake.refreshes(), before + 1);
        }
    }
    assert_eq!(w.reuse(), 0);
    assert_eq!(w.fake.state.lock().unwrap().introspections, 5);
}

#[tokio::test]
async fn a_refresh_cut_short_by_a_stop_is_settled_by_introspection_at_the_next_start() {
    let w = world(3600, quick_config()).await;
    let alive = w.oauth_with("alive", 10, true);
    let rotated = w.oauth_with("rotated", 3600, true);
    let blind = w.oauth("blind", 3600);
    for c in [&alive, &rotated, &blind] {
        w.shared
            .store
            .mark_refresh(
                &c.name,
                1,
                0,
                &tokend::store::NewMark {
                    at_ms: 5_000,
                    lease_ms: 1_000,
                },
            )
            .unwrap();
    }
    // The provider rotated "rotated"'s token (and "blind"'s may have been).
    w.fake.grant();
    let w2 = w.reopen();
    let get = |n: &str| w2.shared.registry.get(n).unwrap();
    // "alive": its token expired, so it is refreshed; introspection first.
    w2.shared.clock.advance(11_000);
    w2.fake.state.lock().unwrap().live_refresh =
        Some(alive.live().refresh_token.unwrap().expose().to_string());
    assert_eq!(w2.token(&get("alive")).await.unwrap(), "at-5");
    assert_eq!(w2.fake.state.lock().unwrap().introspected_active, 1);
    // "rotated": introspection says spent: a login, the old token served.
    let err = token::force_refresh(&w2.shared, &get("rotated"), Forcer::Admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("introspection says"), "{err}");
    assert_eq!(w2.token(&get("rotated")).await.unwrap(), "at-0");
    // "blind": no introspection endpoint: never sent again.
    let err = token::force_refresh(&w2.shared, &get("blind"), Forcer::Admin)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tokend stopped during a refresh"),
        "{err}"
    );
    assert_eq!(w2.token(&get("blind")).await.unwrap(), "at-0");
    assert_eq!(w2.reuse(), 0);
    let stored = w2.shared.store.load_all().unwrap();
    for s in stored {
        assert_eq!(s.fence.mark, None, "{}: the doubt is settled", s.name);
    }
}

#[tokio::test]
async fn a_store_that_refuses_writes_serves_the_new_pair_and_doubts_it_after_a_restart() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth_with("a", 3600, true);
    w.shared.store.refuse_writes(true).unwrap();
    // The journal cannot be written either: nothing is sent.
    assert!(
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .is_err()
    );
    assert_eq!(w.fake.refreshes(), 0);
    // Writable while the journal is written, full by the time the
    // provider's (slow) answer is to be committed.
    w.shared.store.refuse_writes(false).unwrap();
    w.wait_out_backoff();
    w.fake.fault(Fault::Slow(Duration::from_millis(300)));
    let task = w.spawn_refresh(&cred, token::Trigger::Demand { need_ms: 0 });
    while w.fake.refreshes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.shared.store.refuse_writes(true).unwrap();
    task.await.unwrap().unwrap();
    assert!(cred.live().journal.unsaved().is_some());
    assert_eq!(
        w.token(&cred).await.unwrap(),
        "at-2",
        "the new pair is served"
    );
    // A restart now: the stored refresh token is the spent one, in doubt,
    // and its journal mark's lease (made by `w`'s clock, 400 s ahead of the
    // new one's) runs out before anything happens to it.
    let w2 = w.reopen();
    let err = token::force_refresh(
        &w2.shared,
        &w2.shared.registry.get("a").unwrap(),
        Forcer::Admin,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
    w2.shared.clock.advance(410_000);
    let err = token::force_refresh(
        &w2.shared,
        &w2.shared.registry.get("a").unwrap(),
        Forcer::Admin,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("introspection says"), "{err}");
    assert_eq!(w2.reuse(), 0);
    // The first process's pending save, fenced by its mark's generation,
    // finds the row moved on (the restart settled the doubt: needs-login).
    // No pair was committed since the one it replaces and no refresh is in
    // flight, so its pair is still the newest (and the only live one): it
    // is written over the settled row, and the grant goes on.
    w.shared.store.refuse_writes(false).unwrap();
    w.save_pending(&cred).await;
    assert_eq!(cred.live().state, CredentialState::Ready);
    let stored = w.shared.store.load_all().unwrap();
    let a = stored.iter().find(|s| s.name == "a").unwrap();
    assert_eq!(a.state, CredentialState::Ready);
    assert_eq!(a.access_token.as_ref().unwrap().expose(), "at-2");
    assert_eq!(a.fence.mark, None);
    assert_eq!(w.reuse(), 0);
}

#[tokio::test]
async fn a_pair_the_store_refused_is_saved_once_it_takes_writes_again() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth_with("a", 3600, true);
    w.fake.fault(Fault::Slow(Duration::from_millis(300)));
    let task = w.spawn_refresh(&cred, token::Trigger::Demand { need_ms: 0 });
    while w.fake.refreshes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.shared.store.refuse_writes(true).unwrap();
    task.await.unwrap().unwrap();
    assert!(cred.live().journal.unsaved().is_some());
    assert_eq!(w.token(&cred).await.unwrap(), "at-2");
    w.shared.store.refuse_writes(false).unwrap();
    w.save_pending(&cred).await;
    let a = w.shared.store.load_named(&["a".into()]).unwrap().remove(0);
    assert_eq!(a.access_token.as_ref().unwrap().expose(), "at-2");
    assert_eq!(a.refresh_token.as_ref().unwrap().expose(), "rt-2");
    assert_eq!(a.fence.mark, None);
    assert_eq!(w.reuse(), 0);
}

#[tokio::test]
async fn a_backwards_clock_step_serves_no_expired_token() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 100);
    w.shared.clock.shift(-3_600_000);
    assert_eq!(w.token(&cred).await.unwrap(), "at-0");
    // 101 s pass: the wall clock still says 3,500 s to go; it is expired.
    w.shared.clock.advance(101_000);
    assert_eq!(w.token(&cred).await.unwrap(), "at-2");
}

#[tokio::test]
async fn a_backwards_clock_step_does_not_delay_the_scheduled_refresh() {
    let w = world(3, quick_config()).await;
    let cred = w.oauth("a", 3);
    token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tokend::token::refresher::run(w.shared.clone(), rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.shared.clock.shift(-3_600_000);
    let before = w.fake.refreshes();
    for _ in 0..150 {
        if w.fake.refreshes() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        w.fake.refreshes() > before,
        "refreshed on time despite the step"
    );
}

#[tokio::test]
async fn a_grant_without_a_refresh_token_is_served_until_it_expires_then_needs_login() {
    let w = world(3600, quick_config()).await;
    let _ = w.oauth("a", 20);
    let mut stored = w.shared.store.load_named(&["a".into()]).unwrap().remove(0);
    stored.refresh_token = None;
    let cred = w.register(stored);
    token::schedule_loaded(&w.shared);
    w.shared.clock.advance(17_000);
    assert_eq!(w.token(&cred).await.unwrap(), "at-0");
    w.shared.clock.advance(4_000);
    let err = w.token(&cred).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotUsable {
                state: CredentialState::NeedsLogin,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no refresh token"), "{err}");
    assert_eq!(w.fake.refreshes(), 0, "nothing to send");
}

#[tokio::test]
async fn odd_expires_in_values_are_clamped_and_never_loop() {
    let w = world(3600, quick_config()).await;
    for (body, lo, hi) in [
        (
            r#"{"access_token":"x","token_type":"bearer","expires_in":1e15}"#,
            364 * 86_400,
            366 * 86_400,
        ),
        (
            r#"{"access_token":"x","token_type":"bearer","expires_in":0}"#,
            59,
            61,
        ),
        (
            r#"{"access_token":"x","token_type":"bearer","expires_in":-5}"#,
            59,
            61,
        ),
        (
            r#"{"access_token":"x","token_type":"bearer","expires_in":"soon"}"#,
            3_599,
            3_601,
        ),
    ] {
        let cred = w.oauth(body, 3600);
        w.fake.fault(Fault::Body(200, body));
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap();
        let now = w.shared.clock.now();
        let life = cred.live().expires_at.get().unwrap() - now;
        assert!((lo..=hi).contains(&life), "{body}: {life}");
        let next = cred.live().next_refresh_at.get().unwrap() - now;
        assert!(next >= 1, "{body}: next refresh in {next} s");
    }
}

#[tokio::test]
async fn a_rate_limit_holds_off_forced_refreshes_and_rejects() {
    let w = world(3600, quick_config()).await;
    let cred = w.oauth("a", 3600);
    w.fake.fault(Fault::RetryAfter(600));
    let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    for _ in 0..3 {
        let err = token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("next attempt"), "{err}");
    }
    let err = token::reject(
        &w.shared,
        &cred,
        Some(&Secret::new("at-0")),
        Forcer::Admin,
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("next attempt"), "{err}");
    assert_eq!(w.fake.refreshes(), 1);
    // A clock step does not shorten the wait.
    w.shared.clock.shift(3_600_000);
    assert!(
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .is_err()
    );
    assert_eq!(w.fake.refreshes(), 1);
}

#[tokio::test]
async fn a_backwards_clock_step_stretches_no_backoff_and_no_lease_read_from_the_store() {
    let w = world(3600, quick_config()).await;
    // A backoff, written in the row by this host's clock.
    let cred = w.oauth_with("backoff", 3600, true);
    w.fake.fault(Fault::Status(503, "x"));
    assert!(
        token::force_refresh(&w.shared, &cred, Forcer::Admin)
            .await
            .is_err()
    );
    w.shared.clock.shift(-7_200_000);
    w.shared.clock.shift_mono(2_000);
    token::force_refresh(&w.shared, &cred, Forcer::Admin)
        .await
        .expect("the backoff ends by the monotonic clock, not two hours later");
    // A lease left in the row by a stop, read after a backwards step: at
    // most the lease itself, then gone by the monotonic clock.
    let cred = w.oauth_with("lease", 3600, true);
    w.shared
        .store
        .mark_refresh(
            "lease",
            1,
            0,
            &tokend::store::NewMark {
                at_ms: w.shared.clock.now_ms() + 7_200_000,
                lease_ms: 5_000,
            },
        )
        .unwrap();
    let w2 = w.reopen();
    let lease = w2.shared.registry.get("lease").unwrap();
    let err = token::force_refresh(&w2.shared, &lease, Forcer::Admin)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("in 6 s") || err.to_string().contains("in 5 s"),
        "{err}"
    );
    w2.shared.clock.shift_mono(6_000);
    token::force_refresh(&w2.shared, &lease, Forcer::Admin)
        .await
        .expect("the lease is over after its own length");
    assert_eq!(w2.reuse(), 0);
    drop(cred);
}

/// A scheduled refresh that holds a refresh slot never waits for a
/// credential's lock held by a client's request that waits for a slot:
/// with one slot, a schedule queued for it ahead of such a request would
/// otherwise hold it forever (docs/ARCHITECTURE.md, lock order).
#[tokio::test]
async fn a_scheduled_refresh_holding_the_slot_never_waits_on_a_request_waiting_for_it() {
    let mut config = quick_config();
    config.refresh.max_concurrent = 1;
    let w = world(3600, config).await;
    // Another provider, so that its fetch leaves this one's grant alone.
    let other = support::fake_provider::FakeProvider::start(3600).await;
    let spec = CredentialSpec::ClientCredentials(Box::new(ClientCredentialsSpec {
        token_url: other.url.clone(),
        client_id: "cc".into(),
        scopes: vec![],
        client_auth: ClientAuth::Basic,
        refresh_margin_secs: None,
        refresh_warn_before_secs: None,
        endpoints: Default::default(),
        git_hosts: Vec::new(),
        upstream: None,
    }));
    let busy = w.insert("busy", spec, None, None, None);
    let cred = w.oauth("a", 0);
    // The one slot is held by a slow fetch of another credential.
    other.fault(Fault::Slow(Duration::from_millis(400)));
    let holder = w.spawn_refresh(&busy, token::Trigger::Force);
    while other.refreshes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The schedule queues for the slot first, then a client's request
    // takes the credential's lock and queues behind it.
    let scheduled = w.spawn_refresh(&cred, token::Trigger::Schedule);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (shared, c) = (w.shared.clone(), cred.clone());
    let request = tokio::spawn(async move { token::token(&shared, &c, 0).await });
    let all = async {
        holder.await.unwrap().unwrap();
        let served = request.await.unwrap().unwrap();
        scheduled.await.unwrap().unwrap();
        served
    };
    let served = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("a slot held by the schedule while it waits for the request's lock: deadlock");
    assert_eq!(served.token.expose(), "at-2");
    assert_eq!(w.fake.times_sent("rt-1"), 1, "one refresh, sent once");
}
