//! Running a command: retries after a lost race, `If-Match`, idempotency keys, and the response that
//! every write answers with (status, body, `ETag`, `Location`, `X-Consistency-Token`).
//!
//! A command is an async function that loads what it needs, decides, and commits its events with
//! [`Outcome::commit`]. It is called again when another writer got to a stream first: the resource
//! itself, or a stream the write only depends on (its organization, say). With `If-Match`, the next
//! run's own check answers `412` when the resource itself moved; a dependency that moved is retried
//! like any lost race, since the client pinned only the resource.

use std::future::Future;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use events::store::{log_head, retry_backoff, StoredResponse, WriteSet};
use events::{LogPosition, Permission};
use http_layer::ApiError;
use serde::Serialize;
use serde_json::Value;

use crate::extract::Write;
use crate::AppState;

/// How often a command is run again after losing a race for a stream.
const ATTEMPTS: u32 = 50;

const CONSISTENCY_TOKEN: &str = "x-consistency-token";

/// What a successful command answers.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Value,
    /// The resource's stream version after the command: the `ETag`.
    pub version: i64,
    pub location: Option<String>,
    /// Where the command's last event landed; `None` until committed, or when nothing was appended.
    pub position: Option<LogPosition>,
}

impl Outcome {
    pub fn new(status: StatusCode, body: impl Serialize, version: i64) -> Self {
        Outcome {
            status,
            // Serialising our own view types cannot fail.
            body: serde_json::to_value(body).expect("views serialise to JSON"),
            version,
            location: None,
            position: None,
        }
    }

    /// The API's delete answer (contract §4): `{"success": true, "id": ...}`.
    pub fn deleted(id: impl Serialize, version: i64) -> Self {
        Outcome::new(
            StatusCode::OK,
            serde_json::json!({ "success": true, "id": id }),
            version,
        )
    }

    pub fn located(mut self, location: String) -> Self {
        self.location = Some(location);
        self
    }

    /// Commits the command's writes, with this response kept under the request's idempotency key in
    /// the same statement, so that a retried request gets exactly this answer and appends nothing, as
    /// long as its caller still holds `permission` (the one the command was authorised by).
    pub async fn commit(
        mut self,
        state: &AppState,
        changes: WriteSet,
        write: &Write,
        permission: Permission,
    ) -> Result<Outcome, ApiError> {
        let changes = match &write.idempotency_key {
            Some(key) => changes.remember_response(StoredResponse {
                caller: write.actor.user_id.to_string(),
                key: key.clone(),
                request_hash: write.fingerprint.clone(),
                status: self.status.as_u16() as i16,
                headers: serde_json::to_value(self.headers()).expect("header pairs serialise"),
                body: self.body.to_string(),
                permission,
            }),
            None => changes,
        };
        self.position = Some(state.store.commit(changes).await?.position);
        Ok(self)
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![("etag".to_owned(), format!("\"{}\"", self.version))];
        if let Some(location) = &self.location {
            headers.push(("location".to_owned(), location.clone()));
        }
        if let Some(position) = self.position {
            headers.push((CONSISTENCY_TOKEN.to_owned(), position.to_string()));
        }
        headers
    }
}

/// Runs a command with the write's idempotency key and retry rules, and renders its response.
pub async fn execute<F, Fut>(
    state: &AppState,
    write: &Write,
    command: F,
) -> Result<Response, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Outcome, ApiError>>,
{
    if let Some(replayed) = replay(state, write).await? {
        return Ok(replayed);
    }
    let mut attempt = 0;
    let mut outcome = loop {
        attempt += 1;
        match command().await {
            Err(ApiError::VersionConflict) if attempt < ATTEMPTS => {
                // The same idempotency key may just have committed; if so, that is our answer.
                if let Some(replayed) = replay(state, write).await? {
                    return Ok(replayed);
                }
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            Err(error) if write.idempotency_key.is_some() => {
                // A concurrent request with the same key may have won the race that made this one
                // fail (the same name claimed, the resource already deleted): answer as it did.
                return match replay(state, write).await? {
                    Some(replayed) => Ok(replayed),
                    None => Err(error),
                };
            }
            other => break other?,
        }
    };
    if outcome.position.is_none() {
        // Nothing was appended (an update that changed nothing): reading at the log head still
        // guarantees the client sees at least the state it was just shown.
        outcome.position = Some(log_head(state.store.pool()).await?);
    }
    Ok(render(
        outcome.status,
        &outcome.headers(),
        outcome.body.to_string(),
    ))
}

/// A response kept under an idempotency key, with the log position of the write that made it.
#[derive(sqlx::FromRow)]
struct KeptResponse {
    request_hash: String,
    status: i16,
    headers: sqlx::types::Json<Vec<(String, String)>>,
    body: String,
    /// `None` for responses kept before permissions were recorded with them.
    permission: Option<sqlx::types::Json<Permission>>,
    transaction_id: i64,
    global_position: i64,
}

/// The stored response for a repeated idempotency key, or `409` when the key was used for another
/// request. A caller who no longer holds the permission the write was made with gets what a fresh
/// request would get (`403`, or `404` for an organization it can no longer see), not the response.
async fn replay(state: &AppState, write: &Write) -> Result<Option<Response>, ApiError> {
    let Some(key) = &write.idempotency_key else {
        return Ok(None);
    };
    let stored: Option<KeptResponse> = sqlx::query_as(
        "SELECT request_hash, status, headers, body, permission, transaction_id, global_position \
         FROM idempotency_keys \
         WHERE caller = $1 AND key = $2 AND created_at > now() - interval '24 hours'",
    )
    .bind(write.actor.user_id.to_string())
    .bind(key)
    .fetch_optional(state.store.pool())
    .await?;
    let Some(kept) = stored else {
        return Ok(None);
    };
    if kept.request_hash != write.fingerprint {
        return Err(ApiError::Conflict {
            error: "Idempotency key reused".into(),
            details: "Idempotency-Key: this key was already used for a different request".into(),
        });
    }
    if let Some(sqlx::types::Json(permission)) = kept.permission {
        write
            .actor
            .authorize(&permission)
            .map_err(|error| match permission.organization {
                Some(organization) => ApiError::denied("Organization", organization)(error),
                None => error.into(),
            })?;
    }
    let status = StatusCode::from_u16(kept.status as u16).map_err(anyhow::Error::from)?;
    let position = LogPosition {
        transaction_id: kept.transaction_id,
        global_position: kept.global_position,
    };
    let mut headers = kept.headers.0;
    headers.push((CONSISTENCY_TOKEN.to_owned(), position.to_string()));
    let mut response = render(status, &headers, kept.body);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(response))
}

fn render(status: StatusCode, headers: &[(String, String)], body: String) -> Response {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            map.insert(name, value);
        }
    }
    (status, map, body).into_response()
}
