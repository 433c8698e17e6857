//! `GET /api/processed-queue` (newest first, paginated), `GET /api/processed-queue/counts` and
//! `GET /api/processed-queue/{key}`: the processed messages of one organization (`organizationId`,
//! required; every member reads them). Lists and counts read the index the projector's indexer keeps
//! (`processed_queue::index`); totals and counts are exact, from the kept per-day and per-hour counts
//! for whole UTC days and hours, and from the index for the parts of hours a `from`/`to` cuts. A detail read fetches
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
use chrono::{DateTime, Days, DurationRound, NaiveDate, SecondsFormat, TimeDelta, Utc};
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

    /// ` WHERE` the filter's conditions on the index's columns, except the time range.
    fn push_conditions(&self, query: &mut QueryBuilder<'_, Postgres>) {
        self.push_scope(query);
        if let Some(search) = &self.search {
            // The expression of the `processed_messages_search` index.
            query
                .push(" AND (message_id || ' ' || COALESCE(workflow_id, '')) ILIKE ")
                .push_bind(search.clone());
        }
    }

    /// `SELECT status, messages AS n` from a table of kept counts, with the filter's organization,
    /// environment and status.
    fn push_kept(&self, query: &mut QueryBuilder<'_, Postgres>, table: &str) {
        query.push(format!(
            "SELECT status, messages AS n FROM read_models.{table}"
        ));
        self.push_scope(query);
    }

    /// ` WHERE` the filter's organization, environment and status: columns of the index and of the
    /// kept counts alike.
    fn push_scope(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query
            .push(" WHERE organization_id = ")
            .push_bind(self.organization_id);
        if let Some(environment) = self.environment_id {
            query.push(" AND environment_id = ").push_bind(environment);
        }
        if let Some(status) = self.status {
            query.push(" AND status = ").push_bind(status.as_str());
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
        // The page's keys first, from an index alone (the skipped rows are never read), then its rows.
        let mut query = QueryBuilder::new(format!(
            "SELECT {ROW_COLUMNS} FROM read_models.processed_messages WHERE key IN ( \
               SELECT key FROM read_models.processed_messages"
        ));
        filter.push_conditions(&mut query);
        Filter::push_range(&mut query, filter.from, filter.to);
        query
            .push(" ORDER BY stored_at DESC, key DESC LIMIT ")
            .push_bind(page.limit)
            .push(" OFFSET ")
            .push_bind(page.offset())
            .push(") ORDER BY stored_at DESC, key DESC");
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

/// The exact counts of what `filter` matches (module docs), in one statement: the kept per-day counts
/// for the whole UTC days of its range, the per-hour counts for the whole hours at its ends, the index
/// for the partial hours left; a `search` is counted on the index.
async fn counts(pool: &PgPool, filter: &Filter) -> Result<Counts, ApiError> {
    let parts = match filter.search {
        Some(_) => vec![Part::Rows(filter.from, filter.to)],
        None => parts(filter.from, filter.to),
    };
    if parts.is_empty() {
        return Ok(Counts::default());
    }
    let mut query = QueryBuilder::new("SELECT status, sum(n)::bigint FROM (");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            query.push(" UNION ALL ");
        }
        match *part {
            Part::Days(first, end) => {
                filter.push_kept(&mut query, "processed_message_counts");
                if let Some(first) = first {
                    query.push(" AND day >= ").push_bind(first);
                }
                if let Some(end) = end {
                    query.push(" AND day < ").push_bind(end);
                }
            }
            Part::Hours(first, end) => {
                filter.push_kept(&mut query, "processed_message_hourly_counts");
                query
                    .push(" AND hour >= ")
                    .push_bind(first)
                    .push(" AND hour < ")
                    .push_bind(end);
            }
            Part::Rows(from, to) => {
                query.push("SELECT status, 1 AS n FROM read_models.processed_messages");
                filter.push_conditions(&mut query);
                Filter::push_range(&mut query, from, to);
            }
        }
    }
    query.push(") parts GROUP BY status");
    let mut counts = Counts::default();
    counts.add(query.build_query_as().fetch_all(pool).await?);
    Ok(counts)
}

/// Where the messages of part of a time range are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The kept per-day counts of the days from the first (inclusive) to the last (exclusive).
    Days(Option<NaiveDate>, Option<NaiveDate>),
    /// The kept per-hour counts of the hours starting from the first (inclusive) to the last.
    Hours(DateTime<Utc>, DateTime<Utc>),
    /// The index's rows, stored from the first (inclusive) to the last (exclusive).
    Rows(Option<DateTime<Utc>>, Option<DateTime<Utc>>),
}

/// The parts `[from, to)` is counted in: the whole days inside it, then for each end the whole hours
/// and the rows of the partial hours.
fn parts(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Vec<Part> {
    let first_day = from.map(|from| {
        let day = from.date_naive();
        if midnight(day) == from {
            day
        } else {
            day + Days::new(1)
        }
    });
    let end_day = to.map(|to| to.date_naive());
    if let (Some(from), Some(to), Some(first), Some(end)) = (from, to, first_day, end_day) {
        if first >= end {
            return hours_and_rows(from, to);
        }
    }
    let mut parts = vec![Part::Days(first_day, end_day)];
    if let (Some(from), Some(first)) = (from, first_day) {
        parts.extend(hours_and_rows(from, midnight(first)));
    }
    if let (Some(to), Some(end)) = (to, end_day) {
        parts.extend(hours_and_rows(midnight(end), to));
    }
    parts
}

/// The parts of `[from, to)`, less than a day long: its whole hours and the rows of the rest.
fn hours_and_rows(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Part> {
    if from >= to {
        return Vec::new();
    }
    let hour = |t: DateTime<Utc>| {
        t.duration_trunc(TimeDelta::hours(1))
            .expect("an hour divides any time")
    };
    let first_hour = match hour(from) {
        start if start == from => from,
        start => start + TimeDelta::hours(1),
    };
    let end_hour = hour(to);
    if first_hour >= end_hour {
        return vec![Part::Rows(Some(from), Some(to))];
    }
    let mut parts = vec![Part::Hours(first_hour, end_hour)];
    if first_hour > from {
        parts.push(Part::Rows(Some(from), Some(first_hour)));
    }
    if to > end_hour {
        parts.push(Part::Rows(Some(end_hour), Some(to)));
    }
    parts
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        raw.parse().unwrap()
    }

    fn day(raw: &str) -> NaiveDate {
        raw.parse().unwrap()
    }

    #[test]
    fn a_range_is_counted_in_whole_days_whole_hours_and_rows() {
        assert_eq!(
            parts(
                Some(at("2026-03-01T10:30:00Z")),
                Some(at("2026-03-04T05:15:00Z"))
            ),
            vec![
                Part::Days(Some(day("2026-03-02")), Some(day("2026-03-04"))),
                Part::Hours(at("2026-03-01T11:00:00Z"), at("2026-03-02T00:00:00Z")),
                Part::Rows(
                    Some(at("2026-03-01T10:30:00Z")),
                    Some(at("2026-03-01T11:00:00Z"))
                ),
                Part::Hours(at("2026-03-04T00:00:00Z"), at("2026-03-04T05:00:00Z")),
                Part::Rows(
                    Some(at("2026-03-04T05:00:00Z")),
                    Some(at("2026-03-04T05:15:00Z"))
                ),
            ]
        );
        assert_eq!(
            parts(
                Some(at("2026-03-01T00:00:00Z")),
                Some(at("2026-03-03T00:00:00Z"))
            ),
            vec![Part::Days(Some(day("2026-03-01")), Some(day("2026-03-03")))]
        );
        assert_eq!(parts(None, None), vec![Part::Days(None, None)]);
        assert_eq!(
            parts(None, Some(at("2026-03-03T02:00:00Z"))),
            vec![
                Part::Days(None, Some(day("2026-03-03"))),
                Part::Hours(at("2026-03-03T00:00:00Z"), at("2026-03-03T02:00:00Z")),
            ]
        );
        // Within a day, and within an hour.
        assert_eq!(
            parts(
                Some(at("2026-03-01T10:30:00Z")),
                Some(at("2026-03-01T12:10:00Z"))
            ),
            vec![
                Part::Hours(at("2026-03-01T11:00:00Z"), at("2026-03-01T12:00:00Z")),
                Part::Rows(
                    Some(at("2026-03-01T10:30:00Z")),
                    Some(at("2026-03-01T11:00:00Z"))
                ),
                Part::Rows(
                    Some(at("2026-03-01T12:00:00Z")),
                    Some(at("2026-03-01T12:10:00Z"))
                ),
            ]
        );
        let moment = Some(at("2026-03-01T10:30:00Z"));
        assert_eq!(
            parts(moment, Some(at("2026-03-01T10:40:00Z"))),
            vec![Part::Rows(moment, Some(at("2026-03-01T10:40:00Z")))]
        );
        assert_eq!(parts(moment, moment), Vec::new());
    }
}
