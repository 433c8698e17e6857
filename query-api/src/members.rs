//! `GET /api/organizations/{id}/members` and `GET /api/organizations/{id}/members/{userId}`, from the
//! `access` read model (or, with `asOf`, from the members and user streams).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use contracts::read_models::{ACCESS, TENANTS};
use contracts::views::MemberView;
use domain::history::StreamState;
use domain::members::Members;
use domain::user::User;
use domain::{Action, Aggregate, Resource, Role};
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
    organization_id: Uuid,
    user_id: Uuid,
    role: sqlx::types::Json<Role>,
    email: Option<String>,
    name: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for MemberView {
    fn from(r: Row) -> Self {
        MemberView {
            user_id: r.user_id,
            organization_id: r.organization_id,
            email: r.email,
            name: r.name,
            role: r.role.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str =
    "organization_id, user_id, to_jsonb(role) AS role, email, name, created_at, updated_at";

/// Members newest first; `search` matches the name or the email.
pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(organization_id): Path<String>,
    params: Params,
) -> Result<Json<Page<MemberView>>, ApiError> {
    let organization_id = parse_id(&organization_id)?;
    actor
        .authorize_in(organization_id, Resource::Members, Action::Read)
        .map_err(ApiError::denied("Organization", organization_id))?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    state.consistency.wait(TENANTS, consistency).await?;
    state.consistency.wait(ACCESS, consistency).await?;
    organization_exists(&state, organization_id).await?;

    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.members \
         WHERE organization_id = $1 AND ($2::text IS NULL OR name ILIKE $2 OR email ILIKE $2) \
         ORDER BY created_at DESC, user_id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(organization_id)
    .bind(&pattern)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_models.members \
         WHERE organization_id = $1 AND ($2::text IS NULL OR name ILIKE $2 OR email ILIKE $2)",
    )
    .bind(organization_id)
    .bind(&pattern)
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(Page::new(rows, page, total)))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path((organization_id, user_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<MemberView>, ApiError> {
    let organization_id = parse_id(&organization_id)?;
    let user_id = parse_id(&user_id)?;
    let as_of = as_of::requested(&params)?;
    actor
        .authorize_in(organization_id, Resource::Members, Action::Read)
        .map_err(ApiError::denied("Organization", organization_id))?;
    if let Some(at) = as_of {
        return member_as_of(&state, organization_id, user_id, at)
            .await
            .map(Json);
    }
    state.consistency.wait(TENANTS, consistency).await?;
    state.consistency.wait(ACCESS, consistency).await?;
    organization_exists(&state, organization_id).await?;
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.members WHERE organization_id = $1 AND user_id = $2"
    ))
    .bind(organization_id)
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("Member", user_id))
}

/// The membership as the organization's members stream had it at `at`, with the user's profile as
/// it was then. A membership removed by then answers `404`, as one never granted does.
async fn member_as_of(
    state: &AppState,
    organization_id: Uuid,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<MemberView, ApiError> {
    let members = as_of::fold(
        &state.pool,
        &Members::stream_id(organization_id),
        at,
        "Member",
        user_id,
    )
    .await?;
    let membership = match &members.state {
        StreamState::Members(members) => members.members.get(&user_id),
        _ => None,
    }
    .ok_or_else(|| as_of::not_found_then("Member", user_id, at))?;
    let user = as_of::fold(
        &state.pool,
        &User::stream_id(user_id),
        at,
        "Member",
        user_id,
    )
    .await?;
    let StreamState::User(User {
        live: Some(user), ..
    }) = &user.state
    else {
        return Err(as_of::not_found_then("Member", user_id, at));
    };
    Ok(MemberView::new(organization_id, user, membership))
}

async fn organization_exists(state: &AppState, organization_id: Uuid) -> Result<(), ApiError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM read_models.organizations WHERE id = $1)")
            .bind(organization_id)
            .fetch_one(&state.pool)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::not_found("Organization", organization_id))
    }
}
