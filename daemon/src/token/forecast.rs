//! When a grant will need a human again (issue 21): the refresh token's
//! *forecast*. From the token response's `refresh_expires_in` (Keycloak
//! sends it; 0 means no limit), else from introspecting the refresh token
//! (its `exp`) once after each rotation, off the token path, else unknown.
//!
//! The forecast is kept with the tokens in the row (it survives a restart
//! and reaches every member of a fleet), shown by `show`, `list` and the
//! HTTP API, and drives two things: the notify command runs once with
//! `TOKEND_STATE=expiring` when it comes within `refresh.warn_before_secs`
//! (the warnings queue, [`run`]), and with `refresh.keep_alive` a refresh
//! is planned before it, so a grant with an inactivity limit does not die
//! idle ([`keep_alive_due`]).

use crate::config::RefreshPolicy;
use crate::provider::{self, RefreshLifetime};
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::{Forecast, TokenUpdate, blocking};
use std::sync::Arc;
use tokio::sync::watch;

/// Two forecasts this close (seconds) are the same one: a provider's
/// absolute limit read off successive answers (`refresh_expires_in` counts
/// down from each answer's own second) moves by the rounding only.
const SAME_FORECAST_SECS: i64 = 2;

/// The longest the warnings task sleeps: the wall clock is read again at
/// least this often (as the refresher does), so a suspend or a clock step
/// makes a warning late by at most this.
const MAX_SLEEP_MS: i64 = 30_000;

/// A year: no forecast or warning reaches further (the longest lifetime
/// tokend takes from a provider, `plan::MAX_LIFETIME_SECS`).
const MAX_SECS: i64 = 365 * 24 * 3600;

/// The forecast a token response gives, received at `started_ms`, and
/// whether introspection should be asked (the answer said nothing).
pub(super) fn from_answer(lifetime: RefreshLifetime, started_ms: i64) -> (Option<i64>, bool) {
    match lifetime {
        RefreshLifetime::Secs(s) => (
            Some(started_ms.div_euclid(1000).saturating_add(s.min(MAX_SECS))),
            false,
        ),
        RefreshLifetime::Unlimited => (None, false),
        RefreshLifetime::Unsaid => (None, true),
    }
}

/// Whether a new forecast `new` keeps the warning given for `old`: once
/// warned, a grant is not warned again while its forecast stays within
/// the warning window (an inactivity limit moves the forecast on with
/// every refresh); a forecast beyond the window starts afresh.
pub fn carries_warning(old: Forecast, new: Option<i64>, now: i64, warn_secs: i64) -> bool {
    let Some(at) = new else {
        return false;
    };
    old.warned
        && (old.at.is_some_and(|o| (o - at).abs() <= SAME_FORECAST_SECS)
            || at <= now.saturating_add(warn_secs))
}

/// Completes a token set's forecast before it is committed: a refresh
/// answer without a new refresh token keeps the one held and its
/// forecast; a login without one has none; the warning carries over as
/// [`carries_warning`] says; and with `keep_alive`, the next refresh comes
/// before the forecast ([`keep_alive_due`]).
pub(super) fn settle(shared: &Shared, cred: &Credential, update: &mut TokenUpdate) {
    let old = cred.with_live(|l| l.forecast.get());
    if update.refresh_token.is_none() {
        if update.new_grant {
            update.forecast = Forecast::default();
        } else {
            update.forecast = old;
        }
        update.ask_introspection = false;
        return;
    }
    if update.ask_introspection && !update.new_grant {
        // The answer said nothing: the previous refresh token's forecast
        // (its time and its warning) is kept, provisionally, until
        // introspection tells about the new one ([`record`] compares the
        // two). Committing none would warn again and make `keep_alive`
        // take an absolute limit for a moving one at every refresh.
        update.forecast = old;
    }
    let policy = shared.config().refresh.clone();
    let now = shared.clock.now();
    let warn = warn_secs(cred, &policy);
    update.forecast.warned =
        !update.new_grant && carries_warning(old, update.forecast.at, now, warn);
    if let (Some(at), Some(next)) = (update.forecast.at, update.next_refresh_at) {
        let moved = update.new_grant || old.at.is_none_or(|o| (o - at).abs() > SAME_FORECAST_SECS);
        if let Some(due) = keep_alive_due(&policy, warn, at, now, moved) {
            update.next_refresh_at = Some(next.min(due));
        }
    }
}

/// How long before the forecast the credential warns: its own
/// (`tokenctl edit --warn-before`), else `refresh.warn_before_secs`.
fn warn_secs(cred: &Credential, policy: &RefreshPolicy) -> i64 {
    let own = cred.with_live(|l| l.spec.warn_before_secs());
    own.map_or_else(
        || i64::try_from(policy.warn_before_secs).unwrap_or(MAX_SECS),
        i64::from,
    )
}

/// With `keep_alive`, when to refresh (Unix ms) so that a grant whose
/// forecast is `at` does not die idle: at the forecast less the larger of
/// the warning and a tenth of what is left, but no sooner than halfway
/// there (a warning longer than the inactivity limit would otherwise
/// refresh at once) and at least a second from now. Only for a forecast
/// that `moved` with the last refresh: one that stays put is an absolute
/// limit no refresh extends, and refreshing for it would only spend
/// refresh tokens faster and faster.
pub fn keep_alive_due(
    policy: &RefreshPolicy,
    warn: i64,
    at: i64,
    now: i64,
    moved: bool,
) -> Option<i64> {
    if !policy.keep_alive || !moved {
        return None;
    }
    let left = at.saturating_sub(now);
    if left <= 0 {
        return None;
    }
    let lead = warn.max(left / 10).min(left / 2);
    Some(
        at.saturating_sub(lead)
            .saturating_mul(1000)
            .max((now + 1).saturating_mul(1000)),
    )
}

/// After a token set was committed (or published unsaved): the warning
/// is planned, and a refresh token whose lifetime the answer did not say
/// is introspected, off the token path, once.
pub(super) fn after_commit(shared: &Arc<Shared>, cred: &Arc<Credential>, update: &TokenUpdate) {
    watch_warning(shared, cred);
    if update.ask_introspection && update.refresh_token.is_some() {
        let (shared, cred) = (shared.clone(), cred.clone());
        let generation = update.generation;
        tokio::spawn(async move { introspect(&shared, &cred, generation).await });
    }
}

/// Asks the introspection endpoint when the refresh token committed at
/// `generation` expires. Tolerates everything: no endpoint, no answer, an
/// inactive token or no `exp` leave the forecast unknown. Never on the
/// token path (its own task), and at most once per rotation (only
/// [`after_commit`] calls it, once per committed token set).
///
/// Contained like a refresh: the refresh token is read under the refresh
/// lock, and only while neither memory nor the row shows a journal mark
/// or a newer generation (another member about to send it); the request
/// holds one of the `refresh.max_concurrent` slots; no lock is held
/// across it or the write, which is fenced by the row's generation. A
/// stop does not wait for it: cut anywhere, it has written nothing, or a
/// forecast fenced to the refresh token it is about.
async fn introspect(shared: &Arc<Shared>, cred: &Arc<Credential>, generation: u64) {
    if cred.untrusted() || shared.is_stopping() {
        return;
    }
    let spec = cred.spec();
    let Some(endpoint) = cred.endpoint(&spec) else {
        return;
    };
    if endpoint.introspection_url.is_none() {
        return;
    }
    let Some((refresh_token, fence)) = held_unmarked(shared, cred, generation).await else {
        tracing::debug!(credential = %cred.name, "the refresh token moved on or is being sent: not introspected");
        return;
    };
    let Ok(_slot) = shared.refresh_slots.acquire().await else {
        return;
    };
    if shared.is_stopping() {
        return;
    }
    let http = match shared.http() {
        Ok(http) => http,
        Err(e) => {
            tracing::debug!(credential = %cred.name, error = %e, "refresh token not introspected for its expiry");
            return;
        }
    };
    let timeout = super::validity::timeout(shared);
    let exp = match provider::introspect(http, &endpoint, &refresh_token, timeout).await {
        Ok(i) if i.active => i.exp,
        Ok(_) => None,
        Err(e) => {
            tracing::info!(credential = %cred.name, error = %e, "the refresh token's expiry could not be introspected; it stays unknown");
            return;
        }
    };
    let Some(exp) = exp else {
        tracing::debug!(credential = %cred.name, "introspection gave no expiry for the refresh token");
        return;
    };
    record(shared, cred, generation, fence, exp).await;
}

/// The refresh token committed at `generation` and the row's generation
/// it was read at, if it is still the one held and nobody is about to
/// send it: checked under the refresh lock (no refresh of this member
/// comes between), in memory and in the row (another member's mark).
async fn held_unmarked(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    generation: u64,
) -> Option<(tokend_proto::Secret, i64)> {
    let _lock = cred.refresh_lock.lock().await;
    let (token, fence) = cred.with_live(|l| {
        let clean = l.generation == generation
            && matches!(l.journal, crate::state::credential::Journal::Settled)
            && l.unsent_mark.get().is_none();
        clean
            .then(|| l.refresh_token.clone().map(|t| (t, l.fence)))
            .flatten()
    })?;
    let store = shared.store.clone();
    let names = vec![cred.name.to_string()];
    let rows = blocking(move || store.load_named(&names)).await.ok()?;
    let row = rows
        .into_iter()
        .find(|r| r.incarnation == cred.incarnation)?;
    (row.generation == generation && row.fence.generation == fence && row.fence.mark.is_none())
        .then_some((token, fence))
}

/// Keeps a forecast found by introspection, if the refresh token it is
/// about is still the one held: the write is fenced by the row's
/// generation the token was read at (a newer row is left alone), and
/// memory takes it only if that generation is still the one held. No
/// lock: the fence is enough, and a blocking write holds up no refresh.
async fn record(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    generation: u64,
    fence: i64,
    exp: i64,
) {
    let policy = shared.config().refresh.clone();
    let warn = warn_secs(cred, &policy);
    let now = shared.clock.now();
    let held = |l: &crate::state::credential::Live| l.generation == generation && l.fence == fence;
    let Some((forecast, old)) = cred.with_live(|l| {
        held(l).then(|| {
            // The previous refresh token's forecast, committed with this
            // one provisionally (`settle`).
            let old = l.forecast.get();
            let f = Forecast {
                at: Some(exp),
                warned: carries_warning(old, Some(exp), now, warn),
            };
            (f, old)
        })
    }) else {
        return;
    };
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    match blocking(move || store.save_forecast(&name, incarnation, Some(fence), forecast)).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Moved(_) | crate::store::StoreError::Gone(_)) => {
            tracing::debug!(credential = %cred.name, "the row moved on during the introspection: its forecast is not kept");
            return;
        }
        Err(e) => {
            tracing::warn!(credential = %cred.name, error = %e, "the refresh token's expiry could not be saved; it is kept in memory");
        }
    }
    let kept = cred.with_live(|l| {
        if !held(l) {
            return false;
        }
        // A warning given meanwhile for the same forecast stays given.
        let now_held = l.forecast.get();
        let warned = forecast.warned || (now_held.warned && now_held.at == forecast.at);
        l.forecast = Forecast {
            at: forecast.at,
            warned,
        }
        .into();
        true
    });
    if !kept {
        return;
    }
    tracing::info!(credential = %cred.name, refresh_expires_at = exp, "refresh token expiry from introspection");
    let moved = old.at.is_none_or(|o| (o - exp).abs() > SAME_FORECAST_SECS);
    if let Some(due) = keep_alive_due(&policy, warn, exp, now, moved) {
        let sooner = shared.scheduler.due_of(&cred.name).is_none_or(|d| due < d);
        if sooner {
            shared.scheduler.schedule(&cred.name, due);
            cred.with_live(|l| l.next_refresh_at = Some(due.div_euclid(1000)).into());
        }
    }
    watch_warning(shared, cred);
}

/// Plans the `expiring` notification of the credential's forecast: on the
/// warnings queue at the forecast less the warning, or at once when that
/// has passed. Nothing for a credential without a forecast, or warned.
pub fn watch_warning(shared: &Shared, cred: &Credential) {
    let forecast = cred.with_live(|l| l.forecast.get());
    let Some(at) = forecast.at.filter(|_| !forecast.warned) else {
        shared.warnings.unschedule(&cred.name);
        return;
    };
    let warn = warn_secs(cred, &shared.config().refresh);
    let due_ms = at.saturating_sub(warn).saturating_mul(1000);
    shared.warnings.schedule(&cred.name, due_ms);
}

/// The warnings task: sleeps until the first forecast comes within the
/// warning, and notifies it; never longer than [`MAX_SLEEP_MS`].
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = shared.clock.now_ms();
        for name in shared.warnings.take_due(now) {
            if let Some(cred) = shared.registry.get(&name) {
                warn_if_due(&shared, &cred).await;
            }
        }
        let sleep_ms = shared
            .warnings
            .next_due()
            .map_or(MAX_SLEEP_MS, |due| (due - now).clamp(0, MAX_SLEEP_MS));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms as u64)) => {}
            _ = shared.warnings.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs the notify command with `expiring` for the credential's forecast
/// if it is within the warning and not yet warned of. In a fleet every
/// member's queue comes due: the store's compare-and-set
/// (`Backend::note_warned`) lets one of them notify. A store that cannot
/// answer does not silence the warning (this member notifies: once more
/// rather than never).
async fn warn_if_due(shared: &Arc<Shared>, cred: &Arc<Credential>) {
    let warn = warn_secs(cred, &shared.config().refresh);
    let now = shared.clock.now();
    let Some(at) = cred.with_live(|l| {
        let f = l.forecast.get();
        f.at.filter(|at| !f.warned && at.saturating_sub(warn) <= now)
    }) else {
        // Moved later meanwhile: planned again for the new time.
        watch_warning(shared, cred);
        return;
    };
    // The command's place first: a warning noted as given whose command
    // could not start would be lost for good.
    let Some(slot) = super::notify::expiring_slot(shared) else {
        tracing::debug!(credential = %cred.name, "the expiring notification waits for a notify command to end");
        shared
            .warnings
            .schedule(&cred.name, shared.clock.now_ms() + SLOT_WAIT_MS);
        return;
    };
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    let mine = match blocking(move || store.note_warned(&name, incarnation, at)).await {
        Ok(true) => true,
        Ok(false) => not_noted(shared, cred, at).await,
        Err(e) => {
            tracing::warn!(credential = %cred.name, error = %e, "could not note the refresh token's warning in the store; notifying all the same");
            true
        }
    };
    cred.with_live(|l| {
        if l.forecast.at() == Some(at) {
            l.forecast = Forecast {
                at: Some(at),
                warned: true,
            }
            .into();
        }
    });
    // Every member's event streams hear of it; one member runs the command.
    shared
        .events
        .publish(&cred.name, crate::state::events::Kind::Expiring);
    if !mine {
        return;
    }
    let reason = expiring_reason(at, now);
    tracing::warn!(credential = %cred.name, refresh_expires_at = at, "{reason}");
    super::notify::expiring(shared, slot, &cred.name, &reason);
}

/// How long (ms) an `expiring` notification waits when every notify
/// command place is taken before it tries again.
const SLOT_WAIT_MS: i64 = 1_000;

/// `note_warned` found no row to note the warning of `at` in: the row is
/// read again. Someone else noted it (the row says so): not this member's
/// to notify. The row holds the refresh token this member holds, with
/// another forecast (a save that failed and was retried with an older
/// one): this member's is written, warned, and it notifies. The row moved
/// on (another member's rotation): that forecast is the row's concern, not
/// this one's.
async fn not_noted(shared: &Arc<Shared>, cred: &Arc<Credential>, at: i64) -> bool {
    let store = shared.store.clone();
    let names = vec![cred.name.to_string()];
    let row = match blocking(move || store.load_named(&names)).await {
        Ok(rows) => rows.into_iter().find(|r| r.incarnation == cred.incarnation),
        Err(e) => {
            tracing::warn!(credential = %cred.name, error = %e, "could not read the row after noting the warning failed; notifying all the same");
            return true;
        }
    };
    let Some(row) = row else {
        return false;
    };
    if row.forecast.at == Some(at) {
        return false;
    }
    let (generation, fence) = cred.with_live(|l| (l.generation, l.fence));
    if row.generation != generation {
        return false;
    }
    let warned = Forecast {
        at: Some(at),
        warned: true,
    };
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    if let Err(e) =
        blocking(move || store.save_forecast(&name, incarnation, Some(fence), warned)).await
    {
        tracing::info!(credential = %cred.name, error = %e, "the warned forecast could not be written over the row's older one");
    }
    true
}

/// The notify command's `TOKEND_REASON` for a forecast at `at`.
fn expiring_reason(at: i64, now: i64) -> String {
    format!(
        "the refresh token expires at {} (in {} s): log in before then",
        crate::state::credential::format_time(at),
        at.saturating_sub(now).max(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep_alive: bool) -> RefreshPolicy {
        RefreshPolicy {
            keep_alive,
            ..RefreshPolicy::default()
        }
    }

    /// A Shared over a fresh SQLite store holding one bearer row, `up`.
    fn one_credential(dir: &std::path::Path) -> (Arc<Shared>, Arc<Credential>) {
        use crate::store::seal::Sealer;
        let store: crate::store::Store = Arc::new(
            crate::store::SqliteStore::open(&dir.join("t.db"), Sealer::from_key(&[1; 32])).unwrap(),
        );
        let row = crate::store::sqlite::tests::bearer("up", "tok");
        store.insert(&row, false).unwrap();
        let stored = store.load_all().unwrap().remove(0);
        let config = crate::config::Config::default();
        let policy = crate::config::access::Policy::for_config(&config).unwrap();
        let paths = crate::config::paths::Paths::resolve(false, &Default::default());
        let shared = Shared::new(store, paths, config, policy);
        let cred = Arc::new(Credential::from_stored(stored));
        shared.registry.insert(cred.clone());
        (shared, cred)
    }

    /// Review of issue 21, item 5: the refresh token is read for
    /// introspection only while nobody may be sending it: not while the
    /// row holds another member's journal mark.
    #[tokio::test]
    async fn a_marked_refresh_token_is_not_introspected() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, cred) = one_credential(dir.path());
        cred.with_live(|l| l.refresh_token = Some(tokend_proto::Secret::new("rt")));
        let generation = cred.with_live(|l| l.generation);
        assert!(held_unmarked(&shared, &cred, generation).await.is_some());
        assert!(
            held_unmarked(&shared, &cred, generation + 1)
                .await
                .is_none()
        );
        // Another member marks the row (it is about to send the token).
        let fence = cred.with_live(|l| l.fence);
        let mark = crate::store::NewMark {
            at_ms: shared.clock.now_ms(),
            lease_ms: 60_000,
        };
        shared
            .store
            .mark_refresh("up", cred.incarnation, fence, &mark)
            .unwrap();
        assert!(held_unmarked(&shared, &cred, generation).await.is_none());
    }

    /// Review of issue 21, item 4: a row that does not hold the forecast
    /// in memory (a save retried with an older one wrote it over) refuses
    /// the note; that is not "someone else warned": the row is read
    /// again, this member's forecast written, warned, and it notifies.
    #[tokio::test]
    async fn a_row_that_lost_the_forecast_is_given_it_back_warned() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, cred) = one_credential(dir.path());
        let store = shared.store.clone();
        // Memory holds a forecast the row lost; it is due (within 3 days).
        let at = shared.clock.now() + 60;
        cred.with_live(|l| {
            l.forecast = Forecast {
                at: Some(at),
                warned: false,
            }
            .into()
        });
        warn_if_due(&shared, &cred).await;
        let row = store.load_all().unwrap().remove(0);
        assert_eq!(
            row.forecast,
            Forecast {
                at: Some(at),
                warned: true
            }
        );
        assert!(cred.with_live(|l| l.forecast.get().warned));
    }

    #[test]
    fn the_answer_says_when_or_that_there_is_no_limit() {
        assert_eq!(
            from_answer(RefreshLifetime::Secs(120), 1_000_500),
            (Some(1_120), false)
        );
        assert_eq!(from_answer(RefreshLifetime::Unlimited, 0), (None, false));
        assert_eq!(from_answer(RefreshLifetime::Unsaid, 0), (None, true));
    }

    #[test]
    fn a_warning_is_given_once_while_the_forecast_stays_within_it() {
        let warned = Forecast {
            at: Some(1_000),
            warned: true,
        };
        // The same forecast (rounding): still warned.
        assert!(carries_warning(warned, Some(1_001), 0, 10));
        // An inactivity limit moved it, but still within the warning.
        assert!(carries_warning(warned, Some(1_050), 900, 200));
        // Moved beyond the warning: a new warning when it comes within.
        assert!(!carries_warning(warned, Some(5_000), 900, 200));
        assert!(!carries_warning(Forecast::default(), Some(1_000), 900, 200));
        assert!(!carries_warning(warned, None, 900, 200));
    }

    #[test]
    fn keep_alive_refreshes_before_a_forecast_that_moves() {
        // Off by default.
        assert_eq!(keep_alive_due(&policy(false), 10, 1_000, 0, true), None);
        // A tenth of what is left when that is more than the warning.
        assert_eq!(
            keep_alive_due(&policy(true), 10, 1_000, 0, true),
            Some(900_000)
        );
        // The warning when longer, but no sooner than halfway.
        assert_eq!(
            keep_alive_due(&policy(true), 300, 1_000, 0, true),
            Some(700_000)
        );
        assert_eq!(
            keep_alive_due(&policy(true), 259_200, 1_000, 0, true),
            Some(500_000)
        );
        // An absolute limit (it did not move), or one already past: nothing.
        assert_eq!(keep_alive_due(&policy(true), 10, 1_000, 0, false), None);
        assert_eq!(keep_alive_due(&policy(true), 10, 1_000, 1_000, true), None);
    }
}
