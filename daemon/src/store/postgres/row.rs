//! Rows of `tokend.credentials` to credentials and back.

use super::bound::uid;
use super::schema;
use super::statement::{Sql, boxed};
use crate::store::names::{NOBODY, Named};
use crate::store::rows::{Sealed, TOKENS_SETTLE_SQL, committed_state, grant_sql};
use crate::store::rows::{
    SealedColumns, SealedRow, allowed_from_text, allowed_to_text, read_spec, state_from_text,
    state_to_text,
};
use crate::store::{
    Deadline, Fence, Mark, NewMark, StateUpdate, StoreError, StoredCredential, TokenUpdate,
};

/// Credentials read with `schema::COLUMNS`, their sealed secrets set
/// aside unopened; filled a row at a time as the rows stream in, so that
/// a large store is never held twice (as rows and as credentials).
#[derive(Default)]
pub(super) struct Loaded {
    pub creds: Vec<StoredCredential>,
    pub sealed: SealedColumns,
}

impl Loaded {
    /// Credentials from rows already read.
    pub fn from_rows(rows: &[tokio_postgres::Row]) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for r in rows {
            loaded.push(r)?;
        }
        Ok(loaded)
    }

    pub fn push(&mut self, r: &tokio_postgres::Row) -> Result<(), StoreError> {
        let bad =
            |e: tokio_postgres::Error| StoreError::Database(format!("an unreadable row: {e}"));
        let settings: &str = r.try_get(4).map_err(bad)?;
        self.sealed.push([
            r.try_get::<_, Option<&[u8]>>(27).map_err(bad)?,
            Some(settings.as_bytes()),
            r.try_get::<_, Option<&[u8]>>(6).map_err(bad)?,
            r.try_get::<_, Option<&[u8]>>(7).map_err(bad)?,
            r.try_get::<_, Option<&[u8]>>(8).map_err(bad)?,
        ]);
        let (spec, unreadable) = read_spec(settings);
        let last_check: Option<&str> = r.try_get(18).map_err(bad)?;
        let clock: i64 = r.try_get(25).map_err(bad)?;
        self.creds.push(StoredCredential {
            name: r.try_get(0).map_err(bad)?,
            incarnation: r.try_get(1).map_err(bad)?,
            description: r.try_get(2).map_err(bad)?,
            owner_uid: NOBODY,
            spec,
            allowed: Vec::new(),
            names: Some(Box::new(Named::as_read(
                uid(r.try_get(3).map_err(bad)?),
                r.try_get(28).map_err(bad)?,
                allowed_from_text(r.try_get(5).map_err(bad)?),
            ))),
            client_secret: None,
            access_token: None,
            refresh_token: None,
            generation: r.try_get::<_, i64>(9).map_err(bad)? as u64,
            expires_at: r.try_get(10).map_err(bad)?,
            state: state_from_text(r.try_get(11).map_err(bad)?),
            reason: unreadable.clone().or(r.try_get(12).map_err(bad)?),
            created_at: r.try_get(13).map_err(bad)?,
            last_refresh_at: r.try_get(14).map_err(bad)?,
            last_use_at: r.try_get(15).map_err(bad)?,
            next_refresh_at: r.try_get(16).map_err(bad)?,
            last_error: r.try_get(17).map_err(bad)?,
            last_check: last_check.and_then(|j| serde_json::from_str(j).ok()),
            fence: Fence {
                generation: r.try_get(21).map_err(bad)?,
                mark: if r.try_get::<_, bool>(19).map_err(bad)? {
                    Some(Mark {
                        at_ms: r.try_get::<_, Option<i64>>(22).map_err(bad)?.unwrap_or(0),
                        lease_ms: r.try_get(23).map_err(bad)?,
                        read_at_ms: Some(clock),
                        mine: r.try_get(26).map_err(bad)?,
                    })
                } else {
                    None
                },
                retry: r
                    .try_get::<_, Option<i64>>(24)
                    .map_err(bad)?
                    .map(|at_ms| Deadline {
                        at_ms,
                        read_at_ms: Some(clock),
                    }),
            },
            change: r.try_get(20).map_err(bad)?,
            untrusted: unreadable.is_some(),
            forecast: crate::store::Forecast {
                at: r.try_get(29).map_err(bad)?,
                warned: r.try_get(30).map_err(bad)?,
            },
        });
        Ok(())
    }
}

/// The INSERT of one credential.
pub(super) fn insert(c: &StoredCredential, sealed: SealedRow) -> Sql {
    Sql::new(
        "INSERT INTO tokend.credentials (name, incarnation, kind, description, owner_uid,
            settings, allowed, client_secret, access_token, refresh_token, generation,
            expires_at, state, reason, created_at, last_refresh_at, next_refresh_at, binding,
            owner_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19)",
        vec![
            boxed(c.name.clone()),
            boxed(c.incarnation),
            boxed(c.spec.kind().to_string()),
            boxed(c.description.clone()),
            boxed(i64::from(c.owner_uid)),
            boxed(sealed.settings),
            boxed(allowed_to_text(&sealed.named.allowed)),
            boxed(sealed.client_secret),
            boxed(sealed.access),
            boxed(sealed.refresh),
            boxed(c.generation as i64),
            boxed(c.expires_at),
            boxed(state_to_text(c.state)),
            boxed(c.reason.clone()),
            boxed(c.created_at),
            boxed(c.last_refresh_at),
            boxed(c.next_refresh_at),
            boxed(sealed.binding),
            boxed(sealed.named.owner.name),
        ],
    )
}

/// The name in a unique violation's detail, `Key (name)=(x) already exists.`
pub(super) fn duplicate_name(e: &tokio_postgres::Error) -> Option<String> {
    let detail = e.as_db_error()?.detail()?;
    let start = detail.find(")=(")? + 3;
    let end = detail.rfind(") already exists")?;
    detail.get(start..end).map(str::to_string)
}

/// The fenced commit of a token set (its sealed tokens given): written
/// only if the row still holds generation `fence`, which it moves on.
pub(super) fn tokens_update(
    name: &str,
    incarnation: i64,
    fence: i64,
    t: &TokenUpdate,
    access: Sealed,
    refresh: Sealed,
) -> Sql {
    Sql::new(
        format!(
            "UPDATE tokend.credentials SET access_token = $3,
                refresh_token = CASE WHEN $9 THEN $4 ELSE COALESCE($4, refresh_token) END,
                generation = $5, expires_at = $6, last_refresh_at = $7, next_refresh_at = $8,
                state = $11, reason = $12, last_error = $12, refresh_expires_at = $13,
                refresh_warned = $14, {TOKENS_SETTLE_SQL}
             WHERE name = $1 AND incarnation = $2 AND refresh_gen = $10"
        ),
        vec![
            boxed(name.to_string()),
            boxed(incarnation),
            boxed(access),
            boxed(refresh),
            boxed(t.generation as i64),
            boxed(t.expires_at),
            boxed(t.refreshed_at),
            boxed(t.next_refresh_at),
            boxed(t.new_grant),
            boxed(fence),
            boxed(committed_state(t)),
            boxed(t.unusable.clone()),
            boxed(t.forecast.at),
            boxed(t.forecast.warned),
        ],
    )
}

/// A forecast found after its commit, or its warning noted: never moves
/// the generation (see `Backend::save_forecast`).
pub(super) fn forecast_update(
    name: &str,
    incarnation: i64,
    fence: Option<i64>,
    f: crate::store::Forecast,
) -> Sql {
    Sql::new(
        "UPDATE tokend.credentials SET refresh_expires_at = $3, refresh_warned = $4
         WHERE name = $1 AND incarnation = $2 AND ($5::bigint IS NULL OR refresh_gen = $5)",
        vec![
            boxed(name.to_string()),
            boxed(incarnation),
            boxed(f.at),
            boxed(f.warned),
            boxed(fence),
        ],
    )
}

/// The journal mark, a compare-and-set on generation `fence`, with the
/// database's time and this member's name.
pub(super) fn mark_update(name: &str, incarnation: i64, fence: i64, mark: &NewMark) -> Sql {
    Sql::new(
        format!(
            "UPDATE tokend.credentials SET refresh_in_flight = {now} / 1000,
                mark_at_ms = {now}, lease_ms = $4,
                refresh_by = current_setting('application_name'),
                refresh_gen = refresh_gen + 1
             WHERE name = $1 AND incarnation = $2 AND refresh_gen = $3",
            now = schema::NOW_MS
        ),
        vec![
            boxed(name.to_string()),
            boxed(incarnation),
            boxed(fence),
            boxed(mark.lease_ms),
        ],
    )
}

/// A fenced state change: what it does to the grant, and the fleet's
/// backoff deadline by the database's clock.
pub(super) fn state_update(name: &str, incarnation: i64, fence: i64, s: &StateUpdate) -> Sql {
    let grant = grant_sql(s.grant);
    Sql::new(
        format!(
            "UPDATE tokend.credentials SET state = $3, reason = $4, last_error = $5,
                next_refresh_at = $6, {grant},
                retry_at_ms = CASE WHEN $8::bigint IS NULL THEN NULL ELSE {now} + $8 END
             WHERE name = $1 AND incarnation = $2 AND refresh_gen = $7",
            now = schema::NOW_MS
        ),
        vec![
            boxed(name.to_string()),
            boxed(incarnation),
            boxed(state_to_text(s.state)),
            boxed(s.reason.clone()),
            boxed(s.last_error.clone()),
            boxed(s.next_refresh_at),
            boxed(fence),
            boxed(s.retry.map(|r| r.in_ms)),
        ],
    )
}
