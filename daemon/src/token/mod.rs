//! The token lifecycle of docs/DESIGN.md §4 and docs/RULES.md: serve a valid token,
//! refresh ahead, one refresh per credential at a time, commit before
//! publishing, back off on transient errors, stop on permanent ones, and
//! never send a refresh token whose fate is unknown.
//!
//! Every refresh runs in its own spawned task and callers await its handle:
//! a caller that gives up (timeout, disconnect) never cancels a refresh
//! half-way, between the provider's answer and the commit.

mod adopt;
mod claim;
mod commit;
mod doubt;
mod forced;
pub mod forecast;
mod outcome;
mod plan;
mod refresh;
pub mod remote;
mod serve;
mod validity;

pub mod check;
pub mod notify;
pub mod refresher;

pub use adopt::warn_untrusted;
pub use claim::Trigger;
pub use commit::{Origin, commit_and_publish, save_before_stop};
pub use forced::Forcer;
pub use plan::{
    MAX_LIFETIME_SECS, MIN_LIFETIME_SECS, plan_refresh, random_unit, schedule_loaded, token_update,
};
pub use refresh::refresh;
pub use serve::{force_refresh, held, reject, token};
pub use validity::trusted;
