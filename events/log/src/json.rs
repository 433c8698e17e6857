//! Free-form JSON as the log and the read models store it, decoded past serde_json's default nesting
//! bound up to the one the domain sets (`domain::json`).

use serde_json::Value;

/// A `jsonb` column decoded with [`domain::json::from_stored`]: what every reader of the log and of the read models
/// decodes free-form JSON with.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored(pub Value);

impl sqlx::Type<sqlx::Postgres> for Stored {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Value as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Value as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Stored {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::postgres::PgValueFormat;
        let binary = value.format() == PgValueFormat::Binary;
        let mut bytes = value.as_bytes()?;
        // Binary jsonb is a version byte (1) followed by the text; no JSON text starts with 0x01.
        if binary {
            if let Some((1, text)) = bytes.split_first() {
                bytes = text;
            }
        }
        Ok(Stored(domain::json::from_stored(bytes)?))
    }
}
