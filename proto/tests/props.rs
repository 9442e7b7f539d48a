//! Property tests of the wire layer: every message survives the codec,
//! arbitrary bytes (what a hostile peer can send) never panic the reader and
//! never make it allocate more than a bounded amount, and `validate_name`
//! agrees with an independent statement of its rule.

use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tokend_proto::*;

/// Records the largest single allocation made on the current thread while
/// armed, so a property can bound what decoding hostile bytes allocates.
/// Per thread, because the test harness runs tests in parallel.
struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: defers to the system allocator; only observes sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    LARGEST.with(|l| l.get())
}

/// The most one read of hostile bytes may allocate at once, whatever
/// lengths the bytes claim. Not MAX_FRAME: a body buffer is at most
/// MAX_FRAME (checked before allocating) and a string at most MAX_FRAME (the
/// codec's byte limit), but a *sequence* (`Vec<String>` scopes, a `List` of
/// `CredentialInfo`) is pre-allocated by serde from its claimed count,
/// capped at 1 MiB per sequence (serde's `size_hint::cautious`), before a
/// single element is read: two bytes `[4, 164]` read as a `Response` make a
/// 65,600-byte allocation, ten bytes claiming 2^64 scopes one of ~1 MiB.
/// Transient (freed when decoding fails at the end of the input) and one at
/// a time per worker thread, so bounded; see docs/SECURITY.md.
const ALLOCATION_BOUND: usize = 1024 * 1024;

// ---- strategies -----------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, short: the codec's job is bytes, not meaning.
    ".{0,24}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn secret() -> impl Strategy<Value = Secret> {
    text().prop_map(Secret::new)
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..4)
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..4)
}

fn named_principal() -> impl Strategy<Value = NamedPrincipal> {
    prop_oneof![
        text().prop_map(NamedPrincipal::User),
        text().prop_map(NamedPrincipal::Group)
    ]
}

fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        any::<u32>().prop_map(Principal::User),
        any::<u32>().prop_map(Principal::Group)
    ]
}

fn client_auth() -> impl Strategy<Value = ClientAuth> {
    prop_oneof![Just(ClientAuth::Post), Just(ClientAuth::Basic)]
}

fn oauth2_request() -> impl Strategy<Value = OAuth2Request> {
    (
        (opt_text(), pairs(), opt_text(), opt_text()),
        (text(), texts(), opt_text()),
        (proptest::option::of(client_auth()), any::<bool>(), pairs()),
    )
        .prop_map(
            |(
                (preset, preset_vars, auth_url, token_url),
                (client_id, scopes, redirect_uri),
                (client_auth, pkce, extra_params),
            )| OAuth2Request {
                preset,
                preset_vars,
                auth_url,
                token_url,
                client_id,
                scopes,
                redirect_uri,
                client_auth,
                pkce,
                extra_params,
                ..Default::default()
            },
        )
}

fn add_kind() -> impl Strategy<Value = AddKind> {
    prop_oneof![
        (opt_text(), opt_text())
            .prop_map(|(check_url, preset)| AddKind::Bearer { check_url, preset }),
        oauth2_request().prop_map(AddKind::OAuth2),
        oauth2_request().prop_map(AddKind::ClientCredentials),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), any::<u32>()).prop_map(|(name, min_valid_secs)| Request::Token {
            name,
            min_valid_secs
        }),
        (text(), proptest::option::of(secret()), opt_text()).prop_map(
            |(name, token, rejected_by)| Request::Reject {
                name,
                token,
                rejected_by
            }
        ),
        text().prop_map(|name| Request::Refresh { name }),
        text().prop_map(|name| Request::Check { name }),
        text().prop_map(|name| Request::Show { name }),
        Just(Request::List),
        Just(Request::Status),
        (text(), text(), add_kind(), secret(), any::<bool>()).prop_map(
            |(name, description, kind, secret, replace)| {
                Request::Add(Box::new(AddCredential {
                    name,
                    description,
                    kind,
                    secret,
                    replace,
                    git_hosts: vec![],
                    upstream: Default::default(),
                }))
            }
        ),
        text().prop_map(|name| Request::Remove { name }),
        (text(), principal()).prop_map(|(name, principal)| Request::Allow { name, principal }),
        (text(), principal()).prop_map(|(name, principal)| Request::Deny { name, principal }),
        (text(), opt_text())
            .prop_map(|(name, redirect_uri)| Request::LoginStart { name, redirect_uri }),
        (text(), text()).prop_map(|(login_id, redirect_url)| Request::LoginFinish {
            login_id,
            redirect_url
        }),
        text().prop_map(|name| Request::DeviceLoginStart { name }),
        (text(), any::<u32>()).prop_map(|(login_id, timeout_secs)| {
            Request::DeviceLoginFinish {
                login_id,
                timeout_secs,
            }
        }),
        (text(), named_principal())
            .prop_map(|(name, principal)| Request::AllowNamed { name, principal }),
        (text(), named_principal())
            .prop_map(|(name, principal)| Request::DenyNamed { name, principal }),
        (
            (text(), opt_text(), proptest::option::of(opt_text())),
            (
                proptest::option::of(proptest::option::of(proptest::collection::vec(
                    any::<u16>(),
                    0..4
                ))),
                proptest::option::of(opt_text()),
                proptest::option::of(texts()),
                proptest::option::of(texts()),
            ),
        )
            .prop_map(
                |((name, description, api_url), (retry_on, check_url, scopes, git_hosts))| {
                    Request::Edit(Box::new(EditCredential {
                        name,
                        description,
                        api_url,
                        retry_on,
                        check_url,
                        scopes,
                        git_hosts,
                        warn_before_secs: None,
                    }))
                }
            ),
        (text(), any::<u32>(), token_use()).prop_map(|(name, min_valid_secs, purpose)| {
            Request::TokenFor {
                name,
                min_valid_secs,
                purpose,
            }
        }),
        (opt_text(), opt_time(), opt_text(), any::<u32>()).prop_map(
            |(credential, since, user, limit)| Request::Audit(AuditQuery {
                credential,
                since,
                user,
                limit,
            })
        ),
    ]
}

fn token_use() -> impl Strategy<Value = TokenUse> {
    prop_oneof![
        Just(TokenUse::Token),
        Just(TokenUse::Header),
        Just(TokenUse::Exec),
        Just(TokenUse::Git),
        Just(TokenUse::Kube),
    ]
}

fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    (
        (any::<i64>(), opt_text(), text(), text(), opt_text()),
        (
            any::<u32>(),
            opt_text(),
            proptest::option::of(any::<i32>()),
            opt_text(),
            opt_text(),
            any::<u32>(),
        ),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(
            |(
                (at_ms, credential, op, outcome, reason),
                (uid, user, pid, exe, member, count),
                incarnation,
            )| {
                AuditEntry {
                    at_ms,
                    credential,
                    op,
                    outcome,
                    reason,
                    uid,
                    user,
                    pid,
                    exe,
                    member,
                    count,
                    incarnation,
                }
            },
        )
}

fn state() -> impl Strategy<Value = CredentialState> {
    prop_oneof![
        Just(CredentialState::Ready),
        Just(CredentialState::NeedsLogin),
        Just(CredentialState::Refreshing),
        Just(CredentialState::Failing),
    ]
}

fn opt_time() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(any::<i64>())
}

fn spec() -> impl Strategy<Value = CredentialSpec> {
    let refresh_margin = proptest::option::of(any::<u32>());
    prop_oneof![
        (opt_text(), texts(), upstream()).prop_map(|(check_url, git_hosts, upstream)| {
            CredentialSpec::Bearer {
                check_url: check_url.map(Into::into),
                git_hosts,
                upstream,
            }
        }),
        (
            (text(), text(), text(), texts()),
            (opt_text(), client_auth(), any::<bool>()),
            (pairs(), refresh_margin.clone(), endpoints()),
        )
            .prop_map(
                |(
                    (auth_url, token_url, client_id, scopes),
                    (redirect_uri, client_auth, pkce),
                    (extra_params, refresh_margin_secs, endpoints),
                )| {
                    CredentialSpec::OAuth2(Box::new(OAuth2Spec {
                        auth_url,
                        token_url,
                        client_id,
                        scopes,
                        redirect_uri,
                        client_auth,
                        pkce,
                        extra_params,
                        refresh_margin_secs,
                        refresh_warn_before_secs: refresh_margin_secs,
                        endpoints,
                        git_hosts: vec![],
                        upstream: None,
                    }))
                }
            ),
        (
            text(),
            text(),
            texts(),
            client_auth(),
            refresh_margin,
            endpoints()
        )
            .prop_map(
                |(token_url, client_id, scopes, client_auth, refresh_margin_secs, endpoints)| {
                    CredentialSpec::ClientCredentials(Box::new(ClientCredentialsSpec {
                        token_url,
                        client_id,
                        scopes,
                        client_auth,
                        refresh_margin_secs,
                        refresh_warn_before_secs: refresh_margin_secs,
                        endpoints,
                        git_hosts: vec![],
                        upstream: None,
                    }))
                }
            ),
    ]
}

fn upstream() -> impl Strategy<Value = Option<Box<Upstream>>> {
    proptest::option::of(
        (
            opt_text(),
            proptest::option::of(proptest::collection::vec(any::<u16>(), 0..4)),
        )
            .prop_map(|(api_url, retry_on)| Box::new(Upstream { api_url, retry_on })),
    )
}

fn endpoints() -> impl Strategy<Value = Endpoints> {
    let source = prop_oneof![
        Just(EndpointSource::Flag),
        Just(EndpointSource::Preset),
        Just(EndpointSource::Discovery),
    ];
    (
        (opt_text(), opt_text(), opt_text(), opt_text()),
        proptest::collection::vec((text(), source), 0..4),
    )
        .prop_map(
            |((issuer, introspection_url, revocation_url, device_authorization_url), sources)| {
                Endpoints {
                    issuer,
                    introspection_url,
                    revocation_url,
                    device_authorization_url,
                    sources,
                }
            },
        )
}

fn check_report() -> impl Strategy<Value = CheckReport> {
    (
        any::<i64>(),
        proptest::option::of(any::<u16>()),
        any::<bool>(),
        text(),
    )
        .prop_map(|(at, status, ok, message)| CheckReport {
            at,
            status,
            ok,
            message,
        })
}

fn info() -> impl Strategy<Value = CredentialInfo> {
    (
        (text(), text(), spec(), any::<u32>()),
        (
            proptest::collection::vec(principal(), 0..4),
            state(),
            opt_text(),
        ),
        (any::<bool>(), any::<bool>(), any::<i64>(), opt_time()),
        (opt_time(), opt_time(), opt_time(), opt_text()),
        (proptest::option::of(check_report()), opt_time()),
    )
        .prop_map(
            |(
                (name, description, spec, owner_uid),
                (allowed, state, reason),
                (has_token, has_refresh_token, created_at, expires_at),
                (last_refresh_at, last_use_at, next_refresh_at, last_error),
                (last_check, refresh_expires_at),
            )| CredentialInfo {
                name,
                description,
                spec,
                owner_uid,
                owner: allowed.first().map(|p| Grantee {
                    written: *p,
                    name: Some(format!("n{owner_uid}")),
                    here: None,
                }),
                grantees: allowed
                    .iter()
                    .map(|p| Grantee {
                        written: *p,
                        name: None,
                        here: Some(owner_uid),
                    })
                    .collect(),
                allowed,
                state,
                reason,
                has_token,
                has_refresh_token,
                created_at,
                expires_at,
                last_refresh_at,
                last_use_at,
                next_refresh_at,
                last_error,
                last_check,
                refresh_expires_at,
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::ProtocolVersion),
        Just(ErrorCode::PermissionDenied),
        Just(ErrorCode::UnknownCredential),
        Just(ErrorCode::NotUsable),
        Just(ErrorCode::AlreadyExists),
        Just(ErrorCode::InvalidArgument),
        Just(ErrorCode::Provider),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Internal),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let summary = (
        text(),
        text(),
        state(),
        opt_text(),
        opt_time(),
        opt_time(),
        opt_time(),
    )
        .prop_map(
            |(name, kind, state, reason, expires_at, next_refresh_at, refresh_expires_at)| {
                CredentialSummary {
                    name,
                    kind,
                    state,
                    reason,
                    expires_at,
                    next_refresh_at,
                    refresh_expires_at,
                }
            },
        );
    prop_oneof![
        (secret(), opt_time(), any::<u64>()).prop_map(|(token, expires_at, generation)| {
            Response::Token(TokenReply {
                token,
                expires_at,
                generation,
            })
        }),
        Just(Response::Done),
        text().prop_map(Response::Message),
        info().prop_map(|i| Response::Credential(Box::new(i))),
        proptest::collection::vec(info(), 0..3).prop_map(Response::List),
        (
            (text(), any::<Option<u32>>(), any::<u64>()),
            (opt_text(), opt_text(), any::<Option<u32>>()),
            proptest::collection::vec(summary, 0..3),
            (
                opt_text(),
                texts(),
                proptest::collection::vec(any::<(u32, u32)>(), 0..3),
            ),
        )
            .prop_map(
                |(
                    (version, pid, uptime_secs),
                    (socket, database, connections),
                    credentials,
                    (http_socket, proxy_listen, by_user),
                )| {
                    Response::Status(DaemonStatus {
                        version,
                        pid,
                        uptime_secs,
                        socket,
                        database,
                        connections,
                        credentials,
                        http_socket,
                        proxy_listen,
                        connections_by_user: by_user
                            .into_iter()
                            .map(|(uid, connections)| UserConnections { uid, connections })
                            .collect(),
                    })
                }
            ),
        check_report().prop_map(Response::Check),
        (text(), text(), text(), any::<i64>()).prop_map(
            |(login_id, authorize_url, redirect_uri, expires_at)| {
                Response::Login(LoginChallenge {
                    login_id,
                    authorize_url,
                    redirect_uri,
                    expires_at,
                })
            }
        ),
        (
            (text(), text(), opt_text()),
            (text(), any::<i64>(), any::<u32>())
        )
            .prop_map(
                |(
                    (login_id, verification_uri, verification_uri_complete),
                    (user_code, expires_at, interval_secs),
                )| {
                    Response::DeviceLogin(DeviceChallenge {
                        login_id,
                        verification_uri,
                        verification_uri_complete,
                        user_code,
                        expires_at,
                        interval_secs,
                    })
                }
            ),
        (error_code(), text(), proptest::option::of(state())).prop_map(|(code, message, state)| {
            Response::Error(RemoteError {
                code,
                message,
                state,
            })
        }),
        proptest::collection::vec(audit_entry(), 0..3).prop_map(Response::Audit),
    ]
}

/// A valid encoded request with some bytes overwritten: reaches deep into
/// the decoder (e.g. a sequence length inside `Add`) far more often than
/// uniformly random bytes do.
fn mangled_request_body() -> impl Strategy<Value = Vec<u8>> {
    (
        request(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    )
        .prop_map(|(req, edits)| {
            let mut body = encode(&req).expect("encodes");
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            body
        })
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

// ---- properties -----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs for proptest to file regressions beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_request_survives_the_codec_and_the_frame(req in request()) {
        let back: Request = decode(&encode(&req).unwrap()).unwrap();
        prop_assert_eq!(&back, &req);
        let mut wire = Vec::new();
        write_frame(&mut wire, &req).unwrap();
        let back: Request = read_frame(&mut wire.as_slice()).unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn every_response_survives_the_codec_and_the_frame(resp in response()) {
        let back: Response = decode(&encode(&resp).unwrap()).unwrap();
        prop_assert_eq!(&back, &resp);
        let mut wire = Vec::new();
        write_frame(&mut wire, &resp).unwrap();
        let back: Response = read_frame(&mut wire.as_slice()).unwrap();
        prop_assert_eq!(back, resp);
    }

    #[test]
    fn a_truncated_request_body_is_an_error_not_a_panic(req in request(), cut in any::<prop::sample::Index>()) {
        let body = encode(&req).unwrap();
        let short = &body[..cut.index(body.len())];
        prop_assert!(decode::<Request>(short).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_within_the_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        let largest = largest_allocation(|| {
            let _ = read_frame::<Hello>(&mut bytes.as_slice());
            let _ = read_frame::<Request>(&mut bytes.as_slice());
            let _ = read_frame::<Response>(&mut bytes.as_slice());
            let _ = read_frame::<Request>(&mut framed(&bytes).as_slice());
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        });
        prop_assert!(largest <= ALLOCATION_BOUND, "allocated {} bytes at once", largest);
    }

    #[test]
    fn mangled_requests_never_panic_and_stay_within_the_bound(body in mangled_request_body()) {
        let wire = framed(&body);
        let largest = largest_allocation(|| {
            let _ = decode::<Request>(&body);
            let _ = read_frame::<Request>(&mut wire.as_slice());
        });
        prop_assert!(largest <= ALLOCATION_BOUND, "allocated {} bytes at once", largest);
    }

    #[test]
    fn a_length_prefix_over_the_limit_is_refused_before_reading(len in (MAX_FRAME as u32 + 1).., tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend_from_slice(&tail);
        let mut result = None;
        let largest = largest_allocation(|| result = Some(read_frame::<Request>(&mut wire.as_slice())));
        prop_assert!(matches!(result, Some(Err(FrameError::TooLarge(n))) if n == len as usize));
        prop_assert!(largest < 1024, "allocated {} bytes for a refused frame", largest);
    }

    #[test]
    fn valid_names_are_accepted(name in "[a-z0-9][a-z0-9._-]{0,63}") {
        prop_assert_eq!(validate_name(&name), Ok(()));
    }

    #[test]
    fn names_agree_with_the_reference(name in name_candidates()) {
        let expected = reference_name_rule(&name);
        let got = validate_name(&name);
        prop_assert_eq!(got.is_ok(), expected.is_ok(), "{:?}: {:?}", name, got);
        if let (Err(got), Err(expected)) = (got, expected) {
            prop_assert_eq!(std::mem::discriminant(&got), std::mem::discriminant(&expected));
        }
    }
}

/// Mostly near-valid names: the documented alphabet plus the characters
/// most likely to be mishandled, at lengths around the limit.
fn name_candidates() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,70}",
        "[a-zA-Z0-9._/ \\-]{0,66}",
        "[a-z0-9é]{60,66}",
        ".{0,70}",
    ]
}

/// The rule `^[a-z0-9][a-z0-9._-]{0,63}$` stated as a tiny automaton over
/// bytes, independently of `validate_name`'s char iterator; the error kind
/// follows the documented precedence: empty, then too long (in bytes), then
/// bad characters.
fn reference_name_rule(name: &str) -> Result<(), NameError> {
    #[derive(Clone, Copy)]
    enum S {
        Start,
        Tail(usize),
        Dead,
    }
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 64 {
        return Err(NameError::TooLong(String::new()));
    }
    let lead = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let tail = |b: u8| lead(b) || matches!(b, b'.' | b'_' | b'-');
    let end = name.bytes().fold(S::Start, |s, b| match s {
        S::Start if lead(b) => S::Tail(0),
        S::Tail(n) if n < 63 && tail(b) => S::Tail(n + 1),
        _ => S::Dead,
    });
    match end {
        S::Tail(_) => Ok(()),
        S::Start | S::Dead => Err(NameError::BadCharacters(String::new())),
    }
}

#[test]
fn a_huge_claimed_sequence_length_preallocates_at_most_the_bound() {
    // `Add` of an oauth2 credential, with the scope list's length varint
    // replaced by u64::MAX: ten bytes claim 2^64 elements.
    let req = Request::Add(Box::new(AddCredential {
        name: "n".into(),
        description: String::new(),
        kind: AddKind::OAuth2(OAuth2Request {
            client_id: "c".into(),
            scopes: vec!["MARK".into()],
            ..Default::default()
        }),
        secret: Secret::new(""),
        replace: false,
        git_hosts: vec![],
        upstream: Default::default(),
    }));
    let body = encode(&req).unwrap();
    let at = body.windows(4).position(|w| w == b"MARK").unwrap() - 2;
    assert_eq!(body[at], 1, "the scope count precedes the scope");
    let mut hostile = body[..at].to_vec();
    hostile.push(253); // bincode varint: a u64 follows
    hostile.extend_from_slice(&u64::MAX.to_le_bytes());
    let largest = largest_allocation(|| {
        let _ = decode::<Request>(&hostile);
    });
    assert!(
        largest <= ALLOCATION_BOUND,
        "ten bytes made the decoder allocate {largest} bytes at once"
    );
    assert!(decode::<Request>(&hostile).is_err());
}
