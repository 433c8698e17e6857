//! `GET /api/organizations` and `GET /api/organizations/{id}`, from the `tenants` read model (or, with
//! `asOf`, from the organization's stream).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use contracts::read_models::{ORGANIZATIONS_COUNT, TENANTS};
use contracts::views::OrganizationView;
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
    name: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for OrganizationView {
    fn from(r: Row) -> Self {
        OrganizationView {
            id: r.id,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<OrganizationView>>, ApiError> {
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    let visible = actor.readable_organizations(Resource::Organizations);
    state.consistency.wait(TENANTS, consistency).await?;

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, description, created_at, updated_at FROM read_models.organizations \
         WHERE ($1::uuid[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR name ILIKE $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
    )
    .bind(&visible)
    .bind(&pattern)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = if visible.is_none() && pattern.is_none() {
        sqlx::query_scalar(
            "SELECT COALESCE((SELECT count FROM read_models.tenant_counts WHERE scope = $1), 0)",
        )
        .bind(ORGANIZATIONS_COUNT)
        .fetch_one(&state.pool)
        .await?
    } else {
        sqlx::query_scalar(
            "SELECT count(*) FROM read_models.organizations \
             WHERE ($1::uuid[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR name ILIKE $2)",
        )
        .bind(&visible)
        .bind(&pattern)
        .fetch_one(&state.pool)
        .await?
    };
    Ok(Json(Page::new(rows, page, total)))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<OrganizationView>, ApiError> {
    let id = parse_id(&id)?;
    let as_of = as_of::requested(&params)?;
    actor
        .authorize_in(id, Resource::Organizations, Action::Read)
        .map_err(ApiError::denied("Organization", id))?;
    if let Some(at) = as_of {
        let past = as_of::fold(
            &state.pool,
            &Organization::stream_id(id),
            at,
            "Organization",
            id,
        )
        .await?;
        return match &past.state {
            StreamState::Organization(Organization {
                live: Some(org), ..
            }) => Ok(Json(org.into())),
            other => Err(as_of::not_live("Organization", id, at, other)),
        };
    }
    state.consistency.wait(TENANTS, consistency).await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, description, created_at, updated_at FROM read_models.organizations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("Organization", id))
}
