//! The refresh transaction: one attempt per credential at a time, under its
//! refresh lock, from the row re-read under the store's lock through the
//! fenced journal mark and the provider's answer to the fenced commit
//! (docs/RULES.md, "Fencing" and "In-doubt refreshes").

use super::adopt::reread;
use super::claim::{self, Entry, Trigger};
use super::commit::{Origin, commit_and_publish, save_uncommitted};
use super::doubt::{no_answer, settle_doubt, spent, without_refresh_token};
use super::outcome::{Pace, permanent, transient};
use super::plan::{loaded_due, token_update};
use super::validity::{MIN_VALID_MS, not_usable, timeout, valid_for};
use crate::error::Error;
use crate::provider::{self, Endpoint, Grant, ProviderError};
use crate::state::Shared;
use crate::state::credential::{Credential, Journal, Watch};
use crate::state::metrics::RefreshResult;
use crate::store::{NewMark, StoreError, TokenUpdate, blocking};
use std::sync::Arc;
use tokend_proto::{CredentialSpec, CredentialState, Secret};
use tokio::sync::{MutexGuard, SemaphorePermit};

/// The longest time between the moment a journal mark is sent to the
/// store and the moment its refresh token leaves for the provider. A
/// member that finds more time went by (it was paused: `SIGSTOP`, a frozen
/// VM, a long stall) sends nothing: its lease may be running out.
pub const SEND_BUDGET_MS: i64 = 1_000;

/// What a lease adds to the send budget and the HTTP timeout: the
/// provider's own processing after the client gave up, and clock rates.
pub const LEASE_MARGIN_MS: i64 = 3_000;

/// How long a journal mark keeps everybody else from sending or
/// introspecting its refresh token: the send budget, the whole request,
/// and a margin (docs/RULES.md, "Fencing").
pub fn lease_ms(shared: &Shared) -> i64 {
    let http_ms = i64::try_from(shared.config().refresh.http_timeout_secs)
        .unwrap_or(i64::MAX / 2_000)
        .saturating_mul(1000);
    SEND_BUDGET_MS
        .saturating_add(http_ms)
        .saturating_add(LEASE_MARGIN_MS)
}

/// One refresh attempt, unless another attempt ran since the caller looked
/// (`seen_attempts`). Holds the credential's refresh lock throughout, and
/// the store's (across hosts in a fleet) from the re-read of the row on.
pub async fn refresh(
    shared: Arc<Shared>,
    cred: Arc<Credential>,
    seen_attempts: u32,
    trigger: Trigger,
) -> Result<(), Error> {
    let (_guard, early_slot) = lock_and_slot(&shared, &cred, trigger).await?;
    if cred.untrusted() {
        return Err(not_usable(&cred));
    }
    if !shared.registry.is_current(&cred) {
        return Err(Error::UnknownCredential(cred.name.to_string()));
    }
    if shared.is_stopping() {
        return Err(Error::Busy(
            "tokend is stopping; no refresh starts now".into(),
        ));
    }
    let unsaved = cred.with_live(|l| l.journal.unsaved().is_some());
    if let Some(outcome) = taken_over(&shared, &cred, seen_attempts, unsaved, trigger) {
        if trigger == Trigger::Schedule {
            keep_scheduled(&shared, &cred);
        }
        return outcome;
    }
    if !unsaved && cred.with_live(|l| l.state) != CredentialState::Ready {
        return Err(not_usable(&cred));
    }
    let spec = cred.spec();
    let Some(endpoint) = cred.endpoint(&spec) else {
        // A bearer token: nothing to refresh.
        return Ok(());
    };
    // Whatever can fail on this host fails before the journal is read or
    // written: a local failure leaves it exactly as it was.
    let http = match shared.http() {
        Ok(http) => http,
        Err(e) => {
            shared.count_refresh(&cred, RefreshResult::Local);
            return transient(&shared, &cred, e.to_string(), None, Pace::Local).await;
        }
    };
    let _slot = match early_slot {
        Some(slot) => slot,
        None => slot(&shared).await?,
    };
    let outcome = match claim::enter(&shared, &cred, trigger).await {
        Entry::Done(outcome) => outcome,
        Entry::Proceed(_hold) if unsaved => save_uncommitted(&shared, &cred).await,
        Entry::Proceed(_hold) => attempt(&shared, &cred, http, &spec, &endpoint).await,
    };
    // Counted once the outcome is visible: anyone who looked before now
    // takes this attempt's outcome instead of starting another.
    cred.with_live(|l| l.attempts = l.attempts.wrapping_add(1));
    outcome
}

/// The credential's refresh lock, and for the schedule a refresh slot
/// taken first. The schedule waits for its slot without the lock: in a
/// storm of due credentials that wait is long, and meanwhile another
/// member's refresh of this one can be applied (`remote.rs` waits for the
/// lock), which `taken_over` then finds instead of the store's lock. A
/// slot holder never waits for a lock (only tries it; if a client's
/// request holds it, the slot goes back and the lock is waited for
/// first), so a request holding a lock while it waits for a slot can
/// never wait on a slot holder waiting for that lock.
async fn lock_and_slot<'a>(
    shared: &'a Shared,
    cred: &'a Credential,
    trigger: Trigger,
) -> Result<(MutexGuard<'a, ()>, Option<SemaphorePermit<'a>>), Error> {
    if trigger == Trigger::Schedule {
        for _ in 0..SLOT_FIRST_TRIES {
            let slot = slot(shared).await?;
            if let Ok(guard) = cred.refresh_lock.try_lock() {
                return Ok((guard, Some(slot)));
            }
            drop(slot);
            // Whoever holds it (a request, a row being applied) is let
            // finish, then the slot is waited for again without the lock.
            drop(cred.refresh_lock.lock().await);
        }
    }
    Ok((cred.refresh_lock.lock().await, None))
}

/// How many times the schedule takes a slot and finds the lock busy
/// before it waits for the lock first, as a request does.
const SLOT_FIRST_TRIES: usize = 3;

/// The schedule's entry was taken when this attempt started; the attempt
/// whose outcome it takes normally set the next one, but not every way
/// out does (a re-read of a moved row that failed): the credential is put
/// back on the schedule by what it holds, if it is off it.
fn keep_scheduled(shared: &Shared, cred: &Credential) {
    if shared.scheduler.due_of(&cred.name).is_some() {
        return;
    }
    let now = shared.clock.now_ms();
    if let Some(at) = cred.with_live(|l| loaded_due(cred.kind, l, now)) {
        shared.scheduler.schedule(&cred.name, at.max(now));
    }
}

/// One of the `max_concurrent` places for a refresh in progress.
async fn slot(shared: &Shared) -> Result<SemaphorePermit<'_>, Error> {
    shared
        .refresh_slots
        .acquire()
        .await
        .map_err(|_| Error::Busy("shutting down".into()))
}

/// The outcome of an attempt that ran since the caller looked (here, or
/// another member's, applied from its row), when it is the caller's too:
/// a token good for what the caller needs, or the error that attempt
/// failed with. An attempt that ended with neither (another member held
/// the lock; the row moved under it) decides nothing: `None`, and the
/// caller's own attempt judges under the lock. Tokens not yet saved here
/// always go on to their fenced save.
fn taken_over(
    shared: &Shared,
    cred: &Credential,
    seen_attempts: u32,
    unsaved: bool,
    trigger: Trigger,
) -> Option<Result<(), Error>> {
    if unsaved || cred.with_live(|l| l.attempts) == seen_attempts {
        return None;
    }
    let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    let (good, last_error) = cred.with_live(|l| {
        let ready = l.state == CredentialState::Ready;
        (
            ready && valid_for(l, now, mono, trigger.adopt_ms()),
            l.last_error.clone(),
        )
    });
    if good {
        return Some(Ok(()));
    }
    last_error.map(|e| Err(Error::Provider(e.into())))
}

/// One attempt at a new token, by the credential's grant.
async fn attempt(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    spec: &CredentialSpec,
    endpoint: &Endpoint<'_>,
) -> Result<(), Error> {
    match spec {
        CredentialSpec::OAuth2(_) => refresh_grant(shared, cred, http, endpoint).await,
        CredentialSpec::ClientCredentials(spec) => {
            let grant = Grant::ClientCredentials {
                scopes: &spec.scopes,
            };
            let result = send(shared, cred, http, endpoint, &grant).await;
            conclude(shared, cred, result, None).await
        }
        CredentialSpec::Bearer { .. } => Ok(()),
    }
}

/// Sends one grant with the `refreshing` flag up, and turns a token set
/// into the update to commit.
async fn send(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    grant: &Grant<'_>,
) -> Result<TokenUpdate, ProviderError> {
    let started_ms = shared.clock.now_ms();
    super::forced::note_call(shared, cred);
    cred.with_live(|l| l.refreshing = true);
    let took = std::time::Instant::now();
    let result = provider::request(http, endpoint, grant, timeout(shared)).await;
    shared
        .metrics
        .refresh_seconds
        .observe(took.elapsed().as_secs_f64());
    cred.with_live(|l| l.refreshing = false);
    result.map(|set| token_update(cred, set, started_ms, &shared.config().refresh))
}

/// What an attempt's answer leads to. `rotating` is the endpoint of a
/// refresh-token grant, for which an answer with no known outcome puts the
/// refresh token in doubt, and any 2xx spends it; in the other grants
/// nothing rotates, and such an answer is only odd.
async fn conclude(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    result: Result<TokenUpdate, ProviderError>,
    rotating: Option<&Endpoint<'_>>,
) -> Result<(), Error> {
    shared.count_refresh(cred, result_of(&result, rotating.is_some()));
    match result {
        Ok(update) => commit_and_publish(shared, cred, update, Origin::Refresh).await,
        // The provider answered with an error, or nothing was sent: nothing rotated.
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) => transient(shared, cred, message, retry_after, Pace::Normal).await,
        Err(ProviderError::Unsent { message }) => {
            transient(shared, cred, message, None, Pace::Unsent).await
        }
        Err(ProviderError::Unknown { message }) => match rotating {
            Some(endpoint) => no_answer(shared, cred, endpoint, message).await,
            None => transient(shared, cred, message, None, Pace::Odd).await,
        },
        Err(ProviderError::Unusable {
            message,
            refresh_token,
        }) => match rotating {
            Some(_) => unusable_answer(shared, cred, message, refresh_token).await,
            None => transient(shared, cred, message, None, Pace::Odd).await,
        },
        Err(e) => permanent(shared, cred, &e).await,
    }
}

/// How an attempt's answer counts in `tokend_refreshes_total`: the same
/// split as [`conclude`] makes.
fn result_of(result: &Result<TokenUpdate, ProviderError>, rotating: bool) -> RefreshResult {
    match result {
        Ok(_) => RefreshResult::Ok,
        Err(ProviderError::Transient { .. }) => RefreshResult::Transient,
        Err(ProviderError::Unsent { .. }) => RefreshResult::Unsent,
        Err(ProviderError::Unknown { .. }) if rotating => RefreshResult::InDoubt,
        Err(ProviderError::Unknown { .. } | ProviderError::Unusable { .. }) => {
            RefreshResult::Unusable
        }
        Err(e) if e.needs_login() => RefreshResult::InvalidGrant,
        Err(ProviderError::Permanent { .. }) => RefreshResult::ClientError,
    }
}

/// A 2xx to a refresh that tokend cannot serve (no access token, a
/// non-Bearer type): the refresh token sent is spent whatever the body
/// says. A new refresh token in it is committed like any rotation, so the
/// grant goes on and the credential says why its token is not served;
/// without one, a login is needed (docs/RULES.md, "Token responses").
async fn unusable_answer(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    message: String,
    refresh_token: Option<Secret>,
) -> Result<(), Error> {
    let Some(refresh_token) = refresh_token else {
        let why = format!(
            "{message}, and no new refresh token: the one sent is spent, so it will not be sent again; log in again"
        );
        return spent(shared, cred, &why).await;
    };
    let why = format!(
        "{message}; its new refresh token is kept (a forced refresh uses it), but its access token cannot be served"
    );
    let update = TokenUpdate {
        access_token: None,
        refresh_token: Some(refresh_token),
        new_grant: false,
        generation: cred.with_live(|l| l.generation) + 1,
        expires_at: None,
        refreshed_at: shared.clock.now(),
        next_refresh_at: None,
        unusable: Some(why),
        // An answer tokend cannot serve is not introspected either: the
        // forecast stays unknown until a good answer.
        forecast: Default::default(),
        ask_introspection: false,
    };
    commit_and_publish(shared, cred, update, Origin::Refresh).await?;
    Err(not_usable(cred))
}

/// The refresh-token grant, the one whose every step guards the promise
/// that a refresh token is never sent twice (docs/RULES.md). The row was
/// adopted under the lock: a journal mark in it (whose lease is over)
/// made the refresh token in doubt.
async fn refresh_grant(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
) -> Result<(), Error> {
    let Some(refresh_token) = cred.with_live(|l| l.refresh_token.clone()) else {
        return without_refresh_token(shared, cred).await;
    };
    if cred.with_live(|l| l.journal.in_doubt()) {
        settle_doubt(shared, cred, http, endpoint, &refresh_token).await?;
    }
    if shared.is_stopping() {
        return Err(Error::Busy(
            "tokend is stopping; no refresh starts now".into(),
        ));
    }
    // The budget runs from before the mark is sent: the store's time of
    // the mark, where its lease starts, is later than this. Both clocks:
    // the monotonic one stops while the host is suspended, the wall clock
    // does not (a forward step only costs a skipped send).
    let (wall, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
    if let Err(e) = mark(shared, cred).await {
        return unmarked(shared, cred, e).await;
    }
    let took = budget_spent(shared, wall, mono);
    if took > SEND_BUDGET_MS {
        let message = format!(
            "nothing was sent: {took} ms went by between the journal mark and the request (at most {SEND_BUDGET_MS} ms may, or the mark's lease could run out while the request is on its way)"
        );
        // If clearing the mark fails, it is still known to be unsent.
        cred.with_live(|l| l.unsent_mark = Some(l.fence).into());
        shared.count_refresh(cred, RefreshResult::Unsent);
        return transient(shared, cred, message, None, Pace::Unsent).await;
    }
    let grant = Grant::RefreshToken(&refresh_token);
    let result = send(shared, cred, http, endpoint, &grant).await;
    conclude(shared, cred, result, Some(endpoint)).await
}

/// How long since `wall`/`mono` were read, by whichever clock moved more.
fn budget_spent(shared: &Shared, wall: i64, mono: i64) -> i64 {
    let by_mono = shared.clock.mono_ms().saturating_sub(mono);
    let by_wall = shared.clock.now_ms().saturating_sub(wall);
    by_mono.max(by_wall)
}

/// Journals the refresh before the refresh token leaves the process: a
/// compare-and-set on the generation the row was read at.
async fn mark(shared: &Arc<Shared>, cred: &Credential) -> Result<(), StoreError> {
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.clone(), cred.incarnation);
    let fence = cred.with_live(|l| l.fence);
    let mark = NewMark {
        at_ms: shared.clock.now_ms(),
        lease_ms: lease_ms(shared),
    };
    let (at_ms, lease, mono) = (mark.at_ms, mark.lease_ms, shared.clock.mono_ms());
    let result = blocking(move || store.mark_refresh(&name, incarnation, fence, &mark)).await;
    cred.with_live(|l| match &result {
        Ok(marked) => {
            l.fence = *marked;
            l.journal = Journal::InDoubt;
            l.unsent_mark = None.into();
            // The lease as written (this host's clock, for a store without
            // its own), watched on the monotonic clock from now.
            l.lease_watch = Some(Box::new(Watch {
                key: at_ms,
                first_mono: mono,
                left: lease,
            }));
        }
        // The mark may have been made with its answer lost: if the row
        // shows it, nothing was sent under it.
        Err(StoreError::Moved(_) | StoreError::Gone(_)) => {}
        Err(_) => l.unsent_mark = Some(fence + 1).into(),
    });
    result.map(|_| ())
}

/// The journal mark could not be made, so nothing is sent. A newer row
/// (another member refreshed, or marked) is taken.
async fn unmarked(
    shared: &Arc<Shared>,
    cred: &Arc<Credential>,
    e: StoreError,
) -> Result<(), Error> {
    match e {
        StoreError::Gone(_) => Err(Error::UnknownCredential(cred.name.to_string())),
        StoreError::Moved(_) => {
            reread(shared, cred).await;
            let (now, mono) = (shared.clock.now_ms(), shared.clock.mono_ms());
            if cred.with_live(|l| valid_for(l, now, mono, MIN_VALID_MS)) {
                return Ok(());
            }
            Err(Error::Busy(format!(
                "credential {:?} changed in the store while this refresh began (another member is refreshing it); nothing was sent",
                cred.name
            )))
        }
        e => {
            shared.count_refresh(cred, RefreshResult::Local);
            let message = format!("refresh not attempted, the store is not writable: {e}");
            transient(shared, cred, message, None, Pace::Local).await
        }
    }
}
