//! The operator surface's platform alerts (notifications mode), System only, from the
//! `notifications` read model: `GET /api/v1/admin/notifications` (newest activity first, filtered,
//! paginated) and `GET /api/v1/admin/notifications/unread` (the count of unread alerts by severity,
//! for a badge).

use axum::extract::State;
use axum::Json;
use contracts::read_models::NOTIFICATIONS;
use domain::feedback::Severity;
use domain::{Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder};

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{page_of, Page, PageRequest};
use crate::AppState;

const STATES: [&str; 3] = ["unread", "acknowledged", "resolved"];
const KINDS: [&str; 3] = ["schedule", "message", "usage"];

/// An alert as the API shows it.
const VIEW: &str = "jsonb_build_object('id', n.id, 'kind', n.kind, \
   'severity', (ARRAY['low','medium','high','critical'])[n.severity + 1], \
   'organizationId', n.organization_id, 'subject', n.subject, 'summary', n.summary, 'source', n.source, \
   'occurrences', n.occurrences, 'occurredAt', api_time(n.occurred_at), 'lastAt', api_time(n.last_at), \
   'state', n.state, 'acknowledgedBy', n.acknowledged_by, 'acknowledgedAt', api_time(n.acknowledged_at), \
   'resolvedBy', n.resolved_by, 'resolvedAt', api_time(n.resolved_at))";

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let alert_state = params.named("state", &STATES)?;
    let kind = params.named("kind", &KINDS)?;
    let severity = params.one_of(
        "severity",
        &Severity::ALL.map(Severity::as_str),
        Severity::parse,
    )?;
    let organization = params.uuid("organizationId")?;
    let (from, to) = params.time_range()?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(NOTIFICATIONS, consistency).await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(" WHERE true");
        if let Some(alert_state) = alert_state {
            query.push(" AND n.state = ").push_bind(alert_state);
        }
        if let Some(kind) = kind {
            query.push(" AND n.kind = ").push_bind(kind);
        }
        if let Some(severity) = severity {
            query.push(" AND n.severity = ").push_bind(severity.rank());
        }
        if let Some(organization) = organization {
            query
                .push(" AND n.organization_id = ")
                .push_bind(organization);
        }
        if let Some(from) = from {
            query.push(" AND n.last_at >= ").push_bind(from);
        }
        if let Some(to) = to {
            query.push(" AND n.occurred_at < ").push_bind(to);
        }
    };
    let mut rows = QueryBuilder::new(format!("SELECT {VIEW} FROM read_models.notifications n"));
    conditions(&mut rows);
    rows.push(" ORDER BY n.last_at DESC, n.id DESC");
    let mut total = QueryBuilder::new("SELECT count(*) FROM read_models.notifications n");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}

pub async fn unread(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
) -> Result<Json<Value>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    state.consistency.wait(NOTIFICATIONS, consistency).await?;
    let counts: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT severity, count(*) FROM read_models.notifications WHERE state = 'unread' GROUP BY severity",
    )
    .fetch_all(&state.pool)
    .await?;
    let by_severity: serde_json::Map<String, Value> = Severity::ALL
        .into_iter()
        .map(|severity| {
            let count = counts
                .iter()
                .find(|(rank, _)| *rank == severity.rank())
                .map_or(0, |(_, count)| *count);
            (severity.as_str().to_owned(), json!(count))
        })
        .collect();
    let total: i64 = counts.iter().map(|(_, count)| count).sum();
    Ok(Json(json!({ "total": total, "bySeverity": by_severity })))
}
