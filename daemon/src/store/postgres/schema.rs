//! The PostgreSQL schema, one migration per version, all in the `tokend`
//! schema of the database named in the store URL.
//!
//! The same data as the SQLite store (`../sqlite/schema.rs`), sealed the
//! same way, plus what a fleet needs: a change number on every row (set by
//! a trigger from a sequence) for the periodic resync, and a notification
//! on the `tokend_changes` channel for every change, naming the credential
//! and the member that made it (its `application_name`), so that the other
//! members re-read it (docs/ARCHITECTURE.md, "The fleet store").

use super::bound::{BOUND, read, write};
use super::error::Failure;
use crate::store::StoreError;
use crate::store::names::Names;
use crate::store::rows::{check_key, reseal_for_incarnation};
use crate::store::seal::Sealer;

/// The migrations; `tokend.schema_version` says how many ran. They run in
/// one transaction under an advisory lock, so members starting together
/// migrate once.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tokend.meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE SEQUENCE tokend.change_seq;
CREATE TABLE tokend.credentials (
    name              TEXT PRIMARY KEY,
    incarnation       BIGINT NOT NULL,
    kind              TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    owner_uid         BIGINT NOT NULL,
    settings          TEXT NOT NULL,
    allowed           TEXT NOT NULL DEFAULT '',
    client_secret     BYTEA,
    access_token      BYTEA,
    refresh_token     BYTEA,
    generation        BIGINT NOT NULL DEFAULT 0,
    expires_at        BIGINT,
    state             TEXT NOT NULL,
    reason            TEXT,
    created_at        BIGINT NOT NULL,
    last_refresh_at   BIGINT,
    next_refresh_at   BIGINT,
    last_error        TEXT,
    last_check        TEXT,
    refresh_in_flight BIGINT,
    -- The member that set refresh_in_flight (its application_name).
    refresh_by        TEXT,
    change            BIGINT NOT NULL DEFAULT 0
);
-- Last-use times change on every busy second: kept apart, so that
-- writing them wakes no other member.
CREATE TABLE tokend.uses (
    name        TEXT PRIMARY KEY,
    last_use_at BIGINT NOT NULL
);
CREATE FUNCTION tokend.stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change := nextval('tokend.change_seq');
    RETURN NEW;
END $$;
CREATE FUNCTION tokend.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN changed := OLD.name; ELSE changed := NEW.name; END IF;
    PERFORM pg_notify('tokend_changes',
        json_build_object('m', current_setting('application_name'), 'n', changed)::text);
    RETURN NULL;
END $$;
-- Setting a journal mark (refresh_in_flight from NULL to a time) is the
-- one update other members have no use for: they never act on a mark
-- outside the refresh lock, and the outcome's commit notifies them anyway.
CREATE TRIGGER stamp_insert BEFORE INSERT ON tokend.credentials
    FOR EACH ROW EXECUTE FUNCTION tokend.stamp_change();
CREATE TRIGGER stamp_update BEFORE UPDATE ON tokend.credentials
    FOR EACH ROW
    WHEN (NEW.refresh_in_flight IS NULL OR NEW.refresh_in_flight IS NOT DISTINCT FROM OLD.refresh_in_flight)
    EXECUTE FUNCTION tokend.stamp_change();
CREATE TRIGGER notify_insert_delete AFTER INSERT OR DELETE ON tokend.credentials
    FOR EACH ROW EXECUTE FUNCTION tokend.notify_change();
CREATE TRIGGER notify_update AFTER UPDATE ON tokend.credentials
    FOR EACH ROW
    WHEN (NEW.refresh_in_flight IS NULL OR NEW.refresh_in_flight IS NOT DISTINCT FROM OLD.refresh_in_flight)
    EXECUTE FUNCTION tokend.notify_change();
"#,
    // The refresh generation every fenced write compares and moves, the
    // journal mark's time and lease by the database's clock (docs/RULES.md,
    // "Fencing"), and the fleet's backoff deadline ("Backoff"). A mark left
    // by an older version has the longest lease that version allowed
    // (`store::LEGACY_LEASE_MS`). A member older than this schema that is
    // still running moves no generation: its refresh writes are refused
    // (require_fence), so it fails closed instead of writing unfenced.
    // Making a journal mark (a new mark_at_ms) is still the one update
    // that notifies nobody: a re-mark within the same second as the mark
    // it replaces leaves refresh_in_flight (seconds) as it was.
    r#"
ALTER TABLE tokend.credentials
    ADD COLUMN refresh_gen BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN mark_at_ms  BIGINT,
    ADD COLUMN lease_ms    BIGINT,
    ADD COLUMN retry_at_ms BIGINT;
DROP TRIGGER stamp_update ON tokend.credentials;
DROP TRIGGER notify_update ON tokend.credentials;
CREATE TRIGGER stamp_update BEFORE UPDATE ON tokend.credentials
    FOR EACH ROW
    WHEN (NEW.mark_at_ms IS NULL OR NEW.mark_at_ms IS NOT DISTINCT FROM OLD.mark_at_ms)
    EXECUTE FUNCTION tokend.stamp_change();
CREATE TRIGGER notify_update AFTER UPDATE ON tokend.credentials
    FOR EACH ROW
    WHEN (NEW.mark_at_ms IS NULL OR NEW.mark_at_ms IS NOT DISTINCT FROM OLD.mark_at_ms)
    EXECUTE FUNCTION tokend.notify_change();
-- The condition is the trigger's WHEN, evaluated without a function call:
-- this version's writes, which all move refresh_gen, cost nothing more.
CREATE FUNCTION tokend.refuse_unfenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tokend: a refresh write without the refresh generation (is a tokend older than the database''s schema still running?)';
END $$;
CREATE TRIGGER require_fence BEFORE UPDATE ON tokend.credentials
    FOR EACH ROW
    WHEN (NEW.refresh_gen = OLD.refresh_gen AND (
        NEW.refresh_token IS DISTINCT FROM OLD.refresh_token
        OR NEW.access_token IS DISTINCT FROM OLD.access_token
        OR NEW.refresh_in_flight IS DISTINCT FROM OLD.refresh_in_flight))
    EXECUTE FUNCTION tokend.refuse_unfenced();
"#,
    // The tag that binds a row's plain columns to the key (`binding.rs`),
    // and the owner's name (the allow list's names are in its text,
    // `user:1000:alice`; `names.rs`); the rows already stored are named
    // and tagged in the same transaction (`bind_existing`), with the key
    // checked first. A member older than this schema still running writes
    // rows without a tag: the others do not use them (upgrade every
    // member together).
    r#"
ALTER TABLE tokend.credentials ADD COLUMN binding BYTEA, ADD COLUMN owner_name TEXT;
"#,
    // The audit trail (`audit.rs`; docs/SECURITY.md, "The audit trail"),
    // one table for the fleet, each entry naming the member that answered.
    // Nothing triggers on it: writing it wakes no other member.
    r#"
CREATE TABLE IF NOT EXISTS tokend.audit (
    id         BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    member     TEXT NOT NULL,
    credential TEXT,
    op         TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT,
    uid        BIGINT NOT NULL,
    user_name  TEXT,
    pid        INTEGER,
    exe        TEXT,
    count      BIGINT NOT NULL DEFAULT 1,
    incarnation BIGINT
);
CREATE INDEX IF NOT EXISTS audit_at ON tokend.audit (at_ms);
CREATE INDEX IF NOT EXISTS audit_credential ON tokend.audit (credential, at_ms);
"#,
    // The refresh token's forecast and whether `expiring` was notified
    // for it (`store::Forecast`). Not bound to the key: it decides no
    // access and sends nothing, only when a notification comes.
    r#"
ALTER TABLE tokend.credentials
    ADD COLUMN refresh_expires_at BIGINT,
    ADD COLUMN refresh_warned BOOLEAN NOT NULL DEFAULT false;
"#,
];

/// The migration after which every row carries a binding.
const BINDING_VERSION: usize = 3;

/// Creates the schema and its version table if missing.
const BOOTSTRAP: &str = "
CREATE SCHEMA IF NOT EXISTS tokend;
CREATE TABLE IF NOT EXISTS tokend.schema_version (version INTEGER NOT NULL);
";

/// The advisory lock key under which migrations run ("tokend-m").
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e64_2d6d;

/// Brings the schema up to date, in one transaction.
pub(super) async fn migrate(
    client: &mut deadpool_postgres::Object,
    sealer: &Sealer,
) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    // First the lock: members starting together would otherwise race on
    // CREATE SCHEMA IF NOT EXISTS.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(BOOTSTRAP).await?;
    let version: i64 = tx
        .query_opt("SELECT version::bigint FROM tokend.schema_version", &[])
        .await?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        }
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        if i + 1 == BINDING_VERSION {
            bind_existing(&tx, sealer).await?;
        }
    }
    tx.execute("DELETE FROM tokend.schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO tokend.schema_version (version) VALUES ($1::bigint::integer)",
        &[&known],
    )
    .await?;
    Ok(tx.commit().await?)
}

/// Tags every row of a store written before rows were bound to the key:
/// what it holds now is taken as what the key vouches for. The key is
/// checked first (tagging under a wrong key would make every row look
/// tampered with under the right one). A row whose settings cannot be
/// read is left untagged, so untrusted.
async fn bind_existing(
    tx: &tokio_postgres::Transaction<'_>,
    sealer: &Sealer,
) -> Result<(), Failure> {
    let Some(check) = tx
        .query_opt("SELECT value FROM tokend.meta WHERE key = 'key_check'", &[])
        .await?
    else {
        return Ok(());
    };
    check_key(sealer, check.get(0))?;
    let rows = tx
        .query(&format!("SELECT {BOUND} FROM tokend.credentials"), &[])
        .await?;
    let mut names = Names::default();
    for r in &rows {
        let Ok(mut bound) = read(r) else {
            continue;
        };
        bound.named = names.name_ids(&bound.named)?;
        write(tx, &bound, sealer).await?;
        let sealed = tx
            .query_one(
                "SELECT client_secret, access_token, refresh_token FROM tokend.credentials
                 WHERE name = $1 AND incarnation = $2",
                &[&bound.name, &bound.incarnation],
            )
            .await?;
        let sealed = [sealed.get(0), sealed.get(1), sealed.get(2)];
        let [cs, at, rt] = reseal_for_incarnation(sealer, &bound.name, bound.incarnation, sealed)?;
        tx.execute(
            "UPDATE tokend.credentials SET client_secret = $3, access_token = $4,
                refresh_token = $5, refresh_gen = refresh_gen + 1
             WHERE name = $1 AND incarnation = $2",
            &[&bound.name, &bound.incarnation, &cs, &at, &rt],
        )
        .await?;
    }
    Ok(())
}

/// The database's clock in Unix ms. `clock_timestamp()`, not `now()`:
/// inside a lock's transaction `now()` is when it began, which may be a
/// lock wait ago.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// See [`now_ms!`]: journal marks are made and their leases measured by
/// the database's clock, never a member's.
pub(super) const NOW_MS: &str = now_ms!();

/// Every column of a credential row, in the order `row.rs` reads them; the
/// last one is the database's clock as the row is read, against which a
/// journal mark's lease is measured.
pub(super) const COLUMNS: &str = concat!(
    "c.name, c.incarnation, c.description, c.owner_uid, c.settings,
    c.allowed, c.client_secret, c.access_token, c.refresh_token, c.generation, c.expires_at,
    c.state, c.reason, c.created_at, c.last_refresh_at, u.last_use_at, c.next_refresh_at,
    c.last_error, c.last_check, c.refresh_in_flight IS NOT NULL, c.change, c.refresh_gen,
    COALESCE(c.mark_at_ms, c.refresh_in_flight * 1000), COALESCE(c.lease_ms, 19000),
    c.retry_at_ms, ",
    now_ms!(),
    ", c.refresh_by IS NOT DISTINCT FROM current_setting('application_name'), c.binding,
    c.owner_name, c.refresh_expires_at, c.refresh_warned"
);

/// The table a row is read from: a credential and its last use.
pub(super) const FROM: &str = "tokend.credentials c LEFT JOIN tokend.uses u ON u.name = c.name";
