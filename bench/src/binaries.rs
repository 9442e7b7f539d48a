//! The `tokend` and `tokenctl` binaries under test: the ones built next to
//! this benchmark, from the same sources and with the same profile.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A workspace binary in the same directory as this executable.
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release -p tokend -p tokend-client --bins`",
            path.display()
        ))
    }
}

/// Under `cargo run`, builds the daemon and tokenctl binaries first: cargo
/// builds only the libraries a binary depends on, so without this a changed
/// daemon would be benchmarked through a stale `tokend` binary. A no-op
/// (well under a second) when they are up to date.
pub fn ensure_built() -> Result<(), String> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe.parent().ok_or("no profile directory")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(Path::new(&manifest_dir).join("..").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(["-p", "tokend", "-p", "tokend-client", "--bins"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => {
            cmd.arg("--release");
        }
        Some("debug") => {}
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Ok(()),
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building tokend and tokenctl failed ({status})"))
    }
}
