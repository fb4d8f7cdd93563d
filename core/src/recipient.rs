//! Recipients: phone numbers in E.164.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    /// No leading `+`.
    #[error("phone number {0:?} must start with '+' and the country code, e.g. +5511913390707")]
    MissingPlus(String),
    /// Something other than a digit after the `+`.
    #[error(
        "phone number {0:?} may hold only digits after the '+' (no spaces, dashes or brackets)"
    )]
    NotDigits(String),
    /// Too few or too many digits.
    #[error("phone number {0:?} must have 8 to 15 digits after the '+' (E.164)")]
    Length(String),
    /// A country code cannot start with 0.
    #[error("phone number {0:?} starts with 0 after the '+'; country codes never do")]
    LeadingZero(String),
}

/// A phone number in E.164: `+` and 8 to 15 digits, the first not 0.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Recipient(String);

impl Recipient {
    /// Validates a phone number.
    pub fn parse(s: &str) -> Result<Self, RecipientError> {
        let shown: String = s.chars().take(32).collect();
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| RecipientError::MissingPlus(shown.clone()))?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RecipientError::NotDigits(shown));
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(RecipientError::Length(shown));
        }
        if digits.starts_with('0') {
            return Err(RecipientError::LeadingZero(shown));
        }
        Ok(Self(s.to_string()))
    }

    /// The number, with its `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Recipient {
    type Error = RecipientError;
    fn try_from(s: String) -> Result<Self, RecipientError> {
        Self::parse(&s)
    }
}

impl From<Recipient> for String {
    fn from(r: Recipient) -> String {
        r.0
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164_and_explains_refusals() {
        assert_eq!(
            Recipient::parse("+5511913390707").unwrap().as_str(),
            "+5511913390707"
        );
        assert!(matches!(
            Recipient::parse("5511913390707"),
            Err(RecipientError::MissingPlus(_))
        ));
        assert!(matches!(
            Recipient::parse("+55 11 91339"),
            Err(RecipientError::NotDigits(_))
        ));
        assert!(matches!(
            Recipient::parse("+1234567"),
            Err(RecipientError::Length(_))
        ));
        assert!(matches!(
            Recipient::parse("+1234567890123456"),
            Err(RecipientError::Length(_))
        ));
        assert!(matches!(
            Recipient::parse("+0511913390707"),
            Err(RecipientError::LeadingZero(_))
        ));
        let msg = Recipient::parse("abc").unwrap_err().to_string();
        assert!(msg.contains("must start with '+'"), "{msg}");
    }
}
