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

#[cfg(test)]
mod tests {
    use super::*;

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
}
