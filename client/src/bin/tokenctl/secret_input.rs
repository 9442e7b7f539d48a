//! Reading secrets: from a file, from a pipe on stdin, or from a prompt that
//! does not echo. Never from the command line, where `ps` would show them.

use std::io::{IsTerminal, Read};
use std::path::Path;
use tokend_client::Secret;
use zeroize::Zeroizing;

/// Reads one secret; a single trailing newline (as `echo` and editors add)
/// is dropped, anything else is kept for the daemon to judge.
pub fn read(file: Option<&Path>, what: &str) -> Result<Secret, String> {
    let mut text = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            *text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the {what} from {}: {e}", path.display()))?;
        }
        None if std::io::stdin().is_terminal() => {
            *text = rpassword::prompt_password(format!("{what} (input hidden): "))
                .map_err(|e| format!("cannot read the {what}: {e}"))?;
        }
        None => {
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the {what} from stdin: {e}"))?;
        }
    }
    let trimmed = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Ok(Secret::new(trimmed))
}
