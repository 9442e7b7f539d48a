//! `tokenctl git-credential NAME OPERATION`: git's credential helper
//! protocol (`git help credential`), answered with tokend's token.
//!
//! git writes `key=value` lines on stdin, ending with a blank line or the
//! end of input, and reads the answer the same way. Newer git (2.46) offers
//! `capability[]=authtype`, and then takes `authtype=Bearer` with
//! `credential=TOKEN`, which it sends as `Authorization: Bearer TOKEN`; older
//! git takes `username=` and `password=`. Nothing git sent is echoed back:
//! its `password=`/`credential=` is only compared with the held token, by
//! the daemon, on `erase`.

use crate::git_hosts::{self, GitHosts};
use crate::{Failure, print_text};
use std::io::{BufRead, Read};
use tokend_client::cli::{Cli, GitCredentialArgs};
use tokend_client::{Secret, TokenReply};
use zeroize::Zeroizing;

/// The most git's request may hold. A real one is a few hundred bytes; the
/// cap keeps a runaway writer from growing tokenctl without bound.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The username answered when neither `--username` nor git's request names one.
pub const DEFAULT_USERNAME: &str = "tokend";

/// What git sent, reduced to what the helper uses; every other key
/// (`path`, `wwwauth[]`, `state[]`, …) is ignored.
#[derive(Default)]
pub struct Request {
    /// `capability[]=` values, e.g. `authtype`.
    pub capabilities: Vec<String>,
    /// Where git is going: the token is answered only for the credential's
    /// git hosts (`git_hosts.rs`).
    pub protocol: Option<String>,
    pub host: Option<String>,
    pub username: Option<String>,
    /// The credential git used (`credential=`, else `password=`): the token `erase` reports.
    pub token: Option<Secret>,
}

impl Request {
    fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// Reads git's request from `input`: lines up to a blank line or the end of
/// input, at most `limit` bytes. The error never quotes the input, which may
/// hold a password.
pub fn parse(input: &mut impl BufRead, limit: usize) -> Result<Request, String> {
    let mut input = input.take(limit as u64 + 1);
    let mut request = Request::default();
    let mut password = None;
    let mut credential = None;
    let mut read = 0usize;
    let mut line = Zeroizing::new(Vec::new());
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read git's request from stdin: {e}"))?;
        read += n;
        if read > limit {
            return Err(format!(
                "git's request is larger than {} KiB; refusing it",
                limit / 1024
            ));
        }
        if n == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            break;
        }
        if text.contains(&0) {
            return Err("git's request contains a NUL byte".into());
        }
        let text = std::str::from_utf8(text)
            .map_err(|_| "a line of git's request is not UTF-8".to_string())?;
        let Some((key, value)) = text.split_once('=') else {
            return Err("a line of git's request is not `key=value`".into());
        };
        match key {
            "capability[]" => request.capabilities.push(value.to_string()),
            "protocol" => request.protocol = Some(value.to_string()),
            "host" => request.host = Some(value.to_string()),
            "username" => request.username = Some(value.to_string()),
            "password" => password = Some(Secret::new(value)),
            "credential" => credential = Some(Secret::new(value)),
            _ => {}
        }
    }
    request.token = credential.or(password).filter(|t| !t.is_empty());
    Ok(request)
}

/// The answer to `get`: the token as a bearer credential when git can take
/// one, else as a password; its expiry when it has one.
pub fn answer(
    request: &Request,
    reply: &TokenReply,
    username: Option<&str>,
) -> Result<Zeroizing<String>, String> {
    let token = reply.token.expose();
    if token.contains(['\n', '\r', '\0']) {
        return Err(
            "the token contains a line break or NUL, which git's protocol cannot carry".into(),
        );
    }
    let mut out = Zeroizing::new(String::new());
    if request.can("authtype") {
        // `ephemeral`: the token is short-lived; persistent helpers should not keep it.
        out.push_str("capability[]=authtype\nauthtype=Bearer\ncredential=");
        out.push_str(token);
        out.push_str("\nephemeral=1\n");
    } else {
        let username = username
            .or(request.username.as_deref())
            .unwrap_or(DEFAULT_USERNAME);
        if username.contains(['\n', '\r', '\0']) {
            return Err("the username contains a line break or NUL".into());
        }
        out.push_str("username=");
        out.push_str(username);
        out.push_str("\npassword=");
        out.push_str(token);
        out.push('\n');
    }
    if let Some(at) = reply.expires_at {
        out.push_str(&format!("password_expiry_utc={at}\n"));
    }
    Ok(out)
}

/// Runs one operation. `get` and `erase` talk to the daemon; `store` and
/// operations this version does not know are read and ignored, as git asks
/// of helpers, without connecting.
pub fn run(cli: &Cli, args: &GitCredentialArgs) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    let operation = args.operation.as_str();
    if !matches!(operation, "get" | "erase") {
        // Drained (up to the cap) so that git never writes into a closed pipe.
        let _ = std::io::copy(
            &mut stdin.lock().take(MAX_REQUEST as u64),
            &mut std::io::sink(),
        );
        return Ok(());
    }
    let request = parse(&mut stdin.lock(), MAX_REQUEST)?;
    // Without a token there is nothing to compare: refreshing blindly
    // would let any caller of `git credential reject` force refreshes.
    if operation == "erase" && request.token.is_none() {
        return Ok(());
    }
    let mut client = crate::connect(cli)?;
    let spec = client.show(&args.name)?.spec;
    let allowed = GitHosts::of(&spec);
    let (protocol, host) = (request.protocol.as_deref(), request.host.as_deref());
    if let Err(note) = git_hosts::admit(&args.name, &allowed, protocol, host) {
        // Nothing on stdout and success: git goes on to its next helper
        // (or asks), without this token.
        eprintln!("tokenctl: {note}");
        return Ok(());
    }
    match (operation, &request.token, host) {
        ("get", _, _) => {
            let reply = client.token_for(&args.name, 0, tokend_proto::TokenUse::Git)?;
            let text = answer(&request, &reply, args.username.as_deref())?;
            print_text(&text)
        }
        ("erase", Some(token), Some(host)) => {
            // A refreshable token is refreshed; a bearer token is marked
            // `failing: rejected by HOST` (git ignores a helper's answer to
            // `erase`: `show` is where the user learns it).
            let message = client.reject_by(&args.name, token, host)?;
            eprintln!("tokenctl: {message}");
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Request, String> {
        parse(&mut s.as_bytes(), MAX_REQUEST)
    }

    fn reply(token: &str, expires_at: Option<i64>) -> TokenReply {
        TokenReply {
            token: Secret::new(token),
            expires_at,
            generation: 1,
        }
    }

    #[test]
    fn a_request_ends_at_the_blank_line() {
        let r = parse_str("protocol=https\nhost=h\nusername=bob\n\nusername=eve\n").unwrap();
        assert_eq!(r.username.as_deref(), Some("bob"));
    }

    #[test]
    fn a_request_without_a_blank_line_ends_at_eof() {
        let r = parse_str("protocol=https\ncapability[]=authtype\ncapability[]=state").unwrap();
        assert_eq!(r.capabilities, ["authtype", "state"]);
        assert!(parse_str("").unwrap().token.is_none());
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let r =
            parse_str("wwwauth[]=Bearer realm=x\nstate[]=a=b\nfuture-key=1\npath=\n\n").unwrap();
        assert!(r.capabilities.is_empty() && r.username.is_none() && r.token.is_none());
    }

    #[test]
    fn erase_takes_the_credential_before_the_password() {
        let r = parse_str("password=pw\ncredential=cred\n").unwrap();
        assert_eq!(r.token.unwrap().expose(), "cred");
        let r = parse_str("password=pw\r\n\r\n").unwrap();
        assert_eq!(r.token.unwrap().expose(), "pw");
        assert!(parse_str("password=\n").unwrap().token.is_none());
    }

    #[test]
    fn oversized_or_malformed_requests_are_refused_without_quoting_them() {
        let big = format!("password={}\n\n", "s".repeat(MAX_REQUEST));
        let e = parse_str(&big).err().unwrap();
        assert!(
            e.contains("larger than 64 KiB") && !e.contains("sss"),
            "{e}"
        );
        // The cap counts bytes up to the blank line only.
        let mut input = format!("host=h\n\n{}", "x".repeat(2 * MAX_REQUEST));
        assert!(parse(&mut input.as_bytes(), MAX_REQUEST).is_ok());
        input = "password=hunter2 without end".repeat(10);
        assert!(parse(&mut input.as_bytes(), 64).is_err());
        for bad in ["hunter2\n", "password=a\0b\n", "x=\u{0}\n"] {
            let e = parse_str(bad).err().unwrap();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(parse(&mut &b"password=\xff\n"[..], MAX_REQUEST).is_err());
    }

    #[test]
    fn get_answers_a_password_or_a_bearer_credential() {
        let plain = parse_str("protocol=https\nhost=h\npassword=old\n").unwrap();
        let text = answer(&plain, &reply("tok", Some(1700000000)), None).unwrap();
        assert_eq!(
            text.as_str(),
            "username=tokend\npassword=tok\npassword_expiry_utc=1700000000\n"
        );
        assert!(!text.contains("old"));
        let text = answer(&plain, &reply("tok", None), Some("oauth2")).unwrap();
        assert_eq!(text.as_str(), "username=oauth2\npassword=tok\n");
        let named = parse_str("username=alice\n").unwrap();
        let text = answer(&named, &reply("tok", None), None).unwrap();
        assert!(text.starts_with("username=alice\n"), "{}", *text);

        let bearer = parse_str("capability[]=authtype\n\n").unwrap();
        let text = answer(&bearer, &reply("tok", None), None).unwrap();
        assert_eq!(
            text.as_str(),
            "capability[]=authtype\nauthtype=Bearer\ncredential=tok\nephemeral=1\n"
        );
        assert!(answer(&plain, &reply("a\nb", None), None).is_err());
    }
}
