//! A string that must never be printed: tokens, refresh tokens, client secrets.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A secret string. Its `Debug` and `Display` are redacted, and its memory is
/// wiped when the last copy is dropped, so that a stray `{:?}` or a freed
/// buffer reveals nothing. The only way to read it is the deliberately loud
/// [`Secret::expose`].
///
/// Copies share one buffer: the daemon hands the same access token to every
/// caller, and a reference count is cheaper than copying and then wiping a
/// kilobyte-sized JWT on every request (see docs/BENCHMARKS.md).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::new(Zeroizing::new(value.into())))
    }

    /// The secret's text. Call sites are easy to audit with `grep expose`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Wrapped at once, so the decoded text is wiped like any other copy.
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn copies_share_one_buffer_and_decode_to_the_same_text() {
        let s = Secret::new("a-kilobyte-jwt");
        let copy = s.clone();
        assert_eq!(copy.expose().as_ptr(), s.expose().as_ptr());
        let back: Secret = crate::decode(&crate::encode(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_ne!(back.expose().as_ptr(), s.expose().as_ptr());
    }
}
