//! `[audit]`: the audit trail of hand-outs and administrative changes
//! (docs/SECURITY.md, "The audit trail"): on or off, and how long it is
//! kept.

use serde::Deserialize;

/// The longest `keep_days` accepted: ten years. Past that the cut-off time
/// is a clock gone wrong, not a policy.
const MAX_KEEP_DAYS: u32 = 3650;

#[cfg_attr(test, derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record every hand-out and administrative change in the store.
    pub enabled: bool,
    /// Entries older than this many days are deleted.
    pub keep_days: u32,
    /// At most this many entries are kept (the oldest go first), so a
    /// flood of requests cannot fill the disk within `keep_days`.
    pub max_rows: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            keep_days: 30,
            max_rows: 1_000_000,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_days == 0 {
            return Err("audit.keep_days must be greater than 0 (to record nothing, set audit.enabled = false)".into());
        }
        if self.keep_days > MAX_KEEP_DAYS {
            return Err(format!(
                "audit.keep_days = {} is too long (at most {MAX_KEEP_DAYS})",
                self.keep_days
            ));
        }
        if self.max_rows == 0 {
            return Err("audit.max_rows must be greater than 0 (to record nothing, set audit.enabled = false)".into());
        }
        if self.max_rows > i64::MAX as u64 {
            return Err(format!("audit.max_rows = {} is too large", self.max_rows));
        }
        Ok(())
    }

    /// How long entries are kept, in ms.
    pub fn keep_ms(&self) -> i64 {
        i64::from(self.keep_days) * 86_400_000
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn bad_audit_settings_are_named() {
        let parse = |audit: &str| Config::parse(&format!("[audit]\n{audit}\n"));
        assert!(parse("enabled = false\nkeep_days = 7\nmax_rows = 10").is_ok());
        let err = parse("keep_days = 0").unwrap_err();
        assert!(
            err.contains("audit.keep_days must be greater than 0"),
            "{err}"
        );
        let err = parse("keep_days = 4000").unwrap_err();
        assert!(err.contains("audit.keep_days = 4000 is too long"), "{err}");
        let err = parse("max_rows = 0").unwrap_err();
        assert!(
            err.contains("audit.max_rows must be greater than 0"),
            "{err}"
        );
        let err = parse("keep_days = -1").unwrap_err();
        assert!(err.contains("keep_days"), "{err}");
        let err = parse("kept_days = 3").unwrap_err();
        assert!(err.contains("kept_days"), "{err}");
    }
}
