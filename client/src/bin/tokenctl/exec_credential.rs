//! `tokenctl exec-credential NAME`: a client-go exec credential plugin.
//!
//! kubectl (and every client-go program) runs the command named in a
//! kubeconfig's `users[].user.exec` and reads an `ExecCredential` from its
//! stdout. client-go caches the token until `status.expirationTimestamp`,
//! then runs the plugin again; tokend refreshes ahead of that moment.

use crate::{Failure, print_text};
use std::time::{Duration, UNIX_EPOCH};
use tokend_client::TokenReply;
use tokend_client::cli::Cli;

/// The API group and the versions of it this plugin speaks.
const GROUP: &str = "client.authentication.k8s.io";
const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The `apiVersion` to answer with: the one `$KUBERNETES_EXEC_INFO` names
/// (set by client-go), or `client.authentication.k8s.io/v1` without it.
pub fn api_version(exec_info: Option<&str>) -> Result<String, String> {
    let default = format!("{GROUP}/v1");
    let Some(info) = exec_info.filter(|i| !i.trim().is_empty()) else {
        return Ok(default);
    };
    let value: serde_json::Value = serde_json::from_str(info)
        .map_err(|e| format!("KUBERNETES_EXEC_INFO is not valid JSON: {e}"))?;
    let Some(version) = value.get("apiVersion") else {
        return Ok(default);
    };
    let supported = || {
        VERSIONS
            .iter()
            .map(|v| format!("{GROUP}/{v}"))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    match version.as_str() {
        Some(v) if VERSIONS.iter().any(|s| v == format!("{GROUP}/{s}")) => Ok(v.to_string()),
        _ => Err(format!(
            "KUBERNETES_EXEC_INFO asks for apiVersion {version}; tokenctl speaks {} (set apiVersion in the kubeconfig's exec section to one of them)",
            supported()
        )),
    }
}

/// The ExecCredential JSON, one line.
pub fn render(api_version: &str, reply: &TokenReply) -> String {
    let mut status = serde_json::json!({ "token": reply.token.expose() });
    if let Some(at) = reply.expires_at {
        let at = UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
        status["expirationTimestamp"] = humantime::format_rfc3339_seconds(at).to_string().into();
    }
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": status,
    })
    .to_string()
}

pub fn run(cli: &Cli, name: &str) -> Result<(), Failure> {
    let info = std::env::var_os("KUBERNETES_EXEC_INFO")
        .map(|v| {
            v.into_string()
                .map_err(|_| "KUBERNETES_EXEC_INFO is not UTF-8".to_string())
        })
        .transpose()?;
    // Checked before the daemon is asked, so a bad kubeconfig fails the same
    // way whatever the credential's state.
    let version = api_version(info.as_deref())?;
    let reply = crate::connect(cli)?.token_for(name, 0, tokend_proto::TokenUse::Kube)?;
    let mut text = zeroize::Zeroizing::new(render(&version, &reply));
    text.push('\n');
    print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokend_client::Secret;

    #[test]
    fn the_version_comes_from_kubernetes_exec_info() {
        let v1 = "client.authentication.k8s.io/v1";
        assert_eq!(api_version(None).unwrap(), v1);
        assert_eq!(api_version(Some("  ")).unwrap(), v1);
        let info = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}"#;
        assert_eq!(
            api_version(Some(info)).unwrap(),
            "client.authentication.k8s.io/v1beta1"
        );
        let e = api_version(Some(
            r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#,
        ))
        .unwrap_err();
        assert!(e.contains("v1alpha1") && e.contains("/v1beta1"), "{e}");
        assert!(api_version(Some("{")).is_err());
    }

    #[test]
    fn the_expiry_is_rfc3339_utc_and_absent_for_a_token_that_does_not_expire() {
        let reply = |expires_at| TokenReply {
            token: Secret::new("tok"),
            expires_at,
            generation: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&render(
            "client.authentication.k8s.io/v1",
            &reply(Some(1_800_000_000)),
        ))
        .unwrap();
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], "tok");
        assert_eq!(v["status"]["expirationTimestamp"], "2027-01-15T08:00:00Z");
        let v: serde_json::Value =
            serde_json::from_str(&render("client.authentication.k8s.io/v1", &reply(None))).unwrap();
        assert!(v["status"].get("expirationTimestamp").is_none());
    }
}
