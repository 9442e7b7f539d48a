//! Credential names: the one rule, shared by the daemon and the CLI.

/// Why a credential name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a credential name cannot be empty")]
    Empty,
    #[error("credential name {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error(
        "credential name {0:?} is not valid: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadCharacters(String),
}

/// Checks `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    if name.len() > 64 {
        return Err(NameError::TooLong(name.chars().take(64).collect()));
    }
    let tail_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) || !chars.all(tail_ok) {
        return Err(NameError::BadCharacters(name.to_string()));
    }
    Ok(())
}

/// The most of a name a log line shows, in bytes.
pub const LOGGED_NAME_BYTES: usize = 128;

/// A name as a log line shows it, whoever sent it: quoted and escaped like
/// Rust's `Debug` (a newline or a control character cannot start a forged
/// line), and cut at [`LOGGED_NAME_BYTES`] on a character boundary, with
/// `…` and the real length after it, so a 60 KiB name costs a log line
/// about 150 bytes. Valid names (64 bytes at most) are shown whole.
#[derive(Clone, Copy)]
pub struct Logged<'a>(&'a str);

/// `name` as a log line may show it (see [`Logged`]).
pub fn logged(name: &str) -> Logged<'_> {
    Logged(name)
}

impl std::fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.0;
        if name.len() <= LOGGED_NAME_BYTES {
            return write!(f, "{name:?}");
        }
        let mut cut = LOGGED_NAME_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &name[..cut], name.len())
    }
}

impl std::fmt::Debug for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Whether `c` is escaped by [`escaped`]: a control character (NUL, a
/// newline, a carriage return, DEL, C1) or a Unicode bidi control
/// (U+202A–U+202E, U+2066–U+2069), which could forge or reorder a line.
pub fn is_escaped(c: char) -> bool {
    c.is_control()
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` with every character [`is_escaped`] names written as `\u{…}`:
/// safe for any text column and always one line. Borrowed when there is
/// nothing to escape.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_escaped(c) {
            use std::fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_on_one_line() {
        assert!(matches!(
            escaped("up/x y"),
            std::borrow::Cow::Borrowed("up/x y")
        ));
        assert_eq!(escaped("a\0b"), "a\\u{0}b");
        assert_eq!(escaped("a\nb\rc"), "a\\u{a}b\\u{d}c");
        assert_eq!(escaped("x\u{202e}y\u{2066}z"), "x\\u{202e}y\\u{2066}z");
        assert_eq!(escaped("é\u{7f}"), "é\\u{7f}");
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "uptempo", "up.promote_2-x", "0abc", &"a".repeat(64)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "-a", ".a", "A", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_logged_name_is_escaped_and_cut_on_a_character_boundary() {
        assert_eq!(logged("up").to_string(), "\"up\"");
        let forged = "x\n2026-01-01T00:00:00Z  INFO credential added";
        assert!(!logged(forged).to_string().contains('\n'));
        // 127 ASCII bytes, then a 3-byte character across the 128th byte.
        let long = format!("{}€{}", "a".repeat(127), "b".repeat(60 * 1024));
        let shown = logged(&long).to_string();
        assert_eq!(
            shown,
            format!("\"{}\"… ({} bytes)", "a".repeat(127), long.len())
        );
        assert!(shown.len() < 160, "{} bytes", shown.len());
    }
}
