//! The credentials the benchmarks put in the store: fixed-width names (so
//! every token request frame has the same size), tokens of a chosen length,
//! and OAuth2 credentials due at a chosen time.

use tokend::store::StoredCredential;
use tokend_proto::{ClientAuth, CredentialSpec, CredentialState, OAuth2Spec, Secret};

/// The name of credential `i`; fixed width so request frames never vary.
pub fn name(i: usize) -> String {
    format!("bench-{i:06}")
}

/// A token of exactly `len` bytes, distinct per credential and generation.
pub fn token(prefix: &str, i: usize, len: usize) -> String {
    let mut t = format!("{prefix}-{i:06}-");
    while t.len() < len {
        t.push('x');
    }
    t.truncate(len.max(1));
    t
}

/// The fields every fixture shares: owned by the user running the
/// benchmark (who is then allowed everything), ready, never used.
fn base(i: usize, spec: CredentialSpec, now: i64) -> StoredCredential {
    StoredCredential {
        name: name(i),
        description: "benchmark".into(),
        spec,
        owner_uid: tokend_proto::paths::current_uid(),
        allowed: Vec::new(),
        client_secret: None,
        access_token: None,
        refresh_token: None,
        generation: 1,
        expires_at: None,
        state: CredentialState::Ready,
        reason: None,
        created_at: now,
        last_refresh_at: None,
        last_use_at: None,
        next_refresh_at: None,
        last_error: None,
        last_check: None,
        fence: Default::default(),
        change: 0,
        untrusted: false,
        forecast: Default::default(),
        names: None,
        incarnation: i as i64 + 1,
    }
}

/// A bearer credential: its token never expires, so every request is
/// served from the cache (the hot path being measured).
pub fn bearer(i: usize, token_len: usize, now: i64) -> StoredCredential {
    let mut c = base(
        i,
        CredentialSpec::Bearer {
            check_url: None,
            git_hosts: Vec::new(),
            upstream: None,
        },
        now,
    );
    c.access_token = Some(Secret::new(token("tok", i, token_len)));
    c
}

/// An authorization-code credential holding a refresh token, whose access
/// token expires at `expires_at` and is due for refresh at `due_at` (Unix s).
pub fn oauth2(
    i: usize,
    token_url: &str,
    now: i64,
    expires_at: i64,
    due_at: i64,
) -> StoredCredential {
    let spec = CredentialSpec::OAuth2(Box::new(OAuth2Spec {
        auth_url: "http://127.0.0.1:9/authorize".into(),
        token_url: token_url.into(),
        client_id: format!("client-{i}"),
        scopes: Vec::new(),
        redirect_uri: None,
        client_auth: ClientAuth::Post,
        pkce: false,
        extra_params: Vec::new(),
        refresh_margin_secs: None,
        refresh_warn_before_secs: None,
        endpoints: Default::default(),
        git_hosts: Vec::new(),
        upstream: None,
    }));
    let mut c = base(i, spec, now);
    c.client_secret = Some(Secret::new("bench-client-secret"));
    c.access_token = Some(Secret::new(token("stale", i, 64)));
    c.refresh_token = Some(Secret::new(crate::fake_provider::initial_refresh_token(i)));
    c.expires_at = Some(expires_at);
    c.next_refresh_at = Some(due_at);
    c.last_refresh_at = Some(now - 3600);
    c
}

/// `n` credentials made by `make`, for a bulk insert.
pub fn many(n: usize, make: impl Fn(usize) -> StoredCredential) -> Vec<StoredCredential> {
    (0..n).map(make).collect()
}

/// The wall clock in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
