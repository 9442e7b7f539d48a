//! `tokenctl`: the command-line client of tokend (docs/DESIGN.md §8).
//!
//! Blocking and runtime-free so that `tokenctl token NAME` costs little more
//! than a process spawn and one socket round trip.

mod audit;
mod browser;
mod countdown;
mod exec_credential;
mod git_credential;
mod git_hosts;
mod login;
mod output;
mod secret_input;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
#[cfg(unix)]
use tokend_client::Principal;
#[cfg(unix)]
use tokend_client::cli::Who;
use tokend_client::cli::{
    AddCommand, Cli, ClientAuthArg, Command, EditArgs, OAuthCommon, PrincipalArgs,
};
use tokend_client::{
    AddCredential, AddKind, Client, ClientAuth, EditCredential, OAuth2Request, Secret, Upstream,
};
use tokend_proto::TokenUse;

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<tokend_client::Error> for Failure {
    fn from(e: tokend_client::Error) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { code: 1, message }
    }
}

impl From<login::LoginError> for Failure {
    fn from(e: login::LoginError) -> Self {
        match e {
            login::LoginError::Client(e) => e.into(),
            login::LoginError::Other(m) => m.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tokenctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn connect(cli: &Cli) -> Result<Client, Failure> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(tokend_client::default_socket);
    Ok(Client::connect(socket)?)
}

fn say(message: &str) {
    if !message.is_empty() {
        eprintln!("{message}");
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    // The helpers for other tools connect only when they need the daemon
    // (git's `store` does not).
    match &cli.command {
        Command::GitCredential(args) => return git_credential::run(&cli, args),
        Command::ExecCredential { name } => return exec_credential::run(&cli, name),
        _ => {}
    }
    let mut client = connect(&cli)?;
    let json = cli.json;
    match cli.command {
        Command::Add(add) => say(&client.add(build_add(add)?)?),
        Command::Login(args) if args.device => say(&login::device(
            &mut client,
            &args.name,
            args.no_browser,
            args.timeout,
        )?),
        Command::Login(args) => say(&login::run(
            &mut client,
            &args.name,
            args.paste,
            args.no_browser,
            args.timeout,
        )?),
        Command::Token { name, min_valid } => {
            let reply = client.token_reply(&name, min_valid)?;
            if json {
                output::json(
                    &serde_json::json!({"token": reply.token.expose(), "expires_at": reply.expires_at}),
                );
            } else {
                print_line(reply.token.expose())?;
            }
        }
        Command::Header { name, min_valid } => {
            let reply = client.token_for(&name, min_valid, TokenUse::Header)?;
            print_line(&format!("Authorization: Bearer {}", reply.token.expose()))?;
        }
        Command::Exec { name, env, command } => return exec(&mut client, &name, &env, &command),
        Command::Reject { name, token_stdin } => {
            let token = token_stdin
                .then(|| secret_input::read(None, "rejected token"))
                .transpose()?;
            say(&client.reject(&name, token.as_ref())?);
        }
        Command::Refresh { name } => say(&client.refresh(&name)?),
        Command::Check { name } => {
            let report = client.check(&name)?;
            if json {
                output::json(&report)
            } else {
                output::check(&report)
            }
            if !report.ok {
                return Err(Failure {
                    code: 1,
                    message: format!("check of {name:?} did not pass"),
                });
            }
        }
        Command::Show { name } => {
            let info = client.show(&name)?;
            if json {
                output::json(&info)
            } else {
                output::show(&info)
            }
        }
        Command::Rm { name } => say(&client.remove(&name)?),
        Command::Edit(args) => say(&client.edit(build_edit(args))?),
        Command::ProxyUrl { name } => proxy_url(&mut client, &name, json)?,
        Command::List => {
            let list = client.list()?;
            if json {
                output::json(&list)
            } else {
                output::list(&list)
            }
        }
        Command::Audit(args) => audit::run(&mut client, args, json)?,
        Command::Status => {
            let status = client.status()?;
            if json {
                output::json(&status)
            } else {
                output::status(&status)
            }
        }
        Command::GitCredential(_) | Command::ExecCredential { .. } => unreachable!("run above"),
        Command::Allow(p) => say(&set_allowed(&mut client, &p, true)?),
        Command::Deny(p) => say(&set_allowed(&mut client, &p, false)?),
    }
    Ok(())
}

/// Writes one line to stdout; a closed pipe is an error, not a panic.
fn print_line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|_| out.flush())
        .map_err(|e| Failure::from(format!("cannot write the output: {e}")))
}

/// Writes `text` to stdout as it is, in one write where it fits.
fn print_text(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Failure::from(format!("cannot write the output: {e}")))
}

/// Replaces this process with `command`, the token in `var`.
fn exec(client: &mut Client, name: &str, var: &str, command: &[String]) -> Result<(), Failure> {
    if var.is_empty() || var.contains(['=', '\0']) {
        return Err(Failure {
            code: 2,
            message: format!("--env {var:?} is not a valid variable name"),
        });
    }
    let token = client.token_for(name, 0, TokenUse::Exec)?.token;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]).env(var, token.expose());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(Failure {
            code: 127,
            message: format!("cannot run {:?}: {e}", command[0]),
        })
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(|e| Failure {
            code: 127,
            message: format!("cannot run {:?}: {e}", command[0]),
        })?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// `allow`/`deny`: on Unix the user or group is resolved here and sent
/// by id, as it always was.
#[cfg(unix)]
fn set_allowed(client: &mut Client, p: &PrincipalArgs, allow: bool) -> Result<String, Failure> {
    Ok(client.set_allowed(&p.name, principal(&p.who)?, allow)?)
}

/// On Windows the user is sent by name (a SID or an account name), which
/// the daemon resolves: its ids for users are its own. Groups are not
/// supported there.
#[cfg(windows)]
fn set_allowed(client: &mut Client, p: &PrincipalArgs, allow: bool) -> Result<String, Failure> {
    let Some(user) = &p.who.user else {
        return Err(Failure {
            code: 2,
            message:
                "groups are not supported on Windows: name a user (--user SID or --user ACCOUNT)"
                    .into(),
        });
    };
    let who = tokend_client::NamedPrincipal::User(user.clone());
    Ok(client.set_allowed_named(&p.name, who, allow)?)
}

#[cfg(unix)]
fn principal(who: &Who) -> Result<Principal, Failure> {
    let usage = |message: String| Failure { code: 2, message };
    if let Some(user) = &who.user {
        return resolve_user(user).map(Principal::User).map_err(usage);
    }
    let group = who.group.as_deref().unwrap_or_default();
    resolve_group(group).map(Principal::Group).map_err(usage)
}

#[cfg(unix)]
fn resolve_user(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("there is no user named {user:?}")),
    }
}

#[cfg(unix)]
fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("there is no group named {group:?}")),
    }
}

fn oauth_request(o: OAuthCommon) -> OAuth2Request {
    OAuth2Request {
        preset: o.preset,
        preset_vars: o.preset_vars,
        auth_url: None,
        token_url: o.token_url,
        issuer: o.issuer,
        introspection_url: o.introspection_url,
        device_authorization_url: None,
        client_id: o.client_id,
        scopes: o.scopes,
        redirect_uri: None,
        client_auth: o.client_auth.map(|a| match a {
            ClientAuthArg::Post => ClientAuth::Post,
            ClientAuthArg::Basic => ClientAuth::Basic,
        }),
        pkce: false,
        extra_params: Vec::new(),
    }
}

/// Builds the add request, reading the secret from its file or stdin. The
/// name is checked first, so a typo fails before a secret is asked for.
fn build_add(add: AddCommand) -> Result<AddCredential, Failure> {
    let check_name = |name: &str| {
        tokend_client::validate_name(name).map_err(|e| Failure {
            code: 2,
            message: e.to_string(),
        })
    };
    let (common, kind, secret) = match add {
        AddCommand::Bearer(b) => {
            check_name(&b.common.name)?;
            let secret = secret_input::read(b.token_file.as_deref(), "token")?;
            (
                b.common,
                AddKind::Bearer {
                    check_url: b.check_url,
                    preset: b.preset,
                },
                secret,
            )
        }
        AddCommand::Oauth2(o) => {
            check_name(&o.common.name)?;
            let secret = if o.no_client_secret {
                Secret::default()
            } else {
                secret_input::read(o.oauth.client_secret_file.as_deref(), "client secret")?
            };
            let mut req = oauth_request(o.oauth);
            req.auth_url = o.auth_url;
            req.redirect_uri = o.redirect_uri;
            req.device_authorization_url = o.device_auth_url;
            // PKCE S256 unless refused: `--pkce` only restates the default.
            req.pkce = !o.no_pkce;
            req.extra_params = o.params;
            (o.common, AddKind::OAuth2(req), secret)
        }
        AddCommand::ClientCredentials(c) => {
            check_name(&c.common.name)?;
            let secret =
                secret_input::read(c.oauth.client_secret_file.as_deref(), "client secret")?;
            (
                c.common,
                AddKind::ClientCredentials(oauth_request(c.oauth)),
                secret,
            )
        }
    };
    Ok(AddCredential {
        name: common.name,
        description: common.description,
        kind,
        secret,
        replace: common.replace,
        git_hosts: common.git_hosts,
        upstream: Upstream {
            api_url: common.api_url,
            retry_on: common.retry_on.and_then(|r| r.0),
        },
    })
}

/// `tokenctl proxy-url NAME`: the URL on stdout, how to reach a socket on
/// stderr (or both as JSON).
fn proxy_url(client: &mut Client, name: &str, json: bool) -> Result<(), Failure> {
    let Some(url) = client.proxy_url(name)? else {
        return Err(Failure {
            code: 1,
            message: format!(
                "credential {name:?} has no API URL for the proxy; an admin can set one with `tokenctl edit {name} --api-url URL`"
            ),
        });
    };
    if json {
        output::json(&serde_json::json!({
            "url": url.url,
            "unix_socket": url.unix_socket.as_ref().map(|s| s.display().to_string()),
        }));
        return Ok(());
    }
    print_line(&url.url)?;
    if let Some(socket) = &url.unix_socket {
        say(&format!(
            "over the HTTP API's socket: curl --unix-socket {} {}PATH",
            socket.display(),
            url.url
        ));
    }
    Ok(())
}

/// The edit request: only what was given, `--no-…` as "take it away".
fn build_edit(e: EditArgs) -> EditCredential {
    let given_or_cleared = |value: Option<String>, cleared: bool| {
        if cleared { Some(None) } else { value.map(Some) }
    };
    let list =
        |values: Vec<String>, cleared: bool| (cleared || !values.is_empty()).then_some(values);
    EditCredential {
        name: e.name,
        description: e.description,
        api_url: given_or_cleared(e.api_url, e.no_api_url),
        retry_on: e.retry_on.map(|r| r.0),
        check_url: given_or_cleared(e.check_url, e.no_check_url),
        scopes: list(e.scopes, e.no_scope),
        git_hosts: list(e.git_hosts, e.no_git_host),
        warn_before_secs: if e.no_warn_before {
            Some(None)
        } else {
            e.warn_before.map(Some)
        },
    }
}
