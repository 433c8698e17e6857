//! `GET /api/v1/admin/security-events` (System only): the platform's security events, newest first,
//! from two places read as one list:
//! - the event log's, through the `security` projection (`read_models.security_events`): sign-ins
//!   and sign-outs, System role grants and revokes, changes of write-only values;
//! - the refused requests both APIs record (`security_refusals`, `http_layer::security`): refused
//!   tokens, permission denials, cross-tenant probes, rate-limit hits, failed sign-ins and attack
//!   probes, one row per minute, kind, source and caller with its `count` and first request's sample.
//!
//! Filters by kind, actor, organization (log events only: refusals carry none), address and time;
//! exact totals; `Accept: application/x-ndjson` streams every matching row.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use contracts::read_models::SECURITY;
use domain::{Action, Resource};
use http_layer::security::Kind;
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::export;
use crate::extract::{Caller, Params, TimeRange};
use crate::pagination::{rows_and_total, Page, PageRequest};
use crate::AppState;

/// The kinds the event log holds.
const LOGGED: [&str; 5] = [
    "sign_in",
    "sign_out",
    "system_role_granted",
    "system_role_revoked",
    "secret_changed",
];

const EXPORT_BATCH: i64 = 1000;

#[derive(Clone)]
struct Filter {
    kind: Option<String>,
    actor: Option<String>,
    organization: Option<Uuid>,
    ip: Option<String>,
    range: TimeRange,
}

impl Filter {
    fn parse(params: &Params) -> Result<Filter, ApiError> {
        let kinds: Vec<&'static str> = LOGGED
            .into_iter()
            .chain(Kind::ALL.map(Kind::as_str))
            .collect();
        let kind = params.named("kind", &kinds)?.map(str::to_owned);
        let bounded = |name: &str| match params.get(name) {
            Some(value) if value.chars().count() > 200 => {
                Err(ApiError::invalid(name, "must be at most 200 characters"))
            }
            other => Ok(other.map(str::to_owned)),
        };
        Ok(Filter {
            kind,
            actor: bounded("actorId")?,
            organization: params.uuid("organizationId")?,
            ip: bounded("ip")?,
            range: params.time_range()?,
        })
    }

    /// Both sources as one relation `(occurred_at, key, row)`, narrowed by the filter.
    fn push_events(&self, query: &mut QueryBuilder<'_, Postgres>) {
        let logged = self.kind.as_deref().is_none_or(|k| LOGGED.contains(&k));
        let refused = self.organization.is_none()
            && !self.kind.as_deref().is_some_and(|k| LOGGED.contains(&k));
        query.push("(SELECT occurred_at, key, row FROM (");
        query.push(
            "SELECT e.occurred_at, e.id::text AS key, jsonb_build_object('id', e.id, 'kind', e.kind, \
               'occurredAt', api_time(e.occurred_at), 'lastAt', api_time(e.occurred_at), 'count', 1, \
               'actorId', NULLIF(e.actor_id, ''), 'organizationId', e.organization_id, 'ip', e.ip, \
               'userAgent', e.user_agent, 'details', e.details) AS row \
             FROM read_models.security_events e WHERE ",
        );
        query.push_bind(logged);
        if let Some(kind) = &self.kind {
            query.push(" AND e.kind = ").push_bind(kind.clone());
        }
        if let Some(actor) = &self.actor {
            query.push(" AND e.actor_id = ").push_bind(actor.clone());
        }
        if let Some(organization) = self.organization {
            query
                .push(" AND e.organization_id = ")
                .push_bind(organization);
        }
        if let Some(ip) = &self.ip {
            query.push(" AND e.ip = ").push_bind(ip.clone());
        }
        if let Some(from) = self.range.0 {
            query.push(" AND e.occurred_at >= ").push_bind(from);
        }
        if let Some(to) = self.range.1 {
            query.push(" AND e.occurred_at < ").push_bind(to);
        }
        query.push(
            " UNION ALL \
             SELECT r.first_at, md5(r.minute::text || r.kind || r.source || r.actor_id), \
               jsonb_build_object('id', md5(r.minute::text || r.kind || r.source || r.actor_id)::uuid, \
               'kind', r.kind, 'occurredAt', api_time(r.first_at), 'lastAt', api_time(r.last_at), 'count', r.count, \
               'actorId', NULLIF(r.actor_id, ''), 'organizationId', NULL, 'ip', NULLIF(r.source, ''), \
               'userAgent', r.sample->'userAgent', 'details', r.sample - 'userAgent') \
             FROM security_refusals r WHERE ",
        );
        query.push_bind(refused);
        if let Some(kind) = &self.kind {
            query.push(" AND r.kind = ").push_bind(kind.clone());
        }
        if let Some(actor) = &self.actor {
            query.push(" AND r.actor_id = ").push_bind(actor.clone());
        }
        if let Some(ip) = &self.ip {
            query.push(" AND r.source = ").push_bind(ip.clone());
        }
        if let Some(from) = self.range.0 {
            query.push(" AND r.first_at >= ").push_bind(from);
        }
        if let Some(to) = self.range.1 {
            query.push(" AND r.first_at < ").push_bind(to);
        }
        query.push(") events)");
    }
}

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let filter = Filter::parse(&params)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(SECURITY, consistency).await?;
    if export::wanted(&headers) {
        return Ok(export_rows(state.pool.clone(), filter));
    }
    let mut rows = QueryBuilder::new("SELECT row FROM ");
    filter.push_events(&mut rows);
    rows.push(" AS s ORDER BY occurred_at DESC, key DESC LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.offset());
    let mut total = QueryBuilder::new("SELECT count(*) FROM ");
    filter.push_events(&mut total);
    total.push(" AS s");
    let (rows, total) = rows_and_total(&state.pool, rows, total).await?;
    Ok(Json(Page::<Value>::new(rows, page, total)).into_response())
}

/// Streams every row `filter` matches as NDJSON, newest first, a batch at a time, each batch after
/// the last row sent.
fn export_rows(pool: PgPool, filter: Filter) -> Response {
    // The state's cursor: `None` once done, `Some(None)` before the first batch.
    let batches = futures::stream::unfold(
        (pool, filter, Some(None)),
        |(pool, filter, after)| async move {
            let batch = export_batch(&pool, &filter, after?).await;
            let next = batch
                .as_ref()
                .ok()
                .and_then(|(_, last)| last.clone().map(Some));
            Some((batch.map(|(rows, _)| rows), (pool, filter, next)))
        },
    );
    export::ndjson("security events", batches)
}

/// The rows after `after` (the time and key of the last row sent; `None`: from the newest), and the
/// last one's time and key (`None`: no more).
async fn export_batch(
    pool: &PgPool,
    filter: &Filter,
    after: Option<(DateTime<Utc>, String)>,
) -> Result<(Vec<Value>, Option<(DateTime<Utc>, String)>), ApiError> {
    let mut query = QueryBuilder::new("SELECT occurred_at, key, row FROM ");
    filter.push_events(&mut query);
    query.push(" AS s");
    if let Some((at, key)) = after {
        query
            .push(" WHERE (occurred_at, key) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(key)
            .push(")");
    }
    query
        .push(" ORDER BY occurred_at DESC, key DESC LIMIT ")
        .push_bind(EXPORT_BATCH);
    let rows: Vec<(DateTime<Utc>, String, Value)> = query.build_query_as().fetch_all(pool).await?;
    let last = rows.last().map(|(at, key, _)| (*at, key.clone()));
    Ok((rows.into_iter().map(|(_, _, row)| row).collect(), last))
}
