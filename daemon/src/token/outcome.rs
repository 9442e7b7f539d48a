//! What a failed attempt leads to: backoff for transient trouble, a state
//! change for permanent refusals, persisted and notified once.

use super::plan::random_unit;
use super::validity::{MIN_VALID_MS, not_usable, valid_for};
use crate::config::RefreshPolicy;
use crate::error::Error;
use crate::provider::ProviderError;
use crate::state::Shared;
use crate::state::credential::{Credential, Journal, Kind, Stamp, Watch};
use crate::store::{GrantChange, RetryAt, StateUpdate, StoreError, blocking};
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::CredentialState;

/// After an answer with no known outcome (a 200 without a token, a refresh
/// token in doubt that introspection could not settle), the next attempt
/// waits at least this long, so an odd provider sees a few requests a
/// minute at most.
pub(super) const ODD_ANSWER_BACKOFF_SECS: u64 = 30;

/// Moves `cred` to `state` (needs-login or failing), in the store and in
/// memory, stops its schedule and notifies once per change.
pub(super) async fn set_state(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    state: CredentialState,
    reason: &str,
    grant: GrantChange,
) {
    tracing::warn!(credential = %cred.name, state = state.as_str(), "{reason}");
    let update = StateUpdate {
        state,
        reason: Some(reason.to_string()),
        last_error: Some(reason.to_string()),
        next_refresh_at: None,
        grant,
        retry: None,
    };
    if save_state(shared, cred, update).await == Saved::Overtaken {
        return;
    }
    let previous = cred.with_live(|l| {
        let previous = l.state;
        l.state = state;
        l.reason = Some(reason.into());
        l.last_error = Some(reason.into());
        l.next_refresh_at = Stamp::default();
        l.journal = Journal::Settled;
        if matches!(grant, GrantChange::DropRefreshToken | GrantChange::DropAll) {
            // The forecast was the dropped refresh token's (the row's
            // goes with it, `grant_sql`).
            l.refresh_token = None;
            l.forecast = Default::default();
        }
        if grant == GrantChange::DropAll {
            l.access_token = None;
            l.expires_at = Stamp::default();
            l.expires_mono = Stamp::default();
        }
        previous
    });
    shared.scheduler.unschedule(&cred.name);
    crate::token::forecast::watch_warning(shared, cred);
    if previous != state {
        crate::token::notify::transition(shared, &cred.name, state, Some(reason));
    }
}

/// What became of a fenced state write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Saved {
    /// Written (or the credential is gone, and with it what to write).
    Written,
    /// The row moved past the generation it was fenced by: the row was
    /// re-read and taken, and the change is dropped.
    Overtaken,
    /// The store failed: memory holds the truth until the next write, and
    /// the row's journal mark, if any, stays (its lease lets the fleet go
    /// on without this member).
    Failed,
}

/// Writes a state change, fenced by the generation last read or written
/// here, unless the credential was replaced meanwhile.
pub(super) async fn save_state(
    shared: &Arc<Shared>,
    cred: &Credential,
    update: StateUpdate,
) -> Saved {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.clone(), cred.incarnation);
    let fence = cred.with_live(|l| l.fence);
    let grant = update.grant;
    match blocking(move || store.save_state(&name, incarnation, fence, &update)).await {
        Ok(fence) => {
            cred.with_live(|l| {
                l.fence = fence;
                l.journal = match grant {
                    GrantChange::InDoubt => Journal::InDoubt,
                    _ => Journal::Settled,
                };
            });
            Saved::Written
        }
        Err(StoreError::Gone(_)) => Saved::Written,
        Err(StoreError::Moved(_)) => {
            super::adopt::reread(shared, cred).await;
            Saved::Overtaken
        }
        Err(e) => {
            tracing::error!(credential = %cred.name, error = %e, "could not record the state change");
            Saved::Failed
        }
    }
}

/// How soon a failed attempt may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// The provider answered with an error, or nothing was sent: the
    /// journal is settled, and the usual exponential backoff applies.
    Normal,
    /// An odd answer (a 200 without a token): at least
    /// [`ODD_ANSWER_BACKOFF_SECS`] between attempts.
    Odd,
    /// The refresh token is in doubt: the journal stays set, and the same
    /// pause as for an odd answer applies before it is introspected.
    InDoubt,
    /// This host failed before anything was sent (no HTTP client, a store
    /// that cannot record the journal): the usual backoff, and nothing is
    /// written, so the journal stays exactly as it was.
    Local,
    /// This host made its journal mark but sent nothing (it was held up
    /// past the send budget, or no connection could be made): the mark is
    /// cleared, and the usual backoff applies to this member only.
    Unsent,
}

impl Pace {
    /// What the failure does to the stored grant and journal, if anything
    /// is written.
    fn grant(self) -> Option<GrantChange> {
        match self {
            Pace::InDoubt => Some(GrantChange::InDoubt),
            Pace::Local => None,
            Pace::Normal | Pace::Odd | Pace::Unsent => Some(GrantChange::Settled),
        }
    }

    /// Whether every member of a fleet waits out the backoff too: after
    /// the provider failed or asked to wait, not after this host's own
    /// trouble, nor for a refresh token in doubt (the mark's lease already
    /// keeps the others off it).
    fn fleet_wide(self) -> bool {
        matches!(self, Pace::Normal | Pace::Odd)
    }
}

/// How long to wait after the `failures`-th failure in a row: exponential
/// from `min_backoff_secs`, capped at `max_backoff_secs`, at least
/// [`ODD_ANSWER_BACKOFF_SECS`] after an odd answer, ±20 % jitter, and never
/// before the provider's `Retry-After` (at most an hour of it).
fn backoff_ms(
    policy: &RefreshPolicy,
    failures: u32,
    pace: Pace,
    retry_after: Option<Duration>,
) -> i64 {
    let mut exp = policy
        .min_backoff_secs
        .saturating_mul(1u64 << (failures.max(1) - 1).min(20))
        .min(policy.max_backoff_secs);
    if matches!(pace, Pace::Odd | Pace::InDoubt) {
        exp = exp.max(ODD_ANSWER_BACKOFF_SECS.min(policy.max_backoff_secs));
    }
    let delay_ms = (exp as f64 * 1000.0 * (0.8 + 0.4 * random_unit())) as i64;
    match retry_after {
        Some(ra) => delay_ms.max(ra.as_millis().min(3_600_000) as i64),
        None => delay_ms,
    }
}

/// A transient failure: keep the token, retry with capped exponential backoff
/// and jitter, honouring `Retry-After`. The caller learns of the failure
/// either way; token requests still get the held token while it is valid.
pub(super) async fn transient(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    message: String,
    retry_after: Option<Duration>,
    pace: Pace,
) -> Result<(), Error> {
    let failures = cred.with_live(|l| {
        l.failures = l.failures.saturating_add(1);
        l.failures
    });
    let delay_ms = backoff_ms(&shared.config().refresh, failures, pace, retry_after);
    let reason = format!(
        "refresh failed, retry {failures} in {} s: {message}",
        (delay_ms + 999) / 1000
    );
    tracing::warn!(credential = %cred.name, failures, retry_in_ms = delay_ms, "refresh failed: {message}");
    let write = pace.grant().map(|grant| (grant, pace.fleet_wide()));
    retry_later(shared, cred, reason, delay_ms, write).await
}

/// A fleet member cannot reach the database, so no refresh may happen (it
/// would need the fleet's lock): look again in [`DATABASE_RETRY_MS`]. The
/// provider did nothing wrong, so this is no failure for its backoff, and
/// nothing is written to the unreachable store.
pub(super) async fn database_down(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    message: String,
) -> Result<(), Error> {
    tracing::warn!(credential = %cred.name, "refresh waits for the database: {message}");
    let reason = format!("refresh waits for the database: {message}");
    retry_later(shared, cred, reason, DATABASE_RETRY_MS, None).await
}

/// How often a refresh waiting for an unreachable database looks again
/// (the store answers at once while it knows the database is down).
const DATABASE_RETRY_MS: i64 = 1_000;

/// Puts the next attempt `delay_ms` away and says why; `write`: the state
/// change to record, if the store is to be told, and whether the backoff
/// holds every member of a fleet.
async fn retry_later(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    reason: String,
    delay_ms: i64,
    write: Option<(GrantChange, bool)>,
) -> Result<(), Error> {
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let due = now.saturating_add(delay_ms);
    let fleet_wide = write.is_some_and(|(_, fleet_wide)| fleet_wide);
    let (still_valid, update) = cred.with_live(|l| {
        l.retry_not_before_ms = mono.saturating_add(delay_ms);
        if fleet_wide {
            // The deadline as written (this host's clock, for a store
            // without its own), watched on the monotonic clock from now.
            l.retry_watch = Some(Box::new(Watch {
                key: due,
                first_mono: mono,
                left: delay_ms,
            }));
        }
        l.last_error = Some(reason.as_str().into());
        l.next_refresh_at = Some(due.div_euclid(1000)).into();
        let update = write.map(|(grant, fleet_wide)| StateUpdate {
            state: l.state,
            reason: l.reason.as_deref().map(Into::into),
            last_error: l.last_error.as_deref().map(Into::into),
            next_refresh_at: l.next_refresh_at.get(),
            grant,
            retry: fleet_wide.then_some(RetryAt {
                at_ms: due,
                in_ms: delay_ms,
            }),
        });
        (valid_for(l, now, mono, MIN_VALID_MS), update)
    });
    shared.scheduler.schedule(&cred.name, due);
    if let Some(update) = update {
        let _ = save_state(shared, cred, update).await;
    }
    if still_valid {
        Err(Error::Provider(format!(
            "{reason}; the current token stays in use until it expires"
        )))
    } else {
        Err(Error::NotUsable {
            name: cred.name.to_string(),
            state: CredentialState::Ready,
            reason: Some(reason),
        })
    }
}

/// A permanent failure: stop retrying, say why, notify once.
pub(super) async fn permanent(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    e: &ProviderError,
) -> Result<(), Error> {
    let (state, grant) = match cred.kind {
        Kind::OAuth2 if e.needs_login() => (CredentialState::NeedsLogin, GrantChange::DropAll),
        _ => (CredentialState::Failing, GrantChange::Settled),
    };
    set_state(shared, cred, state, &e.to_string(), grant).await;
    Err(not_usable(cred))
}
