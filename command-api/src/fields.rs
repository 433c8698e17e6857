//! Request fields shared by resources: names and descriptions turned into domain values (with the
//! API's `400` answers), and the `409` for a taken name.

use commands::Claimant;
use domain::values::{Description, Name};
use http_layer::ApiError;

pub fn required_name(raw: &str) -> Result<Name, ApiError> {
    Ok(Name::parse("name", raw)?)
}

pub fn optional_description(raw: Option<&str>) -> Result<Option<Description>, ApiError> {
    Ok(raw
        .map(|d| Description::parse("description", d))
        .transpose()?)
}

/// A partial update's name: absent leaves it, `null` is refused (a name is required).
pub fn update_name(raw: Option<&Option<String>>) -> Result<Option<Name>, ApiError> {
    match raw {
        None => Ok(None),
        Some(None) => Err(ApiError::invalid("name", "must not be null")),
        Some(Some(name)) => Ok(Some(required_name(name)?)),
    }
}

/// A partial update's description: absent leaves it, `null` clears it.
pub fn update_description(
    raw: Option<&Option<String>>,
) -> Result<Option<Option<Description>>, ApiError> {
    raw.map(|d| optional_description(d.as_deref())).transpose()
}

/// Who claims a name, for the `409` when it is taken: `resource` named `name` already exists
/// `within` (" in this organization", or "" for names unique platform-wide).
pub fn claimant(resource: &str, name: &str, within: &str) -> Claimant {
    Claimant {
        resource: resource.to_owned(),
        name: name.to_owned(),
        within: within.to_owned(),
    }
}
