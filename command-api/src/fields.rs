//! Request fields shared by resources: names and descriptions turned into domain values (with the
//! API's `400` answers), the `409` for a taken name, and the `409` for deleting something referenced.

use events::store::AppendTx;
use events::values::{Description, Name};
use events::StoreError;

use crate::error::ApiError;

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

/// Maps a lost name claim to `409`; `within` says where names must be unique (may be empty).
pub fn name_taken<'a>(
    resource: &'a str,
    name: &'a Name,
    within: &'a str,
) -> impl FnOnce(StoreError) -> ApiError + 'a {
    move |error| match error {
        StoreError::NameTaken { .. } => ApiError::Conflict {
            error: format!("{resource} name already exists"),
            details: format!(
                "name: {} named {:?} already exists{within}",
                article(resource),
                name.as_str()
            ),
        },
        other => other.into(),
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

/// Refuses to delete a stream that other streams still refer to, naming them.
/// Call it after appending the deletion (see [`AppendTx::references_to`]).
pub async fn refuse_if_referenced(
    tx: &mut AppendTx,
    stream: &str,
    resource: &str,
) -> Result<(), ApiError> {
    const SHOWN: i64 = 10;
    let sources = tx.references_to(stream, SHOWN).await?;
    if sources.is_empty() {
        return Ok(());
    }
    // Stream ids are `<aggregate>-<uuid>`: group them as "environments: id, id".
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for source in sources {
        let (kind, id) = source
            .split_once('-')
            .unwrap_or(("resource", source.as_str()));
        let kind = format!("{kind}s");
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, ids)) => ids.push(id.to_owned()),
            None => groups.push((kind, vec![id.to_owned()])),
        }
    }
    let listed: Vec<String> = groups
        .iter()
        .map(|(kind, ids)| format!("{kind}: {}", ids.join(", ")))
        .collect();
    Err(ApiError::Conflict {
        error: format!("{resource} is still referenced"),
        details: format!("still referenced by {}", listed.join("; ")),
    })
}
