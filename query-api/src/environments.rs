//! `GET /api/environments?organizationId=` and `GET /api/environments/{id}`, from the `tenants` read
//! model (or, with `asOf`, from the environment's stream).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use contracts::read_models::{environments_count, TENANTS};
use contracts::views::{EnvironmentView, NamedRef};
use domain::environment::Environment;
use domain::history::StreamState;
use domain::organization::Organization;
use domain::{Action, Aggregate, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use uuid::Uuid;

use crate::as_of;
use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{contains_pattern, Page, PageRequest};
use crate::AppState;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    organization_id: Uuid,
    organization_name: String,
    name: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for EnvironmentView {
    fn from(r: Row) -> Self {
        EnvironmentView {
            id: r.id,
            organization_id: r.organization_id,
            organization: NamedRef {
                name: r.organization_name,
            },
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, organization_id, organization_name, name, description, created_at, updated_at";

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<EnvironmentView>>, ApiError> {
    let organization_id = params
        .uuid("organizationId")?
        .ok_or_else(|| ApiError::invalid("organizationId", "is required"))?;
    actor
        .authorize_in(organization_id, Resource::Environments, Action::Read)
        .map_err(ApiError::denied("Organization", organization_id))?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    state.consistency.wait(TENANTS, consistency).await?;

    // Whether the organization exists and, for an unfiltered list, the total: one round trip.
    let (organization_exists, counted): (bool, Option<i64>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM read_models.organizations WHERE id = $1), \
                (SELECT count FROM read_models.tenant_counts WHERE scope = $2)",
    )
    .bind(organization_id)
    .bind(environments_count(organization_id))
    .fetch_one(&state.pool)
    .await?;
    if !organization_exists {
        return Err(ApiError::not_found("Organization", organization_id));
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.environments \
         WHERE organization_id = $1 AND ($2::text IS NULL OR name ILIKE $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(organization_id)
    .bind(&pattern)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = match &pattern {
        None => counted.unwrap_or(0),
        Some(pattern) => sqlx::query_scalar(
            "SELECT count(*) FROM read_models.environments WHERE organization_id = $1 AND name ILIKE $2",
        )
        .bind(organization_id)
        .bind(pattern)
        .fetch_one(&state.pool)
        .await?,
    };
    Ok(Json(Page::new(rows, page, total)))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<EnvironmentView>, ApiError> {
    let id = parse_id(&id)?;
    let as_of = as_of::requested(&params)?;
    actor.authorize_anywhere(Resource::Environments, Action::Read)?;
    if let Some(at) = as_of {
        let past = as_of::fold(
            &state.pool,
            &Environment::stream_id(id),
            at,
            "Environment",
            id,
        )
        .await?;
        let organization = past
            .organization_id
            .ok_or_else(|| anyhow::anyhow!("environment {id} recorded no organization"))?;
        actor
            .authorize_in(organization, Resource::Environments, Action::Read)
            .map_err(as_of::denied("Environment", id, at))?;
        let StreamState::Environment(Environment {
            live: Some(env), ..
        }) = &past.state
        else {
            return Err(as_of::not_live("Environment", id, at, &past.state));
        };
        let organization_stream = Organization::stream_id(organization);
        let mut names =
            as_of::names(&state.pool, std::slice::from_ref(&organization_stream), at).await?;
        let organization_name = names.remove(&organization_stream).unwrap_or_default();
        return Ok(Json(EnvironmentView::new(env, organization_name)));
    }
    state.consistency.wait(TENANTS, consistency).await?;
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.environments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found("Environment", id))?;
    actor
        .authorize_in(row.organization_id, Resource::Environments, Action::Read)
        .map_err(ApiError::denied("Environment", id))?;
    Ok(Json(row.into()))
}
