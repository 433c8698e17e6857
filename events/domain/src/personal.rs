//! Which data in the log is personal, and what it reads as once its user is erased. The log seals
//! these fields per user (`event_log::personal`), so that erasing a user is destroying one key; the
//! history and the audit trail show [`ERASED`] in their place afterwards.

/// What a personal value reads as once its user was erased.
pub const ERASED: &str = "[erased]";

/// The personal fields of user events' data.
pub const FIELDS: [&str; 3] = ["subject", "email", "name"];

/// The event types that carry personal fields.
pub const SEALED_EVENT_TYPES: [&str; 2] = ["user.registered", "user.profile_updated"];
