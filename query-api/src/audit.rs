//! `GET /api/audit-events` (contract §6, `events/docs/contract.md`): one row per event, newest first.
//!
//! Every row comes whole from `read_models.audit_index`, which the `audit` projection keeps: the
//! filters, what the row shows, and its `changes`, computed when the event was indexed by folding it
//! into its stream's state with the aggregates' own `apply` ([`domain::history`]). Write-only values
//! show as `"[redacted]"`. Long values of changes are stored once in `audit_values` and put back in
//! here. A page or an export batch therefore reads its own rows and the long values they show,
//! whatever the length of the streams they belong to; the log itself is never read.
//!
//! `Accept: application/x-ndjson` streams every matching row, one JSON object per line, a batch at a
//! time, so an export holds one batch in memory however long the trail is.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use contracts::read_models::{audit_count, audit_resource_count, AuditRows, AUDIT};
use domain::history::resource_types;
use domain::{Action, Resource};
use event_log::Stored;
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::export;
use crate::extract::{Caller, Params};
use crate::pagination::{Page, PageRequest};
use crate::AppState;

/// Rows an export reads at a time.
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
    let (from, to) = params.time_range()?;
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
        from,
        to,
    };
    let export = export::wanted(&headers);
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
/// scopes (organizations, and a resource type or one resource of a type), counted otherwise.
async fn total(pool: &PgPool, filter: &Filter) -> Result<i64, ApiError> {
    let narrower = filter.actor.is_some()
        || filter.from.is_some()
        || filter.to.is_some()
        || (filter.resource_id.is_some() && filter.resource_type.is_none());
    if narrower {
        let query = format!("SELECT count(*) FROM read_models.audit_index a WHERE {MATCHING}");
        let (total,): (i64,) = bind_filter(sqlx::query_as(&query), filter)
            .fetch_one(pool)
            .await?;
        return Ok(total);
    }
    let scope = |rows: AuditRows| match (filter.resource_type.as_deref(), filter.resource_id) {
        (Some(resource_type), Some(id)) => audit_resource_count(rows, resource_type, id),
        (resource_type, _) => audit_count(rows, resource_type),
    };
    let scopes: Vec<String> = match &filter.organizations {
        None => vec![scope(AuditRows::All)],
        Some(organizations) => organizations
            .iter()
            .map(|id| scope(AuditRows::Organization(*id)))
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

/// What `audit_index` holds of one row (see `schemas/migrations/0012_audit_changes.sql`).
#[derive(sqlx::FromRow)]
struct IndexRow {
    global_position: i64,
    event_id: Uuid,
    event_type: String,
    resource_type: String,
    resource_id: Option<Uuid>,
    organization_id: Option<Uuid>,
    actor_id: String,
    actor_role: Option<String>,
    occurred_at: DateTime<Utc>,
    request_id: String,
    client_ip: Option<String>,
    user_agent: Option<String>,
    channel: Option<String>,
    changes: Stored,
    large_values: Stored,
}

/// The audit rows at `positions`, in that order: their index rows, with the long values of their
/// changes put back in place.
async fn audit_rows(pool: &PgPool, positions: &[i64]) -> Result<Vec<Value>, ApiError> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<IndexRow> = sqlx::query_as(
        "SELECT global_position, event_id, event_type, resource_type, resource_id, organization_id, actor_id, \
                actor_role, occurred_at, request_id, client_ip, user_agent, channel, changes, large_values \
         FROM read_models.audit_index WHERE global_position = ANY($1)",
    )
    .bind(positions)
    .fetch_all(pool)
    .await?;
    let hashes: Vec<&str> = rows
        .iter()
        .filter_map(|row| row.large_values.0.as_object())
        .flat_map(|fields| fields.values())
        .filter_map(Value::as_object)
        .flat_map(|sides| sides.values().filter_map(Value::as_str))
        .collect();
    let mut values: HashMap<String, Value> = HashMap::new();
    if !hashes.is_empty() {
        let stored: Vec<(String, Stored)> =
            sqlx::query_as("SELECT hash, value FROM read_models.audit_values WHERE hash = ANY($1)")
                .bind(&hashes)
                .fetch_all(pool)
                .await?;
        values.extend(
            stored
                .into_iter()
                .map(|(hash, Stored(value))| (hash, value)),
        );
    }
    let mut rows: HashMap<i64, Value> = rows
        .into_iter()
        .map(|row| Ok((row.global_position, row_json(row, &values)?)))
        .collect::<Result<_, ApiError>>()?;
    Ok(positions.iter().filter_map(|p| rows.remove(p)).collect())
}

fn row_json(row: IndexRow, values: &HashMap<String, Value>) -> Result<Value, ApiError> {
    let Stored(mut changes) = row.changes;
    if let (Some(changes), Some(large)) = (changes.as_object_mut(), row.large_values.0.as_object())
    {
        for (field, sides) in large {
            let (Some(change), Some(sides)) = (changes.get_mut(field), sides.as_object()) else {
                continue;
            };
            for (side, hash) in sides {
                let value = hash
                    .as_str()
                    .and_then(|hash| values.get(hash))
                    .ok_or_else(|| {
                        ApiError::Internal(anyhow::anyhow!(
                            "audit row {}: the value {hash} of {field} is not stored",
                            row.global_position
                        ))
                    })?;
                change[side.as_str()] = value.clone();
            }
        }
    }
    Ok(json!({
        "id": row.event_id,
        "position": row.global_position,
        "type": row.event_type,
        "resourceType": row.resource_type,
        "resourceId": row.resource_id,
        "organizationId": row.organization_id,
        "actor": { "id": row.actor_id, "role": row.actor_role },
        "occurredAt": row.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "requestId": row.request_id,
        "ip": row.client_ip,
        "userAgent": row.user_agent,
        "channel": row.channel,
        "changes": changes,
    }))
}

/// Streams every row `filter` matches as NDJSON, newest first, a batch at a time. Each batch goes on
/// below the last position sent, so rows appended during the export neither shift nor join it.
fn export_rows(pool: PgPool, filter: Filter) -> Response {
    let batches = futures::stream::unfold(
        (pool, filter, Some(i64::MAX)),
        |(pool, filter, before)| async move {
            let batch = export_batch(&pool, &filter, before?).await;
            let next = batch.as_ref().ok().and_then(|(_, last)| *last);
            Some((batch.map(|(rows, _)| rows), (pool, filter, next)))
        },
    );
    export::ndjson("audit", batches)
}

/// The export's rows below position `before`, and the last one's position (`None`: no more).
async fn export_batch(
    pool: &PgPool,
    filter: &Filter,
    before: i64,
) -> Result<(Vec<Value>, Option<i64>), ApiError> {
    let query = format!(
        "SELECT a.global_position FROM read_models.audit_index a WHERE {MATCHING} \
         AND a.global_position < $7 ORDER BY a.global_position DESC LIMIT $8"
    );
    let positions: Vec<(i64,)> = bind_filter(sqlx::query_as(&query), filter)
        .bind(before)
        .bind(EXPORT_BATCH)
        .fetch_all(pool)
        .await?;
    let last = positions.last().map(|(p,)| *p);
    let positions: Vec<i64> = positions.into_iter().map(|(p,)| p).collect();
    Ok((audit_rows(pool, &positions).await?, last))
}
