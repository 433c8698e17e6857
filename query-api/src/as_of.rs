//! Point-in-time reads (contract §6, `events/docs/contract.md`): `?asOf=<RFC 3339 time>` on a detail
//! endpoint answers with the resource as it was then, folded from its own stream's events recorded by
//! that time, with the names it nests as they were then too. Read models are not involved, so there is
//! nothing to wait for.
//!
//! A resource with no event by then answers `404`; one deleted by then answers `410`, saying when.
//! Another tenant's resource answers the same `404` as one that did not exist, so ids do not leak.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use domain::history::StreamState;
use domain::AccessError;
use event_log::{names_as_of, read_stream_as_of};
use http_layer::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::extract::Params;

/// The `asOf` query parameter, if the request has one.
pub fn requested(params: &Params) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get("asOf")
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(
                        "asOf",
                        format!("{raw:?} is not an RFC 3339 time (e.g. 2025-01-27T10:00:00Z)"),
                    )
                })
        })
        .transpose()
}

/// A stream folded up to a point in time.
pub struct Past {
    pub state: StreamState,
    /// The version of the last event folded.
    pub version: i64,
    /// The organization its first event recorded, if any (the convention every aggregate follows).
    pub organization_id: Option<Uuid>,
}

/// Folds `stream_id` as it was at `at`; `404` when it had no event by then.
pub async fn fold(
    pool: &PgPool,
    stream_id: &str,
    at: DateTime<Utc>,
    label: &str,
    id: Uuid,
) -> Result<Past, ApiError> {
    let events = read_stream_as_of(pool, stream_id, at)
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading a stream")))?;
    let (Some(first), Some(mut state)) = (events.first(), StreamState::for_stream(stream_id))
    else {
        return Err(not_found_then(label, id, at));
    };
    let organization_id = first
        .data
        .get("organizationId")
        .and_then(|v| v.as_str()?.parse().ok());
    for event in &events {
        state
            .apply(event)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("folding a stream")))?;
    }
    Ok(Past {
        state,
        version: events.last().map_or(0, |e| e.stream_version),
        organization_id,
    })
}

fn rendered(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn not_found_then(label: &str, id: Uuid, at: DateTime<Utc>) -> ApiError {
    ApiError::NotFound {
        error: format!("{label} not found"),
        details: format!(
            "no {} with id {id} existed at {}",
            label.to_lowercase(),
            rendered(at)
        ),
    }
}

/// The answer for a resource that was deleted by the time asked for.
pub fn gone(label: &str, id: Uuid, at: DateTime<Utc>, deleted_at: DateTime<Utc>) -> ApiError {
    ApiError::Gone {
        error: format!("{label} deleted"),
        details: format!(
            "{} {id} was deleted at {}, before {}",
            label.to_lowercase(),
            rendered(deleted_at),
            rendered(at)
        ),
    }
}

/// The answer for a resource that was not live at `at` although its stream had begun: deleted by then
/// (`410`), or not there (`404`).
pub fn not_live(label: &str, id: Uuid, at: DateTime<Utc>, state: &StreamState) -> ApiError {
    match state.deleted_at() {
        Some(deleted_at) => gone(label, id, at, deleted_at),
        None => not_found_then(label, id, at),
    }
}

/// Maps a refusal of access: `403`, or for another tenant's resource the `404` of one that did not
/// exist then.
pub fn denied(
    label: &'static str,
    id: Uuid,
    at: DateTime<Utc>,
) -> impl FnOnce(AccessError) -> ApiError {
    move |error| match error {
        AccessError::Forbidden { .. } => ApiError::Forbidden(error.to_string()),
        AccessError::Hidden => not_found_then(label, id, at),
    }
}

/// The names `streams` had at `at`, by stream id.
pub async fn names(
    pool: &PgPool,
    streams: &[String],
    at: DateTime<Utc>,
) -> Result<HashMap<String, String>, ApiError> {
    Ok(names_as_of(pool, streams, at)
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading names")))?
        .into_iter()
        .collect())
}
