//! Secrets at rest (docs/DESIGN.md §6): the store and everything next to it, less
//! the key, reveal no secret, running or stopped; and the daemon refuses to
//! start with a key other than the one the store was sealed with, or with a
//! key file other users can read.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::path::{Path, PathBuf};
use tokend_tests::*;

const BEARER: &str = "upp-sealing-e2e-bearer-0123456789";
const OAUTH_SECRET: &str = "oauth2-sealing-e2e-client-secret-abcdef";
const CC_SECRET: &str = "cc-sealing-e2e-client-secret-ghijkl";
const SECRETS: [&str; 3] = [BEARER, OAUTH_SECRET, CC_SECRET];

/// A daemon holding one credential of each kind, each with its own secret.
fn daemon_with_secrets() -> Daemon {
    let d = Daemon::start();
    d.add_bearer("up", BEARER);
    let file = |name: &str, text: &str| -> String {
        let path = d.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let oauth = file("oauth.secret", OAUTH_SECRET);
    assert_ok(&d.tokenctl(&[
        "add",
        "oauth2",
        "app",
        "--auth-url",
        "http://127.0.0.1:9/auth",
        "--token-url",
        "http://127.0.0.1:9/token",
        "--client-id",
        "cid",
        "--client-secret-file",
        &oauth,
    ]));
    // Its first token fetch (from 127.0.0.1:9, where nothing listens) fails;
    // the client secret is stored all the same.
    let cc = file("cc.secret", CC_SECRET);
    assert_ok(&d.tokenctl(&[
        "add",
        "client-credentials",
        "svc",
        "--token-url",
        "http://127.0.0.1:9/token",
        "--client-id",
        "svc-id",
        "--client-secret-file",
        &cc,
    ]));
    // The secret files were only the way in.
    for f in ["oauth.secret", "cc.secret"] {
        std::fs::remove_file(d.dir.path().join(f)).unwrap();
    }
    d
}

fn state_dir(d: &Daemon) -> PathBuf {
    d.db.parent().unwrap().to_path_buf()
}

fn key_file(d: &Daemon) -> PathBuf {
    state_dir(d).join("tokend.key")
}

/// The byte strings that would betray `secret`: the plain text, its hex,
/// and its base64 (standard and URL-safe) at each of the three alignments
/// it could have inside a longer encoded value (the inner part only, which
/// does not depend on the neighbouring bytes).
fn betrayals(secret: &str) -> Vec<Vec<u8>> {
    let mut found = vec![
        secret.as_bytes().to_vec(),
        secret
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
        secret
            .bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
            .into_bytes(),
    ];
    for pad in 0..3 {
        let mut shifted = vec![0u8; pad];
        shifted.extend_from_slice(secret.as_bytes());
        let encoded = base64(&shifted);
        // Drop the characters touched by the padding bytes and the tail.
        let inner = &encoded[(pad * 4).div_ceil(3) + 1..encoded.len() - 4];
        found.push(inner.as_bytes().to_vec());
        found.push(inner.replace('+', "-").replace('/', "_").into_bytes());
    }
    found
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

/// Copies the state directory, less the key, the way a backup or a thief
/// would, and asserts that no file in the copy betrays any secret.
fn assert_copy_reveals_nothing(d: &Daemon, when: &str) {
    let copy = tempfile::tempdir().unwrap();
    let key = key_file(d);
    let mut copied = Vec::new();
    for file in files_under(&state_dir(d)) {
        if file == key {
            continue;
        }
        let to = copy.path().join(file.strip_prefix(state_dir(d)).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
        copied.push(file.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert!(copied.contains(&"tokend.db".to_string()), "{copied:?}");
    for file in files_under(copy.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in SECRETS {
            for needle in betrayals(secret) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{when}: {} holds {secret:?} as {:?}",
                    file.display(),
                    String::from_utf8_lossy(&needle)
                );
            }
        }
    }
}

#[test]
fn the_search_finds_a_secret_however_it_is_encoded() {
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fooba"), "Zm9vYmE");
    assert_eq!(base64(b"fo"), "Zm8");
    let found = |haystack: &[u8]| {
        betrayals(BEARER)
            .iter()
            .any(|n| haystack.windows(n.len()).any(|w| w == n))
    };
    for prefix in ["", "x", "xy", "xyz", "{\"token\":\""] {
        let inside = format!("{prefix}{BEARER}\"}}");
        assert!(found(inside.as_bytes()));
        assert!(found(base64(inside.as_bytes()).as_bytes()), "{prefix:?}");
        let url_safe = base64(inside.as_bytes())
            .replace('+', "-")
            .replace('/', "_");
        assert!(found(url_safe.as_bytes()), "{prefix:?}");
        let hex: String = inside.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(found(hex.as_bytes()));
    }
    assert!(!found(b"nothing to see"));
}

#[test]
fn the_store_and_its_wal_hold_no_secret_running_or_stopped() {
    let mut d = daemon_with_secrets();
    // The secrets are really there, behind the key.
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{BEARER}\n"));
    let wal = d.db.with_extension("db-wal");
    assert!(
        wal.exists(),
        "the running store has a WAL: {}",
        wal.display()
    );
    assert_copy_reveals_nothing(&d, "while running");

    d.stop();
    assert_copy_reveals_nothing(&d, "after stop");
    // A key file is the one thing the copy left out: with it, all is there.
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{BEARER}\n"));
    let log = d.log_text();
    for secret in SECRETS {
        assert!(!log.contains(secret), "the log holds {secret:?}");
        assert!(!all_argv().contains(secret), "an argv holds {secret:?}");
    }
}

#[test]
fn another_key_file_is_refused_at_start() {
    let mut d = daemon_with_secrets();
    d.stop();
    let key = key_file(&d);
    let right = std::fs::read(&key).unwrap();
    let other: Vec<u8> = right.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&key, &other).unwrap();

    let out = d.try_start_again(&[]);
    assert_code(&out, 1);
    let message = stderr(&out);
    assert!(message.contains("sealing key"), "{message}");
    assert!(message.contains("does not match"), "{message}");

    // The store was left alone: the right key opens it again.
    std::fs::write(&key, &right).unwrap();
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{BEARER}\n"));
}

#[test]
fn a_systemd_credential_with_another_key_is_refused_and_the_right_one_used() {
    let mut d = daemon_with_secrets();
    d.stop();
    let creds = d.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    set_mode(&creds, 0o700);
    std::fs::write(creds.join("tokend.key"), [0x42u8; 32]).unwrap();

    let out = d.try_start_again(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    assert_code(&out, 1);
    let message = stderr(&out);
    assert!(message.contains("sealing key"), "{message}");
    assert!(message.contains("does not match"), "{message}");

    // The credential takes precedence over the key file: with the right key
    // there, the key file can go.
    std::fs::copy(key_file(&d), creds.join("tokend.key")).unwrap();
    std::fs::remove_file(key_file(&d)).unwrap();
    d.set_env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{BEARER}\n"));
    assert!(
        !key_file(&d).exists(),
        "no key file is created beside a credential"
    );
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let mut d = daemon_with_secrets();
    d.stop();
    set_mode(&key_file(&d), 0o644);
    let out = d.try_start_again(&[]);
    assert_code(&out, 1);
    let message = stderr(&out);
    assert!(message.contains("readable by other users"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");

    set_mode(&key_file(&d), 0o600);
    d.restart();
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{BEARER}\n"));
}
