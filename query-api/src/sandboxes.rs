//! Sandbox status (System only): `GET /api/v1/admin/sandboxes`, each organization's environments as
//! operators see them, so that a queue spike can be traced to its tenant: the count of its resources
//! by kind (the catalog's kept counts), its executions in flight, those that ran and failed in the
//! last hour, and its last activity (its newest execution, resource change or rename).
//!
//! Newest first, or with `active=true` only the environments with executions in flight or run in the
//! last hour, the busiest first (found from the executions' indexes, not by visiting every
//! environment). `organizationId` and `search` (the name) filter; paged as elsewhere.

use axum::extract::State;
use axum::Json;
use contracts::read_models::{CATALOG, EXECUTIONS, TENANTS};
use domain::catalog::kinds;
use domain::{Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{contains_pattern, page_of, Page, PageRequest};
use crate::AppState;

/// Environments with executions in flight or run in the last hour, with those counts.
const ACTIVE: &str = "(SELECT environment_id, \
     count(*) FILTER (WHERE status = 'running') AS running, \
     count(*) FILTER (WHERE requested_at > now() - interval '1 hour') AS recent, \
     count(*) FILTER (WHERE status = 'failed' AND requested_at > now() - interval '1 hour') AS failed \
   FROM read_models.executions \
   WHERE status = 'running' OR requested_at > now() - interval '1 hour' \
   GROUP BY environment_id)";

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let active = params.one_of("active", &["true", "false"], |raw| raw.parse::<bool>().ok())?;
    let active = active.unwrap_or(false);
    let organization = params.uuid("organizationId")?;
    let pattern = params.search()?.map(contains_pattern);
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state
        .consistency
        .wait_all(&[TENANTS, CATALOG, EXECUTIONS], consistency)
        .await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        if active {
            query.push(format!(
                " FROM {ACTIVE} a JOIN read_models.environments e ON e.id = a.environment_id WHERE true"
            ));
        } else {
            query.push(" FROM read_models.environments e WHERE true");
        }
        if let Some(organization) = organization {
            query
                .push(" AND e.organization_id = ")
                .push_bind(organization);
        }
        if let Some(pattern) = &pattern {
            query.push(" AND e.name ILIKE ").push_bind(pattern.clone());
        }
    };
    let kinds: Vec<&str> = kinds::ALL.iter().map(|kind| kind.type_name).collect();
    let mut rows = QueryBuilder::new(
        "SELECT jsonb_build_object('id', e.id, 'name', e.name, 'organizationId', e.organization_id, \
           'organization', jsonb_build_object('name', e.organization_name), \
           'resources', coalesce((SELECT jsonb_object_agg(split_part(c.scope, ':', 1), c.count) \
             FROM read_models.catalog_counts c \
             WHERE c.scope IN (SELECT k || ':environment:' || e.id FROM unnest(",
    );
    rows.push_bind(kinds).push(
        "::text[]) k) AND c.count > 0), '{}'), \
           'executionsInFlight', (SELECT count(*) FROM read_models.executions x \
             WHERE x.environment_id = e.id AND x.status = 'running'), \
           'executionsLastHour', (SELECT count(*) FROM read_models.executions x \
             WHERE x.environment_id = e.id AND x.requested_at > now() - interval '1 hour'), \
           'failuresLastHour', (SELECT count(*) FROM read_models.executions x \
             WHERE x.environment_id = e.id AND x.status = 'failed' AND x.requested_at > now() - interval '1 hour'), \
           'lastActivityAt', api_time(greatest(e.updated_at, \
             (SELECT max(x.requested_at) FROM read_models.executions x WHERE x.environment_id = e.id), \
             (SELECT max(c.updated_at) FROM read_models.catalog c WHERE c.environment_id = e.id))))",
    );
    conditions(&mut rows);
    if active {
        rows.push(" ORDER BY a.running DESC, a.failed DESC, a.recent DESC, e.id");
    } else {
        rows.push(" ORDER BY e.created_at DESC, e.id DESC");
    }
    let mut total = QueryBuilder::new("SELECT count(*)");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}
