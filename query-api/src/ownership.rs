//! The ownership overview (System only): who owns what across the platform.
//! - `GET /api/v1/admin/organizations`: every organization with its environments ("workspaces"), its
//!   member counts by role, its admins, its last activity (its newest audit row) and what it has spent
//!   this UTC month per currency.
//! - `GET /api/v1/admin/users`: every user with their memberships and roles across organizations,
//!   their System role (`systemRoleSource`: `granted` through the API, or `configuration` when only
//!   `SYSTEM_ADMINS` confers it) and their last sign-in.
//!
//! Both newest first, with `search` (names; and emails for users) and paging as elsewhere. Each page's
//! extras are read per row through an index, so a page costs the same whatever the platform's size.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use contracts::read_models::{ACCESS, AUDIT, SECURITY, TENANTS};
use domain::{budget, Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{contains_pattern, page_of, Page, PageRequest};
use crate::AppState;

pub async fn organizations(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    state
        .consistency
        .wait_all(&[TENANTS, ACCESS, AUDIT], consistency)
        .await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(" FROM read_models.organizations o WHERE true");
        if let Some(pattern) = &pattern {
            query.push(" AND o.name ILIKE ").push_bind(pattern.clone());
        }
    };
    let mut rows = QueryBuilder::new(
        "SELECT jsonb_build_object('id', o.id, 'name', o.name, 'description', o.description, \
           'createdAt', api_time(o.created_at), \
           'environments', coalesce((SELECT jsonb_agg(jsonb_build_object('id', e.id, 'name', e.name) \
               ORDER BY e.created_at, e.id) FROM read_models.environments e WHERE e.organization_id = o.id), '[]'), \
           'members', (SELECT jsonb_build_object( \
               'admin', count(*) FILTER (WHERE m.role = 'admin'), \
               'user', count(*) FILTER (WHERE m.role = 'user'), \
               'guest', count(*) FILTER (WHERE m.role = 'guest')) \
             FROM read_models.members m WHERE m.organization_id = o.id), \
           'admins', coalesce((SELECT jsonb_agg(jsonb_build_object('userId', m.user_id, 'email', m.email, 'name', m.name) \
               ORDER BY m.created_at, m.user_id) FROM read_models.members m \
             WHERE m.organization_id = o.id AND m.role = 'admin'), '[]'), \
           'lastActivityAt', (SELECT api_time(a.occurred_at) FROM read_models.audit_index a \
             WHERE a.organization_id = o.id ORDER BY a.global_position DESC LIMIT 1), \
           'spentThisMonth', coalesce((SELECT jsonb_object_agg(s.currency, s.spent::float8) \
             FROM organization_spend s WHERE s.organization_id = o.id AND s.period = ",
    );
    rows.push_bind(budget::period(Utc::now())).push("), '{}'))");
    conditions(&mut rows);
    rows.push(" ORDER BY o.created_at DESC, o.id DESC");
    let mut total = QueryBuilder::new("SELECT count(*)");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}

pub async fn users(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    state
        .consistency
        .wait_all(&[ACCESS, TENANTS, SECURITY], consistency)
        .await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(" WHERE true");
        if let Some(pattern) = &pattern {
            query
                .push(" AND (u.name ILIKE ")
                .push_bind(pattern.clone())
                .push(" OR u.email ILIKE ")
                .push_bind(pattern.clone())
                .push(")");
        }
    };
    let mut rows = QueryBuilder::new(
        "SELECT jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name, \
           'systemRole', r.source IS NOT NULL, 'systemRoleSource', r.source, \
           'createdAt', api_time(u.created_at), \
           'memberships', coalesce((SELECT jsonb_agg(jsonb_build_object('organizationId', m.organization_id, \
               'organization', jsonb_build_object('name', o.name), 'role', m.role) ORDER BY o.name, m.organization_id) \
             FROM read_models.members m JOIN read_models.organizations o ON o.id = m.organization_id \
             WHERE m.user_id = u.id), '[]'), \
           'lastSignInAt', (SELECT api_time(s.occurred_at) FROM read_models.security_events s \
             WHERE s.kind = 'sign_in' AND s.actor_id = u.id::text ORDER BY s.occurred_at DESC LIMIT 1)) \
         FROM read_models.users u \
         CROSS JOIN LATERAL (SELECT CASE WHEN u.system_role THEN 'granted' \
           WHEN (SELECT a.subject FROM access_users a WHERE a.user_id = u.id) = ANY(",
    );
    rows.push_bind(state.auth.configured_system_admins())
        .push(") THEN 'configuration' END AS source) r");
    conditions(&mut rows);
    rows.push(" ORDER BY u.created_at DESC, u.id DESC");
    let mut total = QueryBuilder::new("SELECT count(*) FROM read_models.users u");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}
