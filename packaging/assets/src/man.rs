//! Man pages: clap_mangen renders name, synopsis, options and subcommands
//! from the clap definition; the sections clap knows nothing about (files,
//! environment, signals, exit status) are added here.

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use std::path::Path;

/// A man page section of `term`: `description` entries.
type Section = (&'static str, &'static [(&'static str, &'static str)]);

const TOKEND: &[Section] = &[
    (
        "FILES",
        &[
            (
                "/run/tokend/tokend.sock",
                "The system daemon's socket (per user: $XDG_RUNTIME_DIR/tokend/tokend.sock).",
            ),
            (
                "/var/lib/tokend/tokend.db",
                "The store; every secret in it is sealed (per user: $XDG_STATE_HOME/tokend/tokend.db).",
            ),
            (
                "/var/lib/tokend/tokend.key",
                "The sealing key, made at first start when systemd passes no tokend.key credential.",
            ),
            (
                "/etc/tokend/config.toml",
                "The optional config (per user: $XDG_CONFIG_HOME/tokend/config.toml). Every key is \
                 described in /usr/share/doc/tokend/CONFIG.md; a commented example is \
                 /usr/share/doc/tokend/examples/config.toml.",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "TOKEND_LOG",
                "The log level or filter: error, warn, info (default), debug, trace.",
            ),
            (
                "TOKEND_ALLOW_CORE_DUMPS",
                "1: keep core dumps possible, to debug a crash (logged as a warning). By default \
                 tokend makes itself non-dumpable and sets its core size limit to 0 at start.",
            ),
            (
                "RUNTIME_DIRECTORY, STATE_DIRECTORY, CONFIGURATION_DIRECTORY",
                "Set by systemd; with --system they replace /run/tokend, /var/lib/tokend and /etc/tokend.",
            ),
            (
                "CREDENTIALS_DIRECTORY",
                "Set by systemd; the sealing key is read from its tokend.key (LoadCredential=).",
            ),
            (
                "NOTIFY_SOCKET, LISTEN_FDS, LISTEN_PID, WATCHDOG_USEC",
                "Set by systemd: READY=1 once the socket is bound and the store is open (Type=notify), \
                 a listening socket passed by socket activation, and the watchdog.",
            ),
            (
                "PGSSLROOTCERT",
                "With a postgresql:// store over TCP: the PEM file of the CA the database's \
                 certificate must chain to, instead of the system's roots (the URL's sslrootcert= \
                 comes first). TLS is on for every TCP host unless the URL says sslmode=disable \
                 (see CONFIG.md, \"TLS to the database\").",
            ),
            (
                "JOURNAL_STREAM",
                "When it names stderr, log lines carry no timestamp (the journal adds its own).",
            ),
        ],
    ),
    (
        "SIGNALS",
        &[
            (
                "SIGTERM, SIGINT",
                "Stop gracefully: no new connections; refreshes in flight finish and are committed.",
            ),
            (
                "SIGHUP",
                "Reload the config file. A broken file is logged with its line and key, and the \
                 running config stays.",
            ),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "tokenctl(1), systemctl(1), systemd-socket-activate(1)",
            "The package's units are tokend.service and tokend.socket, for the whole system \
             (systemctl) and per user (systemctl --user); neither is enabled on install.",
        )],
    ),
];

const TOKENCTL: &[Section] = &[
    (
        "EXIT STATUS",
        &[
            ("0", "Success."),
            ("1", "An error (the message says which)."),
            ("2", "A usage error."),
            ("3", "tokend is not reachable at the socket."),
            ("4", "Permission denied."),
            (
                "5",
                "The credential is not usable: unknown name, needs a login, or failing.",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "TOKEND_SOCKET",
                "The daemon's socket, as --socket. Default: the user's daemon \
             ($XDG_RUNTIME_DIR/tokend/tokend.sock), then the system's (/run/tokend/tokend.sock).",
            ),
            (
                "KUBERNETES_EXEC_INFO",
                "Set by kubectl for exec-credential: its apiVersion (client.authentication.k8s.io/v1, \
                 the default, or v1beta1) is the version of the ExecCredential printed.",
            ),
        ],
    ),
    (
        "EXAMPLES",
        &[
            (
                "tokenctl add bearer uppromote --description \"affiliate sync\" < token.txt",
                "Store a static bearer token, read from stdin.",
            ),
            (
                "tokenctl add oauth2 uptempo --preset uptempo-cas --client-id ID --client-secret-file secret.txt",
                "Add an OAuth2 app, then: tokenctl login uptempo",
            ),
            (
                "tokenctl header uptempo | curl -H @- https://api.example/",
                "Use a valid token (on stdin: never in curl's arguments, which any user can read).",
            ),
            (
                "tokenctl exec uptempo -- ./sync.sh",
                "Run a program with the token in $TOKEND_TOKEN.",
            ),
            (
                "tokenctl add bearer forge --git-host git.example.com --token-file forge.token",
                "Add a token for the git host git.example.com (the git helper answers for no other host).",
            ),
            (
                "git config --global credential.https://git.example.com.helper '!tokenctl git-credential forge'",
                "Let git ask tokend for the token of git.example.com (see tokenctl-git-credential(1)).",
            ),
            (
                "command: tokenctl, args: [exec-credential, kube]",
                "In a kubeconfig's users[].user.exec (apiVersion client.authentication.k8s.io/v1, \
                 interactiveMode: Never): kubectl gets the token as an ExecCredential.",
            ),
        ],
    ),
    ("SEE ALSO", &[("tokend(8)", "The daemon.")]),
];

/// Writes `cmd`'s page in `section` to `dir`, and one page per subcommand
/// (`tokenctl-add-bearer.1`), so `man tokenctl-login` shows its options.
pub fn write_pages(mut cmd: clap::Command, section: &str, dir: &Path) -> Result<(), String> {
    // Fills in display names ("tokenctl-add-bearer") and bin names.
    cmd.build();
    let extra = match cmd.get_name() {
        "tokend" => TOKEND,
        _ => TOKENCTL,
    };
    write_page(&cmd, section, extra, dir)?;
    write_subcommand_pages(&cmd, section, dir)
}

fn write_subcommand_pages(cmd: &clap::Command, section: &str, dir: &Path) -> Result<(), String> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, section, &[], dir)?;
        // `help` mirrors every subcommand; one page for it is enough.
        if sub.get_name() != "help" {
            write_subcommand_pages(sub, section, dir)?;
        }
    }
    Ok(())
}

fn write_page(
    cmd: &clap::Command,
    section: &str,
    extra: &[Section],
    dir: &Path,
) -> Result<(), String> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section(section)
        .manual("tokend manual")
        .source(format!("tokend {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page)
        .map_err(|e| format!("cannot render {name}: {e}"))?;
    for (title, entries) in extra {
        page.extend(render_section(title, entries).render().into_bytes());
    }
    crate::write(&dir.join(format!("{name}.{section}")), &page)
}

fn render_section(title: &str, entries: &[(&str, &str)]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    for (term, description) in entries {
        roff.control("TP", [])
            .text([bold(*term)])
            .text([roman(*description)]);
    }
    roff
}
