//! `GET /api/audit-events` (contract §6, `events/docs/contract.md`): one row per event, newest first,
//! straight from the log.
//!
//! The filters are answered by `read_models.audit_index`, which the `audit` projection keeps; the
//! rows are then read from the log by position, and each row's `changes` are the difference between
//! its stream's state before and after the event, folded with the aggregates' own `apply`
//! ([`events::history`]). Write-only values show as `"[redacted]"`: the fold only knows whether one
//! is set, never its ciphertext.
//!
//! `Accept: application/x-ndjson` streams every matching row, one JSON object per line, a batch at a
//! time, so an export holds one batch in memory however long the trail is.

use std::collections::{HashMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use events::auth::Authenticated;
use events::history::{changes, resource_types, subject, StreamState};
use events::read_models::{audit_count, AuditRows, AUDIT};
use events::store::read_histories;
use events::{Action, RecordedEvent, Resource};
use futures::SinkExt;
use http_layer::ApiError;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{Page, PageRequest};
use crate::AppState;

pub const NDJSON: &str = "application/x-ndjson";

/// Rows an export reads and folds at a time.
const EXPORT_BATCH: i64 = 500;

/// Longest accepted `actor` filter (actor ids are user ids, or `system`).
const ACTOR_MAX_CHARS: usize = 200;

/// The filters of one request, checked.
#[derive(Debug, Clone)]
struct Filter {
    /// `None`: every organization's rows and the platform's (System users).
    organizations: Option<Vec<Uuid>>,
    resource_type: Option<String>,
    resource_id: Option<Uuid>,
    actor: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// The index rows a filter matches, in the order of their binds below.
const MATCHING: &str = "($1::uuid[] IS NULL OR a.organization_id = ANY($1)) \
     AND ($2::text IS NULL OR a.resource_type = $2) AND ($3::uuid IS NULL OR a.resource_id = $3) \
     AND ($4::text IS NULL OR a.actor_id = $4) AND ($5::timestamptz IS NULL OR a.occurred_at >= $5) \
     AND ($6::timestamptz IS NULL OR a.occurred_at < $6)";

fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&filter.organizations)
        .bind(&filter.resource_type)
        .bind(filter.resource_id)
        .bind(&filter.actor)
        .bind(filter.from)
        .bind(filter.to)
}

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    actor.authorize_anywhere(Resource::AuditEvents, Action::Read)?;
    let organizations = match params.uuid("organizationId")? {
        Some(organization) => {
            actor
                .authorize_in(organization, Resource::AuditEvents, Action::Read)
                .map_err(ApiError::denied("Organization", organization))?;
            Some(vec![organization])
        }
        None => actor.readable_organizations(Resource::AuditEvents),
    };
    let filter = Filter {
        organizations,
        resource_type: resource_type(&params)?,
        resource_id: params.uuid("resourceId")?,
        actor: match params.get("actor") {
            Some(a) if a.chars().count() > ACTOR_MAX_CHARS => {
                return Err(ApiError::invalid(
                    "actor",
                    format!("must be at most {ACTOR_MAX_CHARS} characters"),
                ))
            }
            other => other.map(str::to_owned),
        },
        from: time(&params, "from")?,
        to: time(&params, "to")?,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from > to {
            return Err(ApiError::invalid("from", "must not be after to"));
        }
    }
    let export = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON));
    // Paging parameters are checked even for an export, which ignores them.
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(AUDIT, consistency).await?;
    if export {
        return Ok(export_rows(state.pool.clone(), filter));
    }

    let positions = async {
        let query = format!(
            "SELECT a.global_position FROM read_models.audit_index a WHERE {MATCHING} \
             ORDER BY a.global_position DESC LIMIT $7 OFFSET $8"
        );
        bind_filter(sqlx::query_as::<_, (i64,)>(&query), &filter)
            .bind(page.limit)
            .bind(page.offset())
            .fetch_all(&state.pool)
            .await
            .map_err(ApiError::from)
    };
    let (positions, total) = tokio::try_join!(positions, total(&state.pool, &filter))?;
    let positions: Vec<i64> = positions.into_iter().map(|(p,)| p).collect();
    let rows = audit_rows(&state.pool, &positions).await?;
    Ok(Json(Page::<Value>::new(rows, page, total)).into_response())
}

/// The exact number of rows `filter` matches: from the kept counts where the filter is one of their
/// scopes (organizations and resource type), counted otherwise.
async fn total(pool: &PgPool, filter: &Filter) -> Result<i64, ApiError> {
    let narrower = filter.resource_id.is_some()
        || filter.actor.is_some()
        || filter.from.is_some()
        || filter.to.is_some();
    if narrower {
        let query = format!("SELECT count(*) FROM read_models.audit_index a WHERE {MATCHING}");
        let (total,): (i64,) = bind_filter(sqlx::query_as(&query), filter)
            .fetch_one(pool)
            .await?;
        return Ok(total);
    }
    let resource_type = filter.resource_type.as_deref();
    let scopes: Vec<String> = match &filter.organizations {
        None => vec![audit_count(AuditRows::All, resource_type)],
        Some(organizations) => organizations
            .iter()
            .map(|id| audit_count(AuditRows::Organization(*id), resource_type))
            .collect(),
    };
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(count), 0)::bigint FROM read_models.audit_counts WHERE scope = ANY($1)",
    )
    .bind(&scopes)
    .fetch_one(pool)
    .await?)
}

fn resource_type(params: &Params) -> Result<Option<String>, ApiError> {
    match params.get("resourceType") {
        None => Ok(None),
        Some(kind) if resource_types().contains(&kind) => Ok(Some(kind.to_owned())),
        Some(other) => Err(ApiError::invalid(
            "resourceType",
            format!(
                "{other:?} is not a resource type; one of {}",
                resource_types().join(", ")
            ),
        )),
    }
}

fn time(params: &Params, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid(name, format!("{raw:?} is not an RFC 3339 time")))
        })
        .transpose()
}

/// The audit rows of the events at `positions`, in that order.
async fn audit_rows(pool: &PgPool, positions: &[i64]) -> Result<Vec<Value>, ApiError> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let histories = read_histories(pool, positions)
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading the log")))?;
    let wanted: HashSet<i64> = positions.iter().copied().collect();
    let mut rows: HashMap<i64, Value> = HashMap::with_capacity(positions.len());
    // Histories come stream by stream, each in version order: fold one stream at a time.
    let mut stream = "";
    let mut folded: Option<StreamState> = None;
    for event in &histories {
        if event.stream_id != stream {
            stream = &event.stream_id;
            folded = StreamState::for_stream(stream);
        }
        let change = match &mut folded {
            Some(folded) => {
                let before = folded.audited_fields(event);
                folded.apply(event).map_err(|e| {
                    ApiError::Internal(anyhow::Error::new(e).context("folding a stream"))
                })?;
                changes(&before, &folded.audited_fields(event), event)
            }
            None => Default::default(),
        };
        if wanted.contains(&event.global_position) {
            rows.insert(event.global_position, row(event, change));
        }
    }
    Ok(positions.iter().filter_map(|p| rows.remove(p)).collect())
}

fn row(event: &RecordedEvent, changes: serde_json::Map<String, Value>) -> Value {
    let about = subject(event);
    let metadata = &event.metadata.0;
    json!({
        "id": event.event_id,
        "position": event.global_position,
        "type": event.event_type,
        "resourceType": about.resource_type,
        "resourceId": about.resource_id,
        "organizationId": about.organization_id,
        "actor": { "id": metadata.actor.id, "role": metadata.actor.role },
        "occurredAt": event.recorded_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "requestId": metadata.request_id,
        "ip": metadata.client_ip,
        "userAgent": metadata.user_agent,
        "changes": changes,
    })
}

/// Streams every row `filter` matches as NDJSON, newest first, a batch at a time. Each batch goes on
/// below the last position sent, so rows appended during the export neither shift nor join it.
fn export_rows(pool: PgPool, filter: Filter) -> Response {
    let (mut lines, body) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let result: Result<(), ApiError> = async {
            let query = format!(
                "SELECT a.global_position FROM read_models.audit_index a WHERE {MATCHING} \
                 AND a.global_position < $7 ORDER BY a.global_position DESC LIMIT $8"
            );
            let mut before = i64::MAX;
            loop {
                let positions: Vec<(i64,)> = bind_filter(sqlx::query_as(&query), &filter)
                    .bind(before)
                    .bind(EXPORT_BATCH)
                    .fetch_all(&pool)
                    .await?;
                let Some((last,)) = positions.last().copied() else {
                    return Ok(());
                };
                before = last;
                let positions: Vec<i64> = positions.into_iter().map(|(p,)| p).collect();
                let mut chunk = Vec::new();
                for row in audit_rows(&pool, &positions).await? {
                    serde_json::to_writer(&mut chunk, &row).map_err(anyhow::Error::from)?;
                    chunk.push(b'\n');
                }
                if lines.send(Ok(Bytes::from(chunk))).await.is_err() {
                    // The client went away.
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(error) = result {
            tracing::error!(error = %error, "audit export failed part-way");
            let _ = lines
                .send(Err(std::io::Error::other("the export failed part-way")))
                .await;
        }
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(body),
    )
        .into_response()
}
