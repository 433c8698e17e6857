//! Request fields shared by resources: names and descriptions turned into domain values (with the
//! API's `400` answers), and the `409` for a taken name.

use events::values::{Description, Name};
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

/// Maps a lost name claim to `409` naming the resource; `within` says where names must be unique.
pub fn name_taken<'a>(
    resource: &'a str,
    name: &'a str,
    within: &'a str,
) -> impl FnOnce(ApiError) -> ApiError + 'a {
    move |error| match error {
        ApiError::NameTaken => ApiError::Conflict {
            error: format!("{resource} name already exists"),
            details: format!(
                "name: {} named {:?} already exists{within}",
                article(resource),
                name
            ),
        },
        other => other,
    }
}

fn article(resource: &str) -> String {
    let lower = resource.to_lowercase();
    if lower.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {lower}")
    } else {
        format!("a {lower}")
    }
}
