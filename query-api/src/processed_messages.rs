//! `GET /api/processed-queue` (newest first, paginated), `GET /api/processed-queue/counts` and
//! `GET /api/processed-queue/{key}`: the processed messages of one organization (`organizationId`,
//! required; every member reads them). Lists and counts read the index the projector's indexer keeps
//! (`processed_queue::index`); totals and counts are exact, from `processed_message_counts` for
//! whole UTC days and from the index for the parts of days a `from`/`to` cuts. A detail read fetches
//! the object from the bucket; an object that is gone answers `404` and leaves the index.
//!
//! Without a bucket (`S3_BUCKET` unset) every route answers `503`: nothing keeps the index.
//!
//! A key is checked before anything reaches the bucket: a key that is not exactly a key of the
//! caller's organization's queue (another organization's, `..`, an escaped character, an empty
//! segment) answers `404` like a missing one. Keys are taken from the raw request path, never decoded.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use contracts::read_models::PROCESSED_QUEUE;
use domain::processed_queue::{MessageKey, MessageStatus};
use domain::{Action, Actor, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use processed_queue::api::{configured, not_found, unavailable};
use processed_queue::index;
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{contains_pattern, Page, PageRequest};
use crate::AppState;

/// The path every key route starts with.
const KEY_ROUTE: &str = "/api/processed-queue/";

/// The filters of a list or counts request, checked.
struct Filter {
    organization_id: Uuid,
    environment_id: Option<Uuid>,
    status: Option<MessageStatus>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// An ILIKE pattern over the message id and the workflow id.
    search: Option<String>,
}

impl Filter {
    fn parse(actor: &Actor, params: &Params) -> Result<Filter, ApiError> {
        let organization_id = organization(actor, params)?;
        let status = params
            .get("status")
            .map(|raw| {
                MessageStatus::parse(raw).ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        format!("{raw:?} is not one of success, fail, ignore"),
                    )
                })
            })
            .transpose()?;
        let (from, to) = params.time_range()?;
        Ok(Filter {
            organization_id,
            environment_id: params.uuid("environmentId")?,
            status,
            from,
            to,
            search: params.search()?.map(contains_pattern),
        })
    }

    /// `AND`s the filter's conditions on the index's columns, except the time range.
    fn push_conditions(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query
            .push(" WHERE organization_id = ")
            .push_bind(self.organization_id);
        if let Some(environment) = self.environment_id {
            query.push(" AND environment_id = ").push_bind(environment);
        }
        if let Some(status) = self.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(search) = &self.search {
            // The expression of the `processed_messages_search` index.
            query
                .push(" AND (message_id || ' ' || COALESCE(workflow_id, '')) ILIKE ")
                .push_bind(search.clone());
        }
    }

    fn push_range(
        query: &mut QueryBuilder<'_, Postgres>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) {
        if let Some(from) = from {
            query.push(" AND stored_at >= ").push_bind(from);
        }
        if let Some(to) = to {
            query.push(" AND stored_at < ").push_bind(to);
        }
    }
}

/// The caller's organization: `organizationId`, required, readable by the caller (or `404`).
fn organization(actor: &Actor, params: &Params) -> Result<Uuid, ApiError> {
    let organization_id = params
        .uuid("organizationId")?
        .ok_or_else(|| ApiError::invalid("organizationId", "is required"))?;
    actor
        .authorize_in(organization_id, Resource::ProcessedMessages, Action::Read)
        .map_err(ApiError::denied("Organization", organization_id))?;
    Ok(organization_id)
}

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    let filter = Filter::parse(&actor, &params)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    configured(&state.bucket)?;
    state.consistency.wait(PROCESSED_QUEUE, consistency).await?;
    let rows = async {
        let mut query = QueryBuilder::new(format!(
            "SELECT {ROW_COLUMNS} FROM read_models.processed_messages"
        ));
        filter.push_conditions(&mut query);
        Filter::push_range(&mut query, filter.from, filter.to);
        query
            .push(" ORDER BY stored_at DESC, key DESC LIMIT ")
            .push_bind(page.limit)
            .push(" OFFSET ")
            .push_bind(page.offset());
        query
            .build_query_as::<Row>()
            .fetch_all(&state.pool)
            .await
            .map_err(ApiError::from)
    };
    let (rows, counts) = tokio::try_join!(rows, counts(&state.pool, &filter))?;
    let data: Vec<Value> = rows.iter().map(Row::view).collect();
    Ok(Json(Page::new(data, page, counts.total())))
}

pub async fn counts_route(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let filter = Filter::parse(&actor, &params)?;
    configured(&state.bucket)?;
    state.consistency.wait(PROCESSED_QUEUE, consistency).await?;
    let counts = counts(&state.pool, &filter).await?;
    Ok(Json(json!({
        "success": counts.success,
        "fail": counts.fail,
        "ignore": counts.ignore,
        "total": counts.total(),
    })))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    uri: Uri,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let organization_id = organization(&actor, &params)?;
    let raw = uri.path().strip_prefix(KEY_ROUTE).unwrap_or_default();
    let key = MessageKey::parse_in(organization_id, raw).ok_or_else(not_found)?;
    let bucket = configured(&state.bucket)?;
    state.consistency.wait(PROCESSED_QUEUE, consistency).await?;
    let Some(object) = bucket
        .get(&key.key, state.max_body_bytes)
        .await
        .map_err(unavailable)?
    else {
        index::remove(&state.pool, std::slice::from_ref(&key.key)).await?;
        return Err(not_found());
    };
    let indexed: Option<Row> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM read_models.processed_messages WHERE key = $1"
    ))
    .bind(&key.key)
    .fetch_optional(&state.pool)
    .await?;
    let mut view = match indexed {
        Some(row) => row.view(),
        // Not indexed yet: what the key and the object say.
        None => json!({
            "key": key.key,
            "id": key.id(),
            "environmentId": key.environment_id,
            "status": key.status,
            "messageId": key.message_id,
            "storedAt": object.last_modified.map(timestamp),
            "size": object.size,
            "parsed": Value::Null,
        }),
    };
    let body = if object.too_large {
        view["bodyOmitted"] = json!(format!(
            "the object is {} bytes; at most {} are shown",
            object.size, state.max_body_bytes
        ));
        Value::Null
    } else {
        // Shown as stored: JSON as JSON, anything else as text.
        serde_json::from_slice(&object.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&object.body).into_owned()))
    };
    view["organizationId"] = json!(organization_id);
    view["body"] = body;
    Ok(Json(view))
}

/// Messages per status matching a filter.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    success: i64,
    fail: i64,
    ignore: i64,
}

impl Counts {
    fn total(&self) -> i64 {
        self.success + self.fail + self.ignore
    }

    fn add(&mut self, rows: Vec<(String, i64)>) {
        for (status, n) in rows {
            match MessageStatus::parse(&status) {
                Some(MessageStatus::Success) => self.success += n,
                Some(MessageStatus::Fail) => self.fail += n,
                Some(MessageStatus::Ignore) => self.ignore += n,
                None => {}
            }
        }
    }
}

/// The exact counts of what `filter` matches (module docs): kept per-day counts for the whole UTC
/// days in its range, the index for the rest; a `search` is counted on the index.
async fn counts(pool: &PgPool, filter: &Filter) -> Result<Counts, ApiError> {
    let mut counts = Counts::default();
    let count_index = |from, to| {
        let mut query =
            QueryBuilder::new("SELECT status, count(*) FROM read_models.processed_messages");
        filter.push_conditions(&mut query);
        Filter::push_range(&mut query, from, to);
        query.push(" GROUP BY status");
        query
    };
    if filter.search.is_some() {
        let mut query = count_index(filter.from, filter.to);
        counts.add(query.build_query_as().fetch_all(pool).await?);
        return Ok(counts);
    }
    // The whole days in [from, to): from the first midnight at or after `from` to the last midnight
    // at or before `to`.
    let first_whole = filter.from.map(|from| {
        let day = from.date_naive();
        if midnight(day) == from {
            day
        } else {
            day + Days::new(1)
        }
    });
    let end_whole = filter.to.map(|to| to.date_naive());
    if let (Some(first), Some(end)) = (first_whole, end_whole) {
        if first >= end {
            let mut query = count_index(filter.from, filter.to);
            counts.add(query.build_query_as().fetch_all(pool).await?);
            return Ok(counts);
        }
    }
    let mut query = QueryBuilder::new(
        "SELECT status, sum(messages)::bigint FROM read_models.processed_message_counts WHERE organization_id = ",
    );
    query.push_bind(filter.organization_id);
    if let Some(environment) = filter.environment_id {
        query.push(" AND environment_id = ").push_bind(environment);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(first) = first_whole {
        query.push(" AND day >= ").push_bind(first);
    }
    if let Some(end) = end_whole {
        query.push(" AND day < ").push_bind(end);
    }
    query.push(" GROUP BY status");
    counts.add(query.build_query_as().fetch_all(pool).await?);
    if let (Some(from), Some(first)) = (filter.from, first_whole) {
        if midnight(first) > from {
            let mut query = count_index(Some(from), Some(midnight(first)));
            counts.add(query.build_query_as().fetch_all(pool).await?);
        }
    }
    if let (Some(to), Some(end)) = (filter.to, end_whole) {
        if to > midnight(end) {
            let mut query = count_index(Some(midnight(end)), Some(to));
            counts.add(query.build_query_as().fetch_all(pool).await?);
        }
    }
    Ok(counts)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const ROW_COLUMNS: &str = "key, id, environment_id, status, message_id, stored_at, size, summary, \
     workflow_id, received_at, processed_at, unparsed_reason";

/// One indexed message.
#[derive(sqlx::FromRow)]
struct Row {
    key: String,
    id: Uuid,
    environment_id: Uuid,
    status: String,
    message_id: String,
    stored_at: DateTime<Utc>,
    size: i64,
    summary: String,
    workflow_id: Option<String>,
    received_at: Option<DateTime<Utc>>,
    processed_at: Option<DateTime<Utc>>,
    unparsed_reason: Option<String>,
}

impl Row {
    /// The API's shape of an indexed message. `parsed` is `null` until its body has been read.
    fn view(&self) -> Value {
        json!({
            "key": self.key,
            "id": self.id,
            "environmentId": self.environment_id,
            "status": self.status,
            "messageId": self.message_id,
            "workflowId": self.workflow_id,
            "receivedAt": self.received_at.map(timestamp),
            "processedAt": self.processed_at.map(timestamp),
            "storedAt": timestamp(self.stored_at),
            "size": self.size,
            "parsed": match self.summary.as_str() {
                "parsed" => json!(true),
                "unparsed" => json!(false),
                _ => Value::Null,
            },
            "unparsedReason": self.unparsed_reason,
        })
    }
}
