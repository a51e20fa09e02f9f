//! Secrets that must never reach a log: tokens, honeypot keys, and passwords
//! typed by attackers. Their `Debug` and `Display` print a placeholder.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string whose formatting is redacted.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random secret: `prefix` then 256 bits as 64 hex digits.
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        Self(format!("{prefix}{}", hex::encode(bytes)))
    }

    /// The hex SHA-256 digest under which the secret is stored. The secrets
    /// this service issues carry 256 random bits, so a fast hash suffices:
    /// there is nothing to guess by brute force.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// Compares two stored digests without an early exit on the first difference.
pub fn digests_match(left: &str, right: &str) -> bool {
    left.len() == right.len() && bool::from(left.as_bytes().ct_eq(right.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_secret() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let first = Secret::generate("vh_");
        let second = Secret::generate("vh_");
        assert_ne!(first, second);
        assert_eq!(first.expose().len(), 3 + 64);
        assert!(digests_match(&first.digest(), &first.digest()));
        assert!(!digests_match(&first.digest(), &second.digest()));
    }
}
