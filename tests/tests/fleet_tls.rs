//! TLS to a fleet's database (issue 19, item 2), end to end: the real
//! `tokend` against a private PostgreSQL listening on 127.0.0.1 with a
//! certificate signed by a CA this test makes (tests/src/postgres.rs,
//! `PgCluster::start_tcp`). A TCP store URL without `sslmode` means TLS with
//! the certificate's chain and host name checked: the member connects with
//! the right CA (`PGSSLROOTCERT`, or `sslrootcert=` in the URL), refuses the
//! wrong CA or the wrong name and says why; a server without TLS is refused
//! unless the URL says `sslmode=disable`, which connects and warns.
//!
//! Every test has its own cluster, CA and member, so they run in parallel.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::path::{Path, PathBuf};
use std::process::Output;
use tokend_tests::helpers::write_key;
use tokend_tests::postgres::{PgCluster, ServerTls, Tcp};
use tokend_tests::*;

/// A CA made for one test, and the files a member and a server need.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Pki {
            dir: tempfile::tempdir().expect("dir for the CA"),
            ca,
        }
    }

    /// The CA's certificate as a PEM file, for `PGSSLROOTCERT` or `sslrootcert=`.
    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).expect("write the CA file");
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    fn server(&self, names: &[&str]) -> ServerTls {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tokend test database");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("server certificate");
        ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A member of a fleet on `url`, with a key of its own and `env` added.
fn member_options(url: String, key: &Path, env: &[(&str, &Path)]) -> Options {
    Options {
        store: Some(url),
        key_file: Some(key.to_path_buf()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect(),
        ..Options::default()
    }
}

/// A fresh sealing key in `dir`.
fn key_in(dir: &Path) -> PathBuf {
    let key = dir.join("fleet.key");
    write_key(&key);
    key
}

/// Adds a bearer credential through `member` and reads it back: the store
/// is written and read over the member's connection.
fn assert_serves(member: &Daemon, pg: &PgCluster) {
    member.add_bearer("up", "tls-fleet-bearer-token");
    let out = member.tokenctl(&["token", "up"]);
    assert_eq!(
        stdout(&out).trim(),
        "tls-fleet-bearer-token",
        "{}\n--- member log ---\n{}\n--- PostgreSQL log ---\n{}",
        stderr(&out),
        member.log_text(),
        pg.log_text()
    );
}

/// A start that must fail: its exit status and everything it said.
fn failed_start(options: Options) -> (Output, String) {
    let member = Daemon::prepare(options);
    let out = member.try_start_again(&[]);
    let said = format!("{}{}", stderr(&out), member.log_text());
    assert!(
        out.status.code().is_some_and(|code| code != 0),
        "the member must exit non-zero by itself, got {:?}:\n{said}",
        out.status
    );
    (out, said)
}

/// TLS only (`hostssl`): a member that did not use TLS would be turned away.
fn tls_cluster(server: ServerTls) -> PgCluster {
    PgCluster::start_tcp(Tcp {
        tls: Some(server),
        cleartext: false,
    })
}

#[test]
fn a_member_reaches_a_tls_database_with_the_ca_named_by_pgsslrootcert() {
    let pki = Pki::new("tokend test CA");
    let pg = tls_cluster(pki.server(&["127.0.0.1", "localhost"]));
    let key = key_in(pki.dir.path());
    let ca = pki.ca_file();
    let member = Daemon::start_with(member_options(
        pg.tcp_url("127.0.0.1"),
        &key,
        &[("PGSSLROOTCERT", &ca)],
    ));
    assert_serves(&member, &pg);
    let (tls, clear) = pg.tcp_sessions();
    assert!(
        tls > 0 && clear == 0,
        "the member's sessions: {tls} over TLS, {clear} in the clear"
    );
    let log = member.log_text();
    assert!(
        log.contains("over TLS") && log.contains(&format!("PGSSLROOTCERT {}", ca.display())),
        "the member says at start how it reaches the database:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("not encrypted")),
        "{log}"
    );
}

#[test]
fn a_member_reaches_a_tls_database_with_the_ca_named_by_sslrootcert_in_the_url() {
    let pki = Pki::new("tokend test CA");
    let pg = tls_cluster(pki.server(&["localhost"]));
    let key = key_in(pki.dir.path());
    // A CA file named by the URL comes before PGSSLROOTCERT, which names a
    // file that does not exist here.
    let url = format!(
        "{}?sslrootcert={}",
        pg.tcp_url("localhost"),
        pki.ca_file().display()
    );
    let nowhere = pki.dir.path().join("no-such-ca.pem");
    let member = Daemon::start_with(member_options(url, &key, &[("PGSSLROOTCERT", &nowhere)]));
    assert_serves(&member, &pg);
    let (tls, clear) = pg.tcp_sessions();
    assert!(
        tls > 0 && clear == 0,
        "the member's sessions: {tls} over TLS, {clear} in the clear"
    );
}

#[test]
fn a_member_refuses_a_certificate_its_ca_did_not_sign_or_made_for_another_host() {
    let pki = Pki::new("tokend test CA");
    let pg = tls_cluster(pki.server(&["localhost"]));
    let key = key_in(pki.dir.path());

    let stranger = Pki::new("another CA");
    let wrong_ca = stranger.ca_file();
    let (_, said) = failed_start(member_options(
        pg.tcp_url("127.0.0.1"),
        &key,
        &[("PGSSLROOTCERT", &wrong_ca)],
    ));
    assert!(
        said.contains("the database's certificate is not trusted"),
        "{said}"
    );
    assert!(
        said.contains(&format!("PGSSLROOTCERT {}", wrong_ca.display())),
        "the error names the CA file that was not enough:\n{said}"
    );
    assert!(said.contains("sslrootcert="), "{said}");

    // The right CA, but a certificate made for `localhost` only, dialled
    // as 127.0.0.1: the name is checked too (verify-full). (Every attempt
    // dials 127.0.0.1 alone: `localhost` may also mean ::1, where nobody
    // listens, and the last address's error is the one reported.)
    let (_, said) = failed_start(member_options(
        pg.tcp_url("127.0.0.1"),
        &key,
        &[("PGSSLROOTCERT", &pki.ca_file())],
    ));
    assert!(
        said.contains("the database's certificate is not for the host in the URL"),
        "{said}"
    );

    // And the system's roots (no CA named) know nothing of this test's CA.
    let (_, said) = failed_start(member_options(pg.tcp_url("127.0.0.1"), &key, &[]));
    assert!(
        said.contains("not signed by a CA in the system's trusted roots"),
        "{said}"
    );
    assert_eq!(pg.tcp_sessions(), (0, 0), "no session was left open");
}

#[test]
fn a_database_without_tls_is_refused_unless_the_url_says_sslmode_disable_which_warns() {
    let pg = PgCluster::start_tcp(Tcp {
        tls: None,
        cleartext: true,
    });
    let dir = tempfile::tempdir().expect("key dir");
    let key = key_in(dir.path());

    let (_, said) = failed_start(member_options(pg.tcp_url("127.0.0.1"), &key, &[]));
    assert!(said.contains("the database does not offer TLS"), "{said}");
    assert!(said.contains("sslmode=disable"), "{said}");

    // prefer would fall back to cleartext without a word: refused as such.
    let prefer = format!("{}?sslmode=prefer", pg.tcp_url("127.0.0.1"));
    let (_, said) = failed_start(member_options(prefer, &key, &[]));
    assert!(said.contains("sslmode=prefer would fall back"), "{said}");

    let url = format!("{}?sslmode=disable", pg.tcp_url("127.0.0.1"));
    let member = Daemon::start_with(member_options(url.clone(), &key, &[]));
    assert_serves(&member, &pg);
    let (tls, clear) = pg.tcp_sessions();
    assert!(
        tls == 0 && clear > 0,
        "the member's sessions: {tls} over TLS, {clear} in the clear"
    );
    let log = member.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("sslmode=disable"))
        .unwrap_or_else(|| panic!("no warning about sslmode=disable at start:\n{log}"));
    assert!(
        warning.contains(&url),
        "the warning names the database: {warning}"
    );
    assert!(warning.contains("not encrypted"), "{warning}");
}
