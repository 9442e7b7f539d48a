//! One credential as the running daemon holds it: fixed settings, plus the
//! live token state behind a short `std::sync::Mutex`.

use crate::store::{Forecast, StoredCredential};
use std::num::NonZeroI64;
use std::sync::Mutex;
use tokend_proto::{
    CheckReport, CredentialInfo, CredentialSpec, CredentialState, CredentialSummary, Principal,
    Secret,
};

/// A wall-clock time in Unix seconds, or none: 8 bytes where an
/// `Option<i64>` takes 16, for the four times every credential in memory
/// carries. No credential has a time of exactly 1970-01-01T00:00:00, which
/// stands for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp(Option<NonZeroI64>);

impl Stamp {
    pub fn get(self) -> Option<i64> {
        self.0.map(NonZeroI64::get)
    }
}

impl From<Option<i64>> for Stamp {
    fn from(secs: Option<i64>) -> Self {
        Stamp(secs.and_then(NonZeroI64::new))
    }
}

/// A refresh generation or none, in 8 bytes where an `Option<i64>` takes
/// 16 (with `Stamp` and `Packed`, this is what keeps [`Live`] from growing
/// when the forecast came). Generations are never negative: -1 is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeGen(i64);

impl Default for MaybeGen {
    fn default() -> Self {
        MaybeGen(-1)
    }
}

impl MaybeGen {
    pub fn get(self) -> Option<i64> {
        (self.0 >= 0).then_some(self.0)
    }
}

impl From<Option<i64>> for MaybeGen {
    fn from(generation: Option<i64>) -> Self {
        MaybeGen(generation.filter(|g| *g >= 0).unwrap_or(-1))
    }
}

/// A refresh token's [`Forecast`] in 8 bytes, where the time and the flag
/// would take 16 with padding: 0 is none, `t` a forecast of `t` not yet
/// warned of, `-t` one warned of. Forecasts are Unix times after 1970.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packed(i64);

impl Packed {
    pub fn get(self) -> Forecast {
        Forecast {
            at: (self.0 != 0).then(|| self.0.saturating_abs()),
            warned: self.0 < 0,
        }
    }

    /// The forecast's time alone: cheap, for `show`, `list` and metrics.
    pub fn at(self) -> Option<i64> {
        (self.0 != 0).then(|| self.0.saturating_abs())
    }
}

impl From<Forecast> for Packed {
    fn from(f: Forecast) -> Self {
        match f.at.filter(|at| *at > 0) {
            Some(at) if f.warned => Packed(-at),
            Some(at) => Packed(at),
            None => Packed(0),
        }
    }
}

/// The kind of a credential, which never changes (a replace makes a new
/// credential): read without the live lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bearer,
    OAuth2,
    ClientCredentials,
}

impl Kind {
    pub fn of(spec: &CredentialSpec) -> Kind {
        match spec {
            CredentialSpec::Bearer { .. } => Kind::Bearer,
            CredentialSpec::OAuth2(_) => Kind::OAuth2,
            CredentialSpec::ClientCredentials(_) => Kind::ClientCredentials,
        }
    }
}

/// The parts of a credential that change while the daemon runs.
#[derive(Debug, Clone)]
pub struct Live {
    /// The settings: `tokenctl edit` changes some of them in place (the
    /// description, the proxy's upstream, a check URL, scopes, git hosts),
    /// never the endpoints or the client a refresh uses (docs/RULES.md,
    /// "Editing a credential").
    pub spec: CredentialSpec,
    pub description: Box<str>,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// Bumped on every new access token; `reject` names the one it saw.
    pub generation: u64,
    pub expires_at: Stamp,
    /// The same deadline on the monotonic clock, in ms (see
    /// `clock.rs`): a backwards step of the wall clock must not make
    /// an expired token look valid.
    pub expires_mono: Stamp,
    pub state: CredentialState,
    /// Text that rarely changes is kept as `Box<str>`: 8 bytes less than a
    /// `String` each, times every credential in memory.
    pub reason: Option<Box<str>>,
    pub allowed: Vec<Principal>,
    pub last_refresh_at: Stamp,
    pub last_use_at: Stamp,
    /// `last_use_at` changed since it was last written to the store.
    pub use_unsaved: bool,
    pub next_refresh_at: Stamp,
    pub last_error: Option<Box<str>>,
    /// Boxed, like `uncommitted`: rarely set, and 100,000 credentials
    /// should not each carry room for it.
    pub last_check: Option<Box<CheckReport>>,
    /// A refresh is in flight (shown as `refreshing` when no valid token is held).
    pub refreshing: bool,
    /// Consecutive transient failures, for backoff.
    pub failures: u32,
    /// Refresh attempts completed. A waiter that looked when N had completed
    /// does not start another once N+1 has: it takes that attempt's outcome
    /// (one refresh serves every concurrent caller; a failing endpoint is
    /// not hammered). Only compared for equality, so it wraps: four
    /// billion attempts between a look and the check are not possible.
    pub attempts: u32,
    /// Tokens of this credential handed out since the daemon started,
    /// modulo 2³² (each wrap is counted beside, in `state/metrics.rs`).
    /// With `attempts` it fills eight bytes: `Live` stays 280 bytes (a
    /// test pins it), as the 100,000-credential memory goal needs.
    pub served: u32,
    /// No new attempt before this time (monotonic ms, see
    /// `Clock::mono_ms` in `clock.rs`): backoff after a transient error
    /// or a provider's `Retry-After`. Monotonic, so a clock step can neither
    /// cut it short nor stretch it.
    pub retry_not_before_ms: i64,
    /// Where the last refresh stands with the store's journal.
    pub journal: Journal,
    /// The row's refresh generation as last read or written here: every
    /// write about a refresh is a compare-and-set on it (docs/RULES.md,
    /// "Fencing").
    pub fence: i64,
    /// A journal mark this process may have made at this generation and
    /// certainly sent nothing under (the mark's answer was lost, or the
    /// send budget ran out and clearing the mark failed): found in the row,
    /// it is no doubt, and is replaced without waiting for its lease.
    pub unsent_mark: MaybeGen,
    /// The row's journal mark and backoff deadline as first read here
    /// (see [`Watch`]); boxed, since most credentials never have one.
    pub lease_watch: Option<Box<Watch>>,
    pub retry_watch: Option<Box<Watch>>,
    /// The row was found not vouched for by the key (`store/binding.rs`):
    /// nothing is sent for this credential and nothing is served, until a
    /// trusted row replaces the whole credential. Never cleared in place:
    /// the settings held may be the untrusted row's.
    pub untrusted: bool,
    /// When this process last started a call to the provider for a new
    /// token, or let a forced refresh by a user who is not an admin go on
    /// (monotonic ms; 0: never): such a refresh starts no call within
    /// `refresh.min_forced_interval_secs` of it (`token/forced.rs`).
    pub last_call_mono: i64,
    /// When the refresh token is expected to stop working, and whether
    /// `expiring` was notified (`token/forecast.rs`).
    pub forecast: Packed,
}

/// A deadline read from a row, as this process first saw it: what was
/// left then, and when by the monotonic clock. What is left later is never
/// more than that less the monotonic time since, so a wall clock that
/// steps back (SQLite's is this host's) cannot stretch a lease or a
/// backoff (docs/RULES.md, "Two clocks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// Which deadline: its time as written in the row.
    pub key: i64,
    pub first_mono: i64,
    pub left: i64,
}

impl Watch {
    /// What is left of deadline `key`, `left` by the row's clock now.
    pub fn bound(slot: &mut Option<Box<Watch>>, key: i64, left: i64, mono: i64) -> i64 {
        match slot.as_deref() {
            Some(w) if w.key == key => left.min(w.left.saturating_sub(mono - w.first_mono)).max(0),
            _ => {
                *slot = Some(Box::new(Watch {
                    key,
                    first_mono: mono,
                    left,
                }));
                left
            }
        }
    }
}

/// The refresh journal of one credential (docs/RULES.md, "In-doubt
/// refreshes"): one state, so that "in doubt" and "saved" can never both be
/// true.
#[derive(Debug, Clone, Default)]
pub enum Journal {
    /// The outcome of the last refresh is known and saved.
    #[default]
    Settled,
    /// The held refresh token may have been spent: the row holds a journal
    /// mark (a refresh was sent, or about to be, and its outcome never
    /// learned: a stop, a timeout, a dropped connection, another member).
    /// It is never sent again before the mark's lease has ended and
    /// introspection says it is still active.
    InDoubt,
    /// A token set was received and is served, but the store refused to
    /// save it: the save is retried before anything else, and until it
    /// succeeds the store's journal stays set, so a restart treats the
    /// stored (spent) refresh token as in doubt.
    Unsaved(Box<crate::store::TokenUpdate>),
}

impl Journal {
    pub fn in_doubt(&self) -> bool {
        matches!(self, Journal::InDoubt)
    }

    pub fn unsaved(&self) -> Option<&crate::store::TokenUpdate> {
        match self {
            Journal::Unsaved(update) => Some(update),
            _ => None,
        }
    }
}

impl Live {
    /// How long the access token held lasted from the refresh that brought
    /// it (its expiry less the refresh's start), when both are known: what
    /// the provider's next token can be expected to last.
    pub fn lifetime_secs(&self) -> Option<i64> {
        let (expires, refreshed) = (self.expires_at.get()?, self.last_refresh_at.get()?);
        Some(expires.saturating_sub(refreshed))
    }

    /// Notes a token handed out at `now_secs`: counted, and its last-use
    /// time (see [`Use`]).
    pub fn note_use(&mut self, now_secs: i64) -> Use {
        self.served = self.served.wrapping_add(1);
        let served_wrapped = self.served == 0;
        if self.last_use_at.get() == Some(now_secs) {
            return Use {
                dirty: false,
                served_wrapped,
            };
        }
        self.last_use_at = Some(now_secs).into();
        self.use_unsaved = true;
        Use {
            dirty: true,
            served_wrapped,
        }
    }
}

/// What handing out a token changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Use {
    /// The last-use time changed, and waits for the next flush to the
    /// store: a busy credential dirties it at most once a second.
    pub dirty: bool,
    /// [`Live::served`] went round to zero.
    pub served_wrapped: bool,
}

/// A credential. Its name, kind, owner, client secret and incarnation never
/// change (a replace makes a new one); its settings may (`Live::spec`).
#[derive(Debug)]
pub struct Credential {
    pub name: Box<str>,
    pub kind: Kind,
    pub owner_uid: u32,
    pub created_at: i64,
    /// Which credential of this name (see `StoredCredential::incarnation`).
    pub incarnation: i64,
    pub client_secret: Option<Secret>,
    /// A `std::sync::Mutex`: held for a few instructions, never across
    /// `.await` (the token hot path takes it once per request).
    live: Mutex<Live>,
    /// Held for the whole of a refresh or a login's code exchange: at most
    /// one per credential (docs/DESIGN.md §4.2). The invariant it keeps:
    /// it is held from before the journal mark until the provider's answer
    /// is committed (or the failure recorded), so no second request with the
    /// same refresh token can start in between.
    ///
    /// Lock order: this lock may be held while taking `live`, the registry's,
    /// the schedule's or the store's locks (all short `std::sync` ones);
    /// never the other way round. Two refresh locks are held together only
    /// by the graceful stop, which takes them one at a time
    /// (docs/ARCHITECTURE.md).
    pub refresh_lock: tokio::sync::Mutex<()>,
}

impl Credential {
    pub fn from_stored(s: StoredCredential) -> Credential {
        Credential {
            kind: Kind::of(&s.spec),
            live: Mutex::new(Live {
                spec: s.spec,
                description: s.description.into(),
                access_token: s.access_token,
                refresh_token: s.refresh_token,
                generation: s.generation,
                expires_at: s.expires_at.into(),
                expires_mono: Stamp::default(),
                state: s.state,
                reason: s.reason.map(Into::into),
                allowed: s.allowed,
                last_refresh_at: s.last_refresh_at.into(),
                last_use_at: s.last_use_at.into(),
                use_unsaved: false,
                next_refresh_at: s.next_refresh_at.into(),
                last_error: s.last_error.map(Into::into),
                last_check: s.last_check.map(Box::new),
                refreshing: false,
                failures: 0,
                served: 0,
                attempts: 0,
                retry_not_before_ms: 0,
                journal: if s.fence.mark.is_some() {
                    Journal::InDoubt
                } else {
                    Journal::Settled
                },
                fence: s.fence.generation,
                unsent_mark: MaybeGen::default(),
                lease_watch: None,
                retry_watch: None,
                untrusted: s.untrusted,
                last_call_mono: 0,
                forecast: s.forecast.into(),
            }),
            incarnation: s.incarnation,
            name: s.name.into(),
            owner_uid: s.owner_uid,
            created_at: s.created_at,
            client_secret: s.client_secret,
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings as they are now (a copy: `edit` may change them).
    pub fn spec(&self) -> CredentialSpec {
        self.with_live(|l| l.spec.clone())
    }

    /// Where and how this credential asks for tokens, from `spec` (a copy
    /// of its settings: [`Credential::spec`]); `None` for a bearer token,
    /// which has no token endpoint.
    pub fn endpoint<'a>(
        &'a self,
        spec: &'a CredentialSpec,
    ) -> Option<crate::provider::Endpoint<'a>> {
        let (token_url, client_id, client_auth, endpoints) = match spec {
            CredentialSpec::OAuth2(s) => (&s.token_url, &s.client_id, s.client_auth, &s.endpoints),
            CredentialSpec::ClientCredentials(s) => {
                (&s.token_url, &s.client_id, s.client_auth, &s.endpoints)
            }
            CredentialSpec::Bearer { .. } => return None,
        };
        Some(crate::provider::Endpoint {
            token_url,
            introspection_url: endpoints.introspection_url.as_deref(),
            client_id,
            client_secret: self.client_secret.as_ref(),
            client_auth,
        })
    }

    /// When the refresh token is expected to stop working (Unix seconds),
    /// if known: one short lock, for metrics and listings.
    pub fn refresh_expires_at(&self) -> Option<i64> {
        self.with_live(|l| l.forecast.at())
    }

    /// Whether the row this credential came from, or one read since, is
    /// not vouched for by the key: then nothing may be sent for it.
    pub fn untrusted(&self) -> bool {
        self.with_live(|l| l.untrusted)
    }

    /// Runs `f` on the live state. Keep `f` short: this is the token hot path.
    pub fn with_live<T>(&self, f: impl FnOnce(&mut Live) -> T) -> T {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn live(&self) -> Live {
        self.with_live(|l| l.clone())
    }

    /// The state as shown: `refreshing` while a refresh runs and no valid token is held.
    fn shown_state(&self, live: &Live, now: i64) -> CredentialState {
        let valid = live.access_token.is_some() && live.expires_at.get().is_none_or(|e| e > now);
        if live.refreshing && !valid && live.state == CredentialState::Ready {
            CredentialState::Refreshing
        } else {
            live.state
        }
    }

    /// The state as shown and the access token's expiry, for a metrics
    /// scrape: no copy of the live state (nor of its secrets) is made.
    pub fn state_and_expiry(&self, now: i64) -> (CredentialState, Option<i64>) {
        self.with_live(|l| (self.shown_state(l, now), l.expires_at.get()))
    }

    pub fn info(&self, now: i64) -> CredentialInfo {
        let live = self.live();
        CredentialInfo {
            name: self.name.to_string(),
            description: live.description.to_string(),
            spec: live.spec.clone(),
            owner_uid: self.owner_uid,
            allowed: live.allowed.clone(),
            // Not kept in memory (`show` reads them from the store).
            owner: None,
            grantees: Vec::new(),
            state: self.shown_state(&live, now),
            reason: live.reason.as_deref().map(Into::into),
            has_token: live.access_token.is_some(),
            has_refresh_token: live.refresh_token.is_some(),
            created_at: self.created_at,
            expires_at: live.expires_at.get(),
            last_refresh_at: live.last_refresh_at.get(),
            last_use_at: live.last_use_at.get(),
            next_refresh_at: live.next_refresh_at.get(),
            last_error: live.last_error.as_deref().map(Into::into),
            last_check: live.last_check.as_deref().cloned(),
            refresh_expires_at: live.forecast.at(),
        }
    }

    pub fn summary(&self, now: i64) -> CredentialSummary {
        let live = self.live();
        CredentialSummary {
            name: self.name.to_string(),
            kind: live.spec.kind().to_string(),
            state: self.shown_state(&live, now),
            reason: live.reason.as_deref().map(Into::into),
            expires_at: live.expires_at.get(),
            next_refresh_at: live.next_refresh_at.get(),
            refresh_expires_at: live.forecast.at(),
        }
    }
}

/// A wall-clock time (Unix seconds) as people read it in messages, e.g.
/// `Tue, 01 Dec 2026 23:09:56 GMT`.
pub fn format_time(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(secs))
        .map_or_else(|| format!("{secs} s after 1970"), httpdate::fmt_http_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Credential::from_stored(crate::store::sqlite::tests::bearer("a", "t")).live()
    }

    #[test]
    fn a_stamp_keeps_any_time_but_the_epoch_itself() {
        for t in [Some(1_795_000_000), Some(-5), Some(i64::MAX), None] {
            assert_eq!(Stamp::from(t).get(), t);
        }
        assert_eq!(Stamp::from(Some(0)).get(), None);
        assert_eq!(std::mem::size_of::<Stamp>(), 8);
    }

    /// 100,000 credentials must fit in 64 MB (docs/BENCHMARKS.md): a
    /// field added to every credential must find room, not grow it.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_credentials_live_state_keeps_its_size() {
        assert_eq!(std::mem::size_of::<Live>(), 280);
    }

    #[test]
    fn the_served_count_wraps_and_says_so() {
        let mut l = live();
        l.served = u32::MAX - 1;
        assert!(!l.note_use(1).served_wrapped);
        assert!(l.note_use(1).served_wrapped);
        assert_eq!(l.served, 0);
    }

    #[test]
    fn a_packed_forecast_keeps_its_time_and_its_warning() {
        for at in [None, Some(1), Some(1_796_166_596), Some(i64::MAX)] {
            for warned in [false, true] {
                let f = Forecast { at, warned };
                let back = Packed::from(f).get();
                assert_eq!(back.at, at);
                assert_eq!(back.warned, warned && at.is_some());
            }
        }
        for g in [None, Some(0), Some(7), Some(i64::MAX)] {
            assert_eq!(MaybeGen::from(g).get(), g);
        }
    }

    /// 100,000 credentials must fit the memory goal (docs/BENCHMARKS.md):
    /// the forecast came in 8 bytes that `unsent_mark` gave up, so the
    /// live state did not grow. A new field finds room the same way, or
    /// goes in a side table for the credentials that have it.
    #[test]
    fn the_live_state_stays_280_bytes() {
        assert_eq!(std::mem::size_of::<Live>(), 280);
    }

    #[test]
    fn a_use_dirties_the_last_use_time_once_a_second() {
        let mut l = live();
        assert!(!l.use_unsaved);
        assert!(l.note_use(100).dirty);
        assert!(l.use_unsaved);
        l.use_unsaved = false;
        assert!(!l.note_use(100).dirty, "same second: nothing new to write");
        assert!(!l.use_unsaved);
        assert!(l.note_use(101).dirty);
        assert_eq!(l.served, 3);
        assert_eq!(l.last_use_at.get(), Some(101));
    }
}
