//! `tokenctl audit`: the audit trail, one line per entry or JSON lines.

use crate::Failure;
use crate::output::out;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokend_client::Client;
use tokend_client::cli::AuditArgs;
use tokend_proto::{AuditEntry, AuditQuery};

/// Asks for the entries `args` names and prints them.
pub fn run(client: &mut Client, args: AuditArgs, json: bool) -> Result<(), Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| since(s, SystemTime::now()))
        .transpose()?;
    let entries = client.audit(AuditQuery {
        credential: args.name,
        since,
        user: args.user,
        limit: args.limit,
    })?;
    for e in &entries {
        if json {
            out!("{}", json_line(e));
        } else {
            out!("{}", line(e));
        }
    }
    Ok(())
}

/// `--since`: a time back from `now` (`30m`, `1h`, `2d`) or an RFC 3339
/// time, as Unix seconds.
fn since(text: &str, now: SystemTime) -> Result<i64, Failure> {
    let at = match humantime::parse_duration(text) {
        Ok(back) => now.checked_sub(back).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| Failure {
            code: 2,
            message: format!(
                "--since {text:?} is neither a time back from now (30m, 1h, 2d) nor an RFC 3339 time (2026-12-07T09:00:00Z)"
            ),
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
}

fn time(at_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// One entry as a line: time, credential, operation, outcome, uid(user),
/// pid, executable, and why it did not succeed. Every text field is
/// escaped (control and bidi characters as `\u{…}`): whatever a store
/// holds, an entry is one line and cannot forge another.
fn line(e: &AuditEntry) -> String {
    use tokend_proto::escaped;
    let user = match &e.user {
        Some(name) => format!("{}({})", e.uid, escaped(name)),
        None => e.uid.to_string(),
    };
    let pid = e.pid.map_or("-".to_string(), |p| p.to_string());
    let mut line = format!(
        "{} {} {} {} uid={user} pid={pid} exe={}",
        time(e.at_ms),
        escaped(e.credential.as_deref().unwrap_or("-")),
        escaped(&e.op),
        escaped(&e.outcome),
        escaped(e.exe.as_deref().unwrap_or("-")),
    );
    if e.count > 1 {
        line += &format!(" count={}", e.count);
    }
    if let Some(member) = &e.member {
        line += &format!(" member={}", escaped(member));
    }
    if let Some(reason) = &e.reason {
        line += &format!(": {}", escaped(reason));
    }
    line
}

/// One entry as a JSON object on one line, its time also in RFC 3339.
fn json_line(e: &AuditEntry) -> String {
    let mut value = serde_json::to_value(e).expect("plain data serializes");
    value["at"] = time(e.at_ms).into();
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_back_or_an_rfc3339_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(since("1h", now).ok(), Some(1_000_000 - 3600));
        assert_eq!(since("30m", now).ok(), Some(1_000_000 - 1800));
        assert_eq!(since("2d", now).ok(), Some(1_000_000 - 2 * 86_400));
        assert_eq!(since("2026-12-07T09:00:00Z", now).ok(), Some(1_796_634_000));
        let err = since("yesterday", now).err().unwrap();
        assert_eq!(err.code, 2);
        assert!(err.message.contains("--since \"yesterday\""));
    }

    #[test]
    fn a_line_names_the_peer_and_never_more_than_the_entry() {
        let e = AuditEntry {
            at_ms: 1_796_634_000_000,
            credential: Some("up".into()),
            op: "token".into(),
            outcome: "ok".into(),
            reason: None,
            uid: 0,
            user: Some("root".into()),
            pid: Some(42),
            exe: Some("/usr/bin/tokenctl".into()),
            member: None,
            count: 1,
            incarnation: Some(9),
        };
        assert_eq!(
            line(&e),
            "2026-12-07T09:00:00Z up token ok uid=0(root) pid=42 exe=/usr/bin/tokenctl"
        );
        let json: serde_json::Value = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(json["at"], "2026-12-07T09:00:00Z");
        assert_eq!(json["exe"], "/usr/bin/tokenctl");
    }

    #[test]
    fn a_line_escapes_its_fields_so_that_it_cannot_forge_another() {
        let e = AuditEntry {
            at_ms: 1_796_634_000_000,
            credential: Some("up\n2026-12-07T09:00:01Z root token ok".into()),
            op: "token".into(),
            outcome: "ok".into(),
            reason: Some("x\r\u{202e}y".into()),
            uid: 0,
            user: Some("ro\not".into()),
            pid: Some(42),
            exe: Some("/tmp/a\nb\u{2066}".into()),
            member: Some("m\0".into()),
            count: 1,
            incarnation: None,
        };
        let l = line(&e);
        assert_eq!(l.lines().count(), 1, "{l}");
        assert!(!l.chars().any(tokend_proto::is_escaped), "{l}");
        assert_eq!(
            l,
            "2026-12-07T09:00:00Z up\\u{a}2026-12-07T09:00:01Z root token ok token ok \
             uid=0(ro\\u{a}ot) pid=42 exe=/tmp/a\\u{a}b\\u{2066} member=m\\u{0}: x\\u{d}\\u{202e}y"
        );
    }
}
