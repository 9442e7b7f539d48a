//! The schema, one migration per version, and how states are written.

/// The schema, one entry per version; `PRAGMA user_version` says how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE credentials (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    owner_uid       INTEGER NOT NULL,
    settings        TEXT NOT NULL,
    client_secret   BLOB,
    access_token    BLOB,
    refresh_token   BLOB,
    generation      INTEGER NOT NULL DEFAULT 0,
    expires_at      INTEGER,
    state           TEXT NOT NULL,
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    last_refresh_at INTEGER,
    last_use_at     INTEGER,
    next_refresh_at INTEGER,
    last_error      TEXT,
    last_check      TEXT
);
CREATE TABLE allowed (
    credential_id INTEGER NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'group')),
    id            INTEGER NOT NULL,
    PRIMARY KEY (credential_id, kind, id)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"#,
    r#"
ALTER TABLE credentials ADD COLUMN refresh_in_flight INTEGER;
"#,
    r#"
ALTER TABLE credentials ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
"#,
    // The refresh generation every fenced write compares and moves, the
    // journal mark's time (ms) and lease (docs/RULES.md, "Fencing"), and
    // the backoff deadline every refresh respects ("Backoff"). A mark
    // left by an older version has the longest lease that version allowed
    // (`store::LEGACY_LEASE_MS`).
    r#"
ALTER TABLE credentials ADD COLUMN refresh_gen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN mark_at_ms INTEGER;
ALTER TABLE credentials ADD COLUMN lease_ms INTEGER;
ALTER TABLE credentials ADD COLUMN retry_at_ms INTEGER;
"#,
    // The tag that binds a row's plain columns to the key (`binding.rs`),
    // and the owner's and allow list's names (`names.rs`); the rows already
    // stored are named and tagged by the migration (`bind_existing`), with
    // the key checked first.
    r#"
ALTER TABLE credentials ADD COLUMN binding BLOB;
ALTER TABLE credentials ADD COLUMN owner_name TEXT;
ALTER TABLE allowed ADD COLUMN name TEXT;
"#,
    // The audit trail (`audit.rs`; docs/SECURITY.md, "The audit trail"):
    // who asked for what and how it ended, never a token or a secret.
    r#"
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    credential TEXT,
    op         TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT,
    uid        INTEGER NOT NULL,
    user_name  TEXT,
    pid        INTEGER,
    exe        TEXT,
    count      INTEGER NOT NULL DEFAULT 1,
    incarnation INTEGER
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
CREATE INDEX IF NOT EXISTS audit_credential ON audit (credential, at_ms);
"#,
    // The refresh token's forecast and whether `expiring` was notified
    // for it (`store::Forecast`).
    r#"
ALTER TABLE credentials ADD COLUMN refresh_expires_at INTEGER;
ALTER TABLE credentials ADD COLUMN refresh_warned INTEGER NOT NULL DEFAULT 0;
"#,
];

/// The migration after which every row carries a binding.
pub(super) const BINDING_VERSION: usize = 5;

pub(super) use crate::store::rows::{
    KEY_CHECK, state_from_text as state_from_sql, state_to_text as state_to_sql,
};
