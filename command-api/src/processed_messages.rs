//! `DELETE /api/processed-queue/{key}` and `DELETE /api/processed-queue?keys=k1,k2,…`: removing
//! processed messages from the queue's bucket (`organizationId` required; admins and System users).
//!
//! Keys are checked before anything reaches the bucket (another organization's key, `..`, an escaped
//! character, an empty segment: `404` like a missing key; keys come from the raw path, never
//! decoded). Then the command asks the bucket which keys exist and records one
//! `processed_message.deleted` event per existing key in the organization's `processed_queue`
//! stream, with the caller as actor; once that is committed, the objects are deleted. Should that
//! fail or this process stop first, the projector's indexer deletes them when it applies the events,
//! so a recorded deletion always happens. A bulk delete takes at most 1,000 keys (S3's limit for one
//! DeleteObjects call), comma-separated in the query or, for batches longer than a URL may be, as
//! `{"keys": [...]}` in the body; it answers per key: `{deleted: [keys], errors: [{key, error}]}`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use domain::processed_queue::{MessageKey, ProcessedQueue, ProcessedQueueCommand};
use domain::{Action, Aggregate, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use processed_queue::api::{configured, not_found, unavailable};
use processed_queue::bucket::DELETE_BATCH;
use processed_queue::Bucket;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::command::execute;
use crate::extract::Write;
use crate::AppState;

/// The body of a bulk delete that does not name its keys in the query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    #[serde(default)]
    keys: Option<Vec<String>>,
}

/// The path every key route starts with.
const KEY_ROUTE: &str = "/api/processed-queue/";

pub async fn delete_one(
    State(state): State<AppState>,
    uri: Uri,
    write: Write,
) -> Result<Response, ApiError> {
    let (organization_id, role, permission) = authorize(&write, &query(&uri)?)?;
    let raw = uri.path().strip_prefix(KEY_ROUTE).unwrap_or_default();
    let key = MessageKey::parse_in(organization_id, raw).ok_or_else(not_found)?;
    let bucket = configured(&state.bucket)?;
    let recorded = Mutex::new(Vec::new());
    let response = execute(&state, &write, || async {
        let (present, _) = in_bucket(bucket, std::slice::from_ref(&key)).await?;
        if present.is_empty() {
            return Err(not_found());
        }
        let body = json!({ "success": true, "key": key.key, "id": key.id() });
        record(&state, &write, role, permission, present, &recorded, body).await
    })
    .await?;
    delete_recorded(&state, recorded).await;
    Ok(response)
}

pub async fn delete_many(
    State(state): State<AppState>,
    uri: Uri,
    write: Write,
) -> Result<Response, ApiError> {
    let params = query(&uri)?;
    let (organization_id, role, permission) = authorize(&write, &params)?;
    let body: KeysBody = write.parse_or_default()?;
    let listed: Vec<String> = match (params.get("keys"), body.keys) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "keys",
                "send the keys in the query or in the body, not both",
            ))
        }
        (Some(keys), None) => keys
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        (None, Some(keys)) => keys,
        (None, None) => Vec::new(),
    };
    if listed.is_empty() {
        return Err(ApiError::invalid(
            "keys",
            "is required: comma-separated in the query, or a list in the body",
        ));
    }
    if listed.len() > DELETE_BATCH {
        return Err(ApiError::invalid(
            "keys",
            format!(
                "at most {DELETE_BATCH} keys per request, not {}",
                listed.len()
            ),
        ));
    }
    let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    // Malformed keys and other organizations' are reported as missing, without asking the bucket.
    let (keys, unknown): (Vec<_>, Vec<_>) = listed
        .iter()
        .map(|raw| (*raw, MessageKey::parse_in(organization_id, raw)))
        .partition(|(_, key)| key.is_some());
    let keys: Vec<MessageKey> = keys.into_iter().filter_map(|(_, key)| key).collect();
    let bucket = configured(&state.bucket)?;
    let recorded = Mutex::new(Vec::new());
    let response = execute(&state, &write, || async {
        let (present, missing) = in_bucket(bucket, &keys).await?;
        let errors: Vec<_> = unknown
            .iter()
            .map(|(raw, _)| raw.to_string())
            .chain(missing.into_iter().map(|k| k.key))
            .map(|key| json!({ "key": key, "error": "not found" }))
            .collect();
        let deleted: Vec<&str> = present.iter().map(|k| k.key.as_str()).collect();
        let body = json!({ "deleted": deleted, "errors": errors });
        record(&state, &write, role, permission, present, &recorded, body).await
    })
    .await?;
    delete_recorded(&state, recorded).await;
    Ok(response)
}

/// `keys` split into those with an object in the bucket and those without.
async fn in_bucket(
    bucket: &Bucket,
    keys: &[MessageKey],
) -> Result<(Vec<MessageKey>, Vec<MessageKey>), ApiError> {
    let names: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
    let exists = bucket.exist(&names).await.map_err(unavailable)?;
    let (present, missing): (Vec<_>, Vec<_>) =
        keys.iter().cloned().zip(exists).partition(|(_, e)| *e);
    Ok((
        present.into_iter().map(|(k, _)| k).collect(),
        missing.into_iter().map(|(k, _)| k).collect(),
    ))
}

/// The outcome that records the deletion of `keys` (none: nothing to commit), noting them in
/// `recorded` for [`delete_recorded`].
async fn record(
    state: &AppState,
    write: &Write,
    role: Role,
    permission: Permission,
    keys: Vec<MessageKey>,
    recorded: &Mutex<Vec<String>>,
    body: serde_json::Value,
) -> Result<Outcome, ApiError> {
    let organization_id = permission
        .organization
        .expect("a permission within an organization");
    let stream = ProcessedQueue::stream_id(organization_id);
    let version = state
        .executor
        .stream_heads(std::slice::from_ref(&stream))
        .await?
        .first()
        .map_or(0, |head| head.version);
    *recorded.lock().expect("not poisoned") = keys.iter().map(|k| k.key.clone()).collect();
    if keys.is_empty() {
        return Ok(Outcome::new(200, body, version));
    }
    let mut queue = Loaded::<ProcessedQueue> {
        state: ProcessedQueue::default(),
        version,
    };
    let events = queue.state.decide(ProcessedQueueCommand::Delete(keys))?;
    let events = queue.record(
        events,
        &write.metadata(role, Some(organization_id)),
        Utc::now(),
    );
    let changes = WriteSet::append(&stream, version, events);
    Ok(Outcome::new(200, body, changes.version_after()).appending(changes, permission))
}

/// Deletes the objects whose deletion was just committed. A failure is left to the indexer.
async fn delete_recorded(state: &AppState, recorded: Mutex<Vec<String>>) {
    let keys = recorded.into_inner().expect("not poisoned");
    let Some(bucket) = &state.bucket else { return };
    if keys.is_empty() {
        return;
    }
    match bucket.delete(&keys).await {
        Ok(deleted) if deleted.errors.is_empty() => {}
        Ok(deleted) => tracing::warn!(
            errors = ?deleted.errors,
            "the bucket refused recorded deletions; the indexer will retry them"
        ),
        Err(error) => tracing::warn!(
            error = %error,
            "recorded deletions not carried out; the indexer will retry them"
        ),
    }
}

/// The caller's organization (`organizationId`, required), where it may delete processed messages.
fn authorize(
    write: &Write,
    params: &HashMap<String, String>,
) -> Result<(Uuid, Role, Permission), ApiError> {
    let raw = params
        .get("organizationId")
        .ok_or_else(|| ApiError::invalid("organizationId", "is required"))?;
    let organization_id: Uuid = raw
        .parse()
        .map_err(|_| ApiError::invalid("organizationId", format!("{raw:?} is not a valid UUID")))?;
    let permission =
        Permission::within(organization_id, Resource::ProcessedMessages, Action::Delete);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", organization_id))?;
    Ok((organization_id, role, permission))
}

/// The query string's parameters, decoded.
fn query(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::invalid("query", e.body_text()))
}
