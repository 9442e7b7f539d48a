//! The optional notify command, run once per state transition (docs/DESIGN.md §4.5).

use crate::config::Config;
use tokend_proto::CredentialState;

/// Runs the configured command (`notify_command` in `config`), if any, in
/// the background with the credential, the new state and the reason in its
/// environment. No secret is passed to it.
pub fn transition(config: &Config, name: &str, state: CredentialState, reason: Option<&str>) {
    let Some(command) = config.notify_command.as_deref() else {
        return;
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("TOKEND_CREDENTIAL", name)
        .env("TOKEND_STATE", state.as_str())
        .env("TOKEND_REASON", reason.unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match cmd.spawn() {
        Ok(mut child) => {
            let name = name.to_string();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if !status.success() => {
                        tracing::warn!(credential = %name, %status, "notify command failed")
                    }
                    Err(e) => {
                        tracing::warn!(credential = %name, error = %e, "notify command failed")
                    }
                    Ok(_) => {}
                }
            });
        }
        Err(e) => tracing::warn!(credential = %name, error = %e, "cannot run the notify command"),
    }
}
