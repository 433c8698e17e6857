//! Validated domain values. Request bodies are parsed into these at the edge, so aggregates and the
//! store never see an unchecked string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::aggregate::DomainError;

pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2_000;

/// A resource name: trimmed, non-empty, at most 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, raw: &str) -> Result<Name, DomainError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if trimmed.chars().count() > NAME_MAX_CHARS {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {NAME_MAX_CHARS} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Name(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form names are compared in: they are unique case-insensitively.
    pub fn unique_key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A free-text description of at most 2,000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub fn parse(field: &'static str, raw: &str) -> Result<Description, DomainError> {
        if raw.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
            ));
        }
        Ok(Description(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Serde support for `Option<Option<T>>` fields that tell "absent" (`None`: leave unchanged) from
/// "null" (`Some(None)`: clear), as partial updates need. Use with
/// `#[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]`.
pub mod double_option {
    use super::*;

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_compared_case_insensitively() {
        assert_eq!(Name::parse("name", "  Acme ").unwrap().as_str(), "Acme");
        assert_eq!(Name::parse("name", "ÄCME").unwrap().unique_key(), "äcme");
        assert!(Name::parse("name", "   ").is_err());
        assert!(Name::parse("name", &"x".repeat(200)).is_ok());
        assert!(Name::parse("name", &"x".repeat(201)).is_err());
        assert!(Name::parse("name", "a\u{0}b").is_err());
    }

    #[test]
    fn descriptions_are_bounded_by_characters_not_bytes() {
        assert!(Description::parse("description", &"é".repeat(2_000)).is_ok());
        assert!(Description::parse("description", &"é".repeat(2_001)).is_err());
    }
}
