//! `tokend-assets [OUT_DIR]`: writes the shell completions and man pages of
//! `tokend` and `tokenctl` for packages (default `target/assets`):
//!
//! ```text
//! OUT_DIR/completions/bash/{tokend,tokenctl}
//! OUT_DIR/completions/zsh/{_tokend,_tokenctl}
//! OUT_DIR/completions/fish/{tokend,tokenctl}.fish
//! OUT_DIR/man/tokend.8, tokenctl.1, tokenctl-SUBCOMMAND.1 …
//! ```
//!
//! Generated from the clap definitions the binaries parse
//! (`tokend::app::args::Args`, `tokend_client::cli::Cli`), so the completions and
//! pages cannot drift from the real command lines.

mod man;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let out = args
        .next()
        .map_or_else(|| PathBuf::from("target/assets"), PathBuf::from);
    if args.next().is_some() || out.to_str().is_some_and(|s| s.starts_with('-')) {
        eprintln!("usage: tokend-assets [OUT_DIR]   (default target/assets)");
        return ExitCode::from(2);
    }
    match write_all(&out) {
        Ok(()) => {
            println!("wrote completions and man pages to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokend-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The two commands, each with the man section it belongs in: tokend is a
/// daemon (8), tokenctl a user command (1).
fn commands() -> [(clap::Command, &'static str); 2] {
    [
        (tokend::app::args::Args::command(), "8"),
        (tokend_client::cli::Cli::command(), "1"),
    ]
}

fn write_all(out: &Path) -> Result<(), String> {
    for (cmd, section) in commands() {
        write_completions(cmd.clone(), out)?;
        man::write_pages(cmd, section, &out.join("man"))?;
    }
    Ok(())
}

/// Where each shell looks for a command's completion, by file name: bash
/// loads `completions/NAME` on demand, zsh `_NAME`, fish `NAME.fish`.
fn completion_file(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_string(),
    }
}

fn write_completions(mut cmd: clap::Command, out: &Path) -> Result<(), String> {
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let dir = out.join("completions").join(shell.to_string());
        let path = dir.join(completion_file(shell, &name));
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut text);
        write(&path, &text)?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, creating its directory; the error names the path.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definitions_are_consistent() {
        for (cmd, _) in commands() {
            cmd.debug_assert();
        }
    }

    #[test]
    fn writes_completions_and_pages_for_both_commands() {
        let out = std::env::temp_dir().join(format!("tokend-assets-{}", std::process::id()));
        write_all(&out).unwrap();
        for file in [
            "completions/bash/tokend",
            "completions/bash/tokenctl",
            "completions/zsh/_tokend",
            "completions/zsh/_tokenctl",
            "completions/fish/tokend.fish",
            "completions/fish/tokenctl.fish",
            "man/tokend.8",
            "man/tokenctl-add-oauth2.1",
            "man/tokenctl-git-credential.1",
            "man/tokenctl-exec-credential.1",
        ] {
            assert!(out.join(file).is_file(), "{file} was not written");
        }
        let page = std::fs::read_to_string(out.join("man/tokenctl.1")).unwrap();
        assert!(
            page.contains("EXIT STATUS") && page.contains("tokenctl\\-login"),
            "{page}"
        );
        let bash = std::fs::read_to_string(out.join("completions/bash/tokenctl")).unwrap();
        assert!(
            bash.contains("client-credentials"),
            "subcommands are completed"
        );
        for shell_file in [
            "completions/bash/tokenctl",
            "completions/zsh/_tokenctl",
            "completions/fish/tokenctl.fish",
        ] {
            let text = std::fs::read_to_string(out.join(shell_file)).unwrap();
            for command in ["git-credential", "exec-credential"] {
                assert!(text.contains(command), "{shell_file} lacks {command}");
            }
        }
        for command in ["git\\-credential", "exec\\-credential"] {
            assert!(page.contains(command), "tokenctl.1 lacks {command}");
        }
        let git = std::fs::read_to_string(out.join("man/tokenctl-git-credential.1")).unwrap();
        assert!(git.contains("\\-\\-username"), "{git}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn the_device_login_flags_are_in_the_pages_and_completions() {
        let out = std::env::temp_dir().join(format!("tokend-assets-dev-{}", std::process::id()));
        write_all(&out).unwrap();
        let read = |file: &str| std::fs::read_to_string(out.join(file)).unwrap();
        let login = read("man/tokenctl-login.1");
        assert!(login.contains("\\-\\-device"), "{login}");
        let add = read("man/tokenctl-add-oauth2.1");
        assert!(add.contains("\\-\\-device\\-auth\\-url"), "{add}");
        for (file, device) in [
            ("completions/bash/tokenctl", "--device "),
            ("completions/zsh/_tokenctl", "'--device["),
            ("completions/fish/tokenctl.fish", "-l device "),
        ] {
            let text = read(file);
            assert!(text.contains("device-auth-url"), "{file}");
            assert!(text.contains(device), "{file} lacks {device:?}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
