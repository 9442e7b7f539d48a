//! The optional notify command, run once per state transition (docs/DESIGN.md §4.5).

use crate::config::Config;
use crate::state::Shared;
use crate::state::events::Kind;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokend_proto::CredentialState;

/// At most this many notify commands run at once. A burst of transitions
/// (a database writer touching every row, which makes every credential
/// untrusted at once; a provider outage) must not start a shell per
/// credential: the ones beyond are logged instead.
const MAX_RUNNING: usize = 16;

/// Notify commands running now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One running notify command, counted until dropped.
struct Running;

impl Running {
    fn start() -> Option<Running> {
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_RUNNING).then_some(n + 1)
            })
            .ok()
            .map(|_| Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the configured command (`notify_command` in `config`), if any, in
/// the background with the credential, the new state and the reason in its
/// environment. No secret is passed to it. With [`MAX_RUNNING`] already
/// running, the transition is only logged.
pub fn transition(shared: &Shared, name: &str, state: CredentialState, reason: Option<&str>) {
    shared.events.publish(name, Kind::State);
    run(&shared.config(), name, state.as_str(), reason);
}

/// The notify command for a state found at start-up, before any event
/// stream can listen.
pub fn at_start(config: &Config, name: &str, state: CredentialState, reason: Option<&str>) {
    run(config, name, state.as_str(), reason);
}

/// A place for the `expiring` notify command, held before the warning is
/// noted as given: a warning is never noted when its command cannot run.
pub struct Slot(Option<Running>);

/// The [`Slot`] for an `expiring` command: `None` while [`MAX_RUNNING`]
/// commands run (the warning waits for one to end); an empty one when no
/// command is configured (there is nothing to wait for).
pub fn expiring_slot(shared: &Shared) -> Option<Slot> {
    if shared.config().notify_command.is_none() {
        return Some(Slot(None));
    }
    Running::start().map(|r| Slot(Some(r)))
}

/// Runs the notify command with `TOKEND_STATE=expiring` in the `slot`
/// held: the refresh token's forecast came within
/// `refresh.warn_before_secs` (`token/forecast.rs`). Not a state of the
/// credential, which still works.
pub fn expiring(shared: &Shared, slot: Slot, name: &str, reason: &str) {
    let config = shared.config();
    let (Some(command), Some(running)) = (config.notify_command.as_deref(), slot.0) else {
        return;
    };
    spawn(command, running, name, EXPIRING, Some(reason));
}

/// `TOKEND_STATE` of [`expiring`].
pub const EXPIRING: &str = "expiring";

fn run(config: &Config, name: &str, state: &str, reason: Option<&str>) {
    let Some(command) = config.notify_command.as_deref() else {
        return;
    };
    let Some(running) = Running::start() else {
        tracing::warn!(credential = %tokend_proto::logged(name), state, "notify command not run: {MAX_RUNNING} are running already");
        return;
    };
    spawn(command, running, name, state, reason);
}

fn spawn(command: &str, running: Running, name: &str, state: &str, reason: Option<&str>) {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("TOKEND_CREDENTIAL", name)
        .env("TOKEND_STATE", state)
        .env("TOKEND_REASON", reason.unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match cmd.spawn() {
        Ok(mut child) => {
            let name = name.to_string();
            tokio::spawn(async move {
                let _running = running;
                match child.wait().await {
                    Ok(status) if !status.success() => {
                        tracing::warn!(credential = %tokend_proto::logged(&name), %status, "notify command failed")
                    }
                    Err(e) => {
                        tracing::warn!(credential = %tokend_proto::logged(&name), error = %e, "notify command failed")
                    }
                    Ok(_) => {}
                }
            });
        }
        Err(e) => {
            tracing::warn!(credential = %tokend_proto::logged(name), error = %e, "cannot run the notify command")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_the_cap_run_at_once() {
        let held: Vec<Running> = std::iter::from_fn(Running::start).collect();
        assert_eq!(held.len(), MAX_RUNNING);
        assert!(Running::start().is_none());
        drop(held);
        assert!(Running::start().is_some());
    }
}
