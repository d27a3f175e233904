//! Node names: DNS-label-like (`a-z`, `0-9`, `-`, at most 63 bytes, no leading or trailing
//! `-`), so that they can later serve as host names inside the mesh. Registration cleans what a
//! node asks for ([`NodeName::clean`]); the HTTP API refuses anything not already clean
//! ([`NodeName::parse`]), so an operator never gets a name other than the one typed.

use std::fmt;

/// Longest name, in bytes (a DNS label, RFC 1035).
pub const MAX_NAME: usize = 63;

/// A valid node name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeName(String);

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    #[error("name must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME`] bytes.
    #[error("name must be at most {MAX_NAME} characters")]
    TooLong,
    /// The name holds other characters or starts or ends with `-`.
    #[error("name must be lowercase letters, digits and inner '-' (like {0:?})")]
    Invalid(String),
}

impl NodeName {
    /// Accepts `raw` only if it already is a valid name.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.len() > MAX_NAME {
            return Err(NameError::TooLong);
        }
        let clean = Self::clean(raw);
        if clean.0 != raw {
            return Err(NameError::Invalid(clean.0));
        }
        Ok(clean)
    }

    /// Turns anything into a valid name: lowercase, other characters to `-`, cut to
    /// [`MAX_NAME`], outer `-` trimmed; `node` if nothing is left.
    pub fn clean(raw: &str) -> Self {
        let name: String = raw
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(MAX_NAME)
            .collect();
        let name = name.trim_matches('-');
        if name.is_empty() {
            Self("node".into())
        } else {
            Self(name.to_string())
        }
    }

    /// `self` with the suffix `-n`, cut so that the result stays a valid name.
    pub fn with_suffix(&self, n: u32) -> Self {
        let suffix = format!("-{n}");
        let keep = MAX_NAME.saturating_sub(suffix.len()).min(self.0.len());
        let base = self.0[..keep].trim_end_matches('-');
        Self(format!("{base}{suffix}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clean_normalises_like_registration_always_did() {
        assert_eq!(NodeName::clean("My Laptop").as_str(), "my-laptop");
        assert_eq!(NodeName::clean("  ").as_str(), "node");
        assert_eq!(NodeName::clean("--x--").as_str(), "x");
        assert_eq!(NodeName::clean(&"a".repeat(100)).as_str().len(), 63);
    }

    #[test]
    fn parse_accepts_only_clean_names() {
        assert_eq!(NodeName::parse("db-1").unwrap().as_str(), "db-1");
        assert_eq!(NodeName::parse(""), Err(NameError::Empty));
        assert_eq!(NodeName::parse(&"a".repeat(64)), Err(NameError::TooLong));
        assert_eq!(
            NodeName::parse("My Laptop"),
            Err(NameError::Invalid("my-laptop".into()))
        );
        assert!(NodeName::parse("-x").is_err());
        assert!(NodeName::parse("é").is_err());
    }

    #[test]
    fn suffixes_keep_names_valid() {
        let long = NodeName::clean(&"a".repeat(63));
        let s = long.with_suffix(12);
        assert_eq!(s.as_str().len(), 63);
        assert!(s.as_str().ends_with("-12"));
        assert_eq!(NodeName::parse(s.as_str()).unwrap(), s);
        assert_eq!(NodeName::clean("a").with_suffix(2).as_str(), "a-2");
    }
}
