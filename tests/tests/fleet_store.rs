//! The PostgreSQL store's fleet semantics, one level below the daemons:
//! two `PgStore`s on one private cluster stand for two members, so each
//! step of the locking order (docs/ARCHITECTURE.md, "The fleet store") can
//! be taken by hand and its effect checked — who gets the lock, what the
//! re-read shows, which journal mark survives a member's death, how long
//! its lease keeps the others off, which fenced write wins, and who is
//! told of a change.

#![cfg(unix)]

use std::time::{Duration, Instant};
use tokend::store::postgres::{PgOptions, PgStore};
use tokend::store::seal::Sealer;
use tokend::store::{
    Backend, Claim, NewMark, StoreError, StoreEvent, StoredCredential, TokenUpdate,
};
use tokend_proto::{ClientAuth, ClientCredentialsSpec, CredentialSpec, CredentialState, Secret};
use tokend_tests::postgres::PgCluster;

const KEY: [u8; 32] = [7; 32];

fn member(pg: &PgCluster) -> PgStore {
    member_with_key(pg, &KEY).expect("open the store")
}

fn member_with_key(pg: &PgCluster, key: &[u8; 32]) -> Result<PgStore, StoreError> {
    let options = PgOptions {
        lock_wait: Duration::from_millis(500),
        hold_limit: Duration::from_secs(30),
        lock_connections: 4,
    };
    PgStore::open(&pg.url(), None, Sealer::from_key(key), options)
}

fn oauth_row(name: &str) -> StoredCredential {
    let spec = CredentialSpec::ClientCredentials(Box::new(ClientCredentialsSpec {
        token_url: "https://idp.example/token".into(),
        client_id: "c".into(),
        scopes: vec![],
        client_auth: ClientAuth::default(),
        refresh_margin_secs: None,
        refresh_warn_before_secs: None,
        endpoints: Default::default(),
        git_hosts: Vec::new(),
        upstream: None,
    }));
    StoredCredential {
        name: name.into(),
        incarnation: 42,
        description: String::new(),
        spec,
        owner_uid: 1000,
        allowed: vec![],
        client_secret: Some(Secret::new("client-secret-1")),
        access_token: Some(Secret::new("access-1")),
        refresh_token: Some(Secret::new("refresh-1")),
        generation: 1,
        expires_at: Some(2_000_000_000),
        state: CredentialState::Ready,
        reason: None,
        created_at: 1,
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
    }
}

fn rotated(generation: u64) -> TokenUpdate {
    TokenUpdate {
        access_token: Some(Secret::new(format!("access-{generation}"))),
        refresh_token: Some(Secret::new(format!("refresh-{generation}"))),
        new_grant: false,
        generation,
        expires_at: Some(2_000_000_000),
        refreshed_at: 1_900_000_000,
        next_refresh_at: Some(1_950_000_000),
        unusable: None,
        forecast: Default::default(),
        ask_introspection: false,
    }
}

/// A journal mark with a lease of `lease_ms` (its time is the database's).
fn mark(lease_ms: i64) -> NewMark {
    NewMark { at_ms: 0, lease_ms }
}

fn held(claim: Claim) -> Box<StoredCredential> {
    match claim {
        Claim::Held(row) => row,
        other => panic!("expected the lock, got {other:?}"),
    }
}

#[test]
fn one_member_holds_the_lock_and_the_next_rereads_what_it_committed() {
    let pg = PgCluster::start();
    let (a, b) = (member(&pg), member(&pg));
    a.insert(&oauth_row("up"), false).unwrap();

    let row = held(a.lock_refresh("up", 42, false).unwrap());
    assert_eq!(row.generation, 1);
    assert!(matches!(
        b.lock_refresh("up", 42, false).unwrap(),
        Claim::Busy
    ));
    let waited = Instant::now();
    assert!(
        matches!(b.lock_refresh("up", 42, true).unwrap(), Claim::Busy),
        "a waiting member gives up after its lock_wait"
    );
    assert!(waited.elapsed() >= Duration::from_millis(400));

    assert_eq!(a.mark_refresh("up", 42, 0, &mark(10_000)).unwrap(), 1);
    assert_eq!(a.save_tokens("up", 42, 1, &rotated(2)).unwrap(), 2);
    let row = held(b.lock_refresh("up", 42, false).unwrap());
    assert_eq!(
        row.generation, 2,
        "the committed rotation is what the next holder reads"
    );
    assert_eq!(row.refresh_token.as_ref().unwrap().expose(), "refresh-2");
    assert_eq!(row.fence.mark, None, "the commit cleared the journal");
    assert_eq!(row.fence.generation, 2);
    b.unlock_refresh("up", 42);
    // The release is sent without waiting for it: the lock frees shortly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(a.lock_refresh("up", 42, false).unwrap(), Claim::Held(_)) {
        assert!(Instant::now() < deadline, "b's lock was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_journal_mark_outlives_the_member_that_died_holding_the_lock() {
    let pg = PgCluster::start();
    let b = member(&pg);
    b.insert(&oauth_row("up"), false).unwrap();
    {
        let a = member(&pg);
        held(a.lock_refresh("up", 42, false).unwrap());
        a.mark_refresh("up", 42, 0, &mark(10_000)).unwrap();
        // `a` dies here, mid-refresh: its sessions end, its transaction
        // (and with it the lock) rolls back.
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        match b.lock_refresh("up", 42, true).unwrap() {
            Claim::Held(row) => break row,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("the dead member's lock never went: {other:?}"),
        }
    };
    let m = row.fence.mark.expect(
        "the mark, committed apart from the lock, survived its holder: the refresh token is in doubt",
    );
    let left = m.lease_left_ms(0);
    assert!(
        left > 5_000 && left <= 10_000,
        "its lease runs by the database's clock, whatever this host's says: {left} ms left"
    );
    assert_eq!(row.refresh_token.unwrap().expose(), "refresh-1");
}

#[test]
fn a_mark_is_judged_by_its_lease_and_a_lost_lock_leaves_the_fenced_write_its_own() {
    let pg = PgCluster::start();
    let (a, b) = (member(&pg), member(&pg));
    a.insert(&oauth_row("up"), false).unwrap();
    held(a.lock_refresh("up", 42, false).unwrap());
    assert_eq!(a.mark_refresh("up", 42, 0, &mark(1_500)).unwrap(), 1);
    // The lock's transaction is lost (say, the database restarted) while
    // `a` still waits for the provider's answer.
    a.unlock_refresh("up", 42);
    std::thread::sleep(Duration::from_millis(200));
    let row = held(b.lock_refresh("up", 42, false).unwrap());
    let m = row.fence.mark.expect("a's mark");
    assert!(
        m.lease_left_ms(i64::MAX) > 0,
        "within its lease the mark is a's, whatever a's sessions look like"
    );
    b.unlock_refresh("up", 42);
    // `b` read generation 1 and may not write over what comes after it.
    assert_eq!(a.save_tokens("up", 42, 1, &rotated(2)).unwrap(), 2);
    assert!(matches!(
        b.mark_refresh("up", 42, 1, &mark(1_500)),
        Err(StoreError::Moved(_))
    ));
    assert!(matches!(
        b.save_tokens("up", 42, 1, &rotated(3)),
        Err(StoreError::Moved(_))
    ));
    let row = a.load_named(&["up".into()]).unwrap().remove(0);
    assert_eq!(row.refresh_token.unwrap().expose(), "refresh-2");
    assert_eq!((row.fence.generation, row.fence.mark), (2, None));
}

#[test]
fn a_lease_that_ran_out_is_over_for_everyone_and_one_takeover_wins() {
    let pg = PgCluster::start();
    let (a, b) = (member(&pg), member(&pg));
    a.insert(&oauth_row("up"), false).unwrap();
    a.mark_refresh("up", 42, 0, &mark(300)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let row = held(b.lock_refresh("up", 42, false).unwrap());
    b.unlock_refresh("up", 42);
    assert_eq!(row.fence.mark.unwrap().lease_left_ms(i64::MAX), 0);
    // Both a and b saw generation 1 with its lapsed mark: one mark wins.
    assert_eq!(b.mark_refresh("up", 42, 1, &mark(10_000)).unwrap(), 2);
    assert!(matches!(
        a.mark_refresh("up", 42, 1, &mark(10_000)),
        Err(StoreError::Moved(_))
    ));
}

#[test]
fn a_commit_whose_answer_was_lost_is_found_by_its_fence() {
    let pg = PgCluster::start();
    let a = member(&pg);
    a.insert(&oauth_row("up"), false).unwrap();
    a.mark_refresh("up", 42, 0, &mark(10_000)).unwrap();
    assert_eq!(a.save_tokens("up", 42, 1, &rotated(2)).unwrap(), 2);
    // Said again, as after a COMMIT whose answer never came: nothing is
    // written twice, and the writer learns the row moved.
    assert!(matches!(
        a.save_tokens("up", 42, 1, &rotated(2)),
        Err(StoreError::Moved(_))
    ));
}

#[test]
fn a_change_is_told_to_the_other_members_and_not_to_its_writer() {
    let pg = PgCluster::start();
    let (a, b) = (member(&pg), member(&pg));
    let (mut to_a, mut to_b) = (a.take_events().unwrap(), b.take_events().unwrap());
    assert!(a.take_events().is_none(), "one receiver per store");
    // Each (re)connection asks for a full resync once it listens: a change
    // made before that is covered by the resync, not told on its own.
    for to in [&mut to_a, &mut to_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match to.try_recv() {
                Ok(StoreEvent::Resync) => break,
                Ok(event) => panic!("told {event:?} before listening"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("a member never listened: {e}"),
            }
        }
    }
    b.insert(&oauth_row("up"), false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        match to_a.try_recv() {
            Ok(StoreEvent::Resync) => {}
            Ok(event) => break event,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("member a was never told: {e}"),
        }
    };
    assert_eq!(event, StoreEvent::Changed("up".into()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::iter::from_fn(|| to_b.try_recv().ok()).all(|e| e == StoreEvent::Resync),
        "the writer is not told of its own change"
    );
    let versions = a.versions().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].0.as_str(), versions[0].1), ("up", 42));
    let change = versions[0].2;
    b.change_allowed("up", 42, tokend_proto::Principal::User(7), true)
        .unwrap();
    assert!(
        a.versions().unwrap()[0].2 > change,
        "every write moves the change number"
    );
    let loaded = a.load_named(&["up".into(), "gone".into()]).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].allowed, vec![tokend_proto::Principal::User(7)]);
    assert_eq!(
        loaded[0].client_secret.as_ref().unwrap().expose(),
        "client-secret-1"
    );
}

#[test]
fn a_member_with_another_key_cannot_open_what_the_fleet_sealed() {
    let pg = PgCluster::start();
    let a = member(&pg);
    a.verify_key().unwrap();
    a.insert(&oauth_row("up"), false).unwrap();
    let other = member_with_key(&pg, &[9; 32]).unwrap();
    assert!(matches!(other.verify_key(), Err(StoreError::Seal(_))));
    // Refused at start by verify_key; a load under it opens nothing.
    let row = other.load_all().unwrap().remove(0);
    assert!(row.untrusted && row.refresh_token.is_none() && row.client_secret.is_none());
    member(&pg).verify_key().unwrap();
}

#[test]
fn a_store_of_the_schema_before_bound_rows_is_bound_when_a_member_opens_it() {
    let pg = PgCluster::start();
    let a = member(&pg);
    a.verify_key().unwrap();
    a.insert(&oauth_row("up"), false).unwrap();
    a.change_allowed("up", 42, tokend_proto::Principal::User(7), true)
        .unwrap();
    drop(a);
    // Back to schema 2, as a tokend before rows were bound left it.
    pg.psql(
        "ALTER TABLE tokend.credentials DROP COLUMN binding, DROP COLUMN owner_name,
            DROP COLUMN refresh_expires_at, DROP COLUMN refresh_warned;
         UPDATE tokend.credentials SET allowed = 'user:7';
         UPDATE tokend.schema_version SET version = 2;",
    );
    // A member with another key migrates nothing: it refuses.
    assert!(member_with_key(&pg, &[9; 32]).is_err());
    let b = member(&pg);
    let row = b.load_all().unwrap().remove(0);
    assert!(!row.untrusted, "{:?}", row.reason);
    assert_eq!(row.refresh_token.unwrap().expose(), "refresh-1");
    assert_eq!(row.allowed, vec![tokend_proto::Principal::User(7)]);
    // The migration's tag covers what it found: a later change without
    // the key is caught.
    pg.psql("UPDATE tokend.credentials SET owner_uid = 1001");
    assert!(b.load_all().unwrap()[0].untrusted);
}

#[test]
fn writes_are_fenced_by_incarnation_and_a_duplicate_name_is_refused() {
    let pg = PgCluster::start();
    let a = member(&pg);
    a.insert(&oauth_row("up"), false).unwrap();
    assert!(matches!(
        a.insert(&oauth_row("up"), false),
        Err(StoreError::AlreadyExists(n)) if n == "up"
    ));
    assert!(matches!(
        a.save_tokens("up", 41, 0, &rotated(2)),
        Err(StoreError::Gone(_))
    ));
    assert!(matches!(
        a.lock_refresh("up", 41, false),
        Err(StoreError::Gone(_))
    ));
    assert!(!a.remove("up", 41).unwrap());
    assert!(a.remove("up", 42).unwrap());
    assert!(a.load_all().unwrap().is_empty());
}

/// The refresh token's forecast is written with the tokens and read by
/// every member with the row; of two members whose warnings come due
/// together, one notes it (and so notifies).
#[test]
fn a_forecast_travels_with_the_row_and_one_member_notes_its_warning() {
    let pg = PgCluster::start();
    let (a, b) = (member(&pg), member(&pg));
    a.insert(&oauth_row("up"), false).unwrap();
    let mut update = rotated(2);
    update.forecast = tokend::store::Forecast {
        at: Some(2_100_000_000),
        warned: false,
    };
    let fence = a.save_tokens("up", 42, 0, &update).unwrap();
    assert_eq!(b.load_all().unwrap()[0].forecast, update.forecast);
    assert!(
        !a.note_warned("up", 42, 1).unwrap(),
        "not the row's forecast"
    );
    assert!(b.note_warned("up", 42, 2_100_000_000).unwrap());
    assert!(
        !a.note_warned("up", 42, 2_100_000_000).unwrap(),
        "noted once"
    );
    let later = tokend::store::Forecast {
        at: Some(2_100_000_500),
        warned: false,
    };
    assert!(a.save_forecast("up", 42, Some(fence + 1), later).is_err());
    a.save_forecast("up", 42, Some(fence), later).unwrap();
    let row = b.load_all().unwrap().remove(0);
    assert_eq!((row.forecast, row.fence.generation), (later, fence));
}
