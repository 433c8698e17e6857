//! Model catalog health (System only): `GET /api/v1/admin/models`, every system model and every
//! organization's model with its provider and visibility, how many prompt templates and prompts use
//! it, and its health from the executions of the last `window` (`24h` by default, `7d` or `30d`):
//! executions, failures, success rate, p50 and p99 latency, the last error (as recorded: credentials
//! scrubbed) and when, tokens and cost per currency; and its latest on-demand probe (`lastProbe`,
//! `POST /api/v1/admin/models/{id}/probe`). Newest first; `kind` (`model`, `system_model`),
//! `organizationId`, `provider` and `search` (the name) filter; paged as elsewhere.

use axum::extract::State;
use axum::Json;
use contracts::read_models::{CATALOG, EXECUTIONS};
use domain::{Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use crate::consistency::ReadConsistency;
use crate::extract::{Caller, Params};
use crate::pagination::{contains_pattern, page_of, Page, PageRequest};
use crate::AppState;

/// The windows health is measured over, as PostgreSQL intervals.
const WINDOWS: [(&str, &str); 3] = [("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days")];

const KINDS: [&str; 2] = ["model", "system_model"];

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let names: Vec<&str> = WINDOWS.iter().map(|(name, _)| *name).collect();
    let (window, interval) = params
        .one_of("window", &names, |raw| {
            WINDOWS.iter().find(|(n, _)| *n == raw)
        })?
        .copied()
        .unwrap_or(WINDOWS[0]);
    let kind = params.named("kind", &KINDS)?;
    let organization = params.uuid("organizationId")?;
    let provider = params.named("provider", &["openai", "anthropic"])?;
    let pattern = params.search()?.map(contains_pattern);
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state
        .consistency
        .wait_all(&[CATALOG, EXECUTIONS], consistency)
        .await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(" FROM read_models.catalog m WHERE m.kind IN ('model', 'system_model')");
        if let Some(kind) = kind {
            query.push(" AND m.kind = ").push_bind(kind);
        }
        if let Some(organization) = organization {
            query
                .push(" AND m.organization_id = ")
                .push_bind(organization);
        }
        if let Some(provider) = provider {
            query
                .push(" AND m.fields->>'provider' = ")
                .push_bind(provider);
        }
        if let Some(pattern) = &pattern {
            query.push(" AND m.name ILIKE ").push_bind(pattern.clone());
        }
    };
    // `interval` is one of WINDOWS, never request input.
    let recent = format!(
        "x.model_id = m.id AND x.status <> 'running' AND x.requested_at > now() - interval '{interval}'"
    );
    let mut rows = QueryBuilder::new(format!(
        "SELECT jsonb_build_object('id', m.id, 'kind', m.kind, 'name', m.name, 'organizationId', m.organization_id, \
           'provider', m.fields->'provider', 'providerModel', m.fields->'providerModel', \
           'visible', CASE WHEN m.kind = 'system_model' THEN m.fields->'visible' ELSE 'false'::jsonb END, \
           'usedBy', jsonb_build_object( \
             'promptTemplates', (SELECT count(*) FROM read_models.catalog t \
               WHERE t.model_id = m.id AND t.kind = 'prompt_template'), \
             'prompts', (SELECT count(*) FROM read_models.catalog t WHERE t.model_id = m.id AND t.kind = 'prompt')), \
           'health', (SELECT jsonb_build_object('window', '{window}', \
               'executions', count(*), 'failures', count(*) FILTER (WHERE x.status = 'failed'), \
               'successRate', round(count(*) FILTER (WHERE x.status = 'succeeded')::numeric / nullif(count(*), 0), 4), \
               'latencyMs', jsonb_build_object( \
                 'p50', percentile_cont(0.5) WITHIN GROUP (ORDER BY (x.data->>'latencyMs')::float8), \
                 'p99', percentile_cont(0.99) WITHIN GROUP (ORDER BY (x.data->>'latencyMs')::float8)), \
               'inputTokens', coalesce(sum((x.data->'usage'->>'inputTokens')::int8), 0), \
               'outputTokens', coalesce(sum((x.data->'usage'->>'outputTokens')::int8), 0)) \
             FROM read_models.executions x WHERE {recent}) \
             || jsonb_build_object('cost', coalesce((SELECT jsonb_object_agg(c.currency, c.total) \
                 FROM (SELECT x.data->'cost'->>'currency' AS currency, sum((x.data->'cost'->>'total')::numeric)::float8 AS total \
                   FROM read_models.executions x WHERE {recent} AND jsonb_typeof(x.data->'cost') = 'object' GROUP BY 1) c), '{{}}'), \
               'lastError', (SELECT jsonb_build_object('reason', x.data->'failure'->'reason', \
                   'message', x.data->'failure'->'message', 'at', api_time((x.data->>'finishedAt')::timestamptz)) \
                 FROM read_models.executions x WHERE x.model_id = m.id AND x.status = 'failed' \
                 ORDER BY x.requested_at DESC LIMIT 1)), \
           'lastProbe', (SELECT jsonb_build_object('ok', p.ok, 'latencyMs', p.latency_ms, \
               'providerStatus', p.provider_status, 'error', p.error, 'at', api_time(p.probed_at), \
               'by', p.probed_by) \
             FROM read_models.model_probes p WHERE p.model_id = m.id))"
    ));
    conditions(&mut rows);
    rows.push(" ORDER BY m.created_at DESC, m.id DESC");
    let mut total = QueryBuilder::new("SELECT count(*)");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}
