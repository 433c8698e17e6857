//! `GET /api/users` and `GET /api/users/{id}`, for System users, from the `access` read model; and
//! `GET /api/roles`, the roles a membership can hold, for anyone signed in.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use contracts::read_models::ACCESS;
use contracts::views::UserView;
use domain::history::StreamState;
use domain::user::User;
use domain::{Action, Aggregate, Resource, Role};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::as_of;
use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{contains_pattern, Page, PageRequest};
use crate::AppState;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    email: Option<String>,
    name: Option<String>,
    system_role: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for UserView {
    fn from(r: Row) -> Self {
        UserView {
            id: r.id,
            email: r.email,
            name: r.name,
            system_role: r.system_role,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, email, name, system_role, created_at, updated_at";

/// Users newest first; `search` matches the name or the email.
pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<UserView>>, ApiError> {
    actor.authorize_platform(Resource::Users, Action::Read)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    state.consistency.wait(ACCESS, consistency).await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.users \
         WHERE $1::text IS NULL OR name ILIKE $1 OR email ILIKE $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(&pattern)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_models.users WHERE $1::text IS NULL OR name ILIKE $1 OR email ILIKE $1",
    )
    .bind(&pattern)
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(Page::new(rows, page, total)))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<UserView>, ApiError> {
    let id = parse_id(&id)?;
    let as_of = as_of::requested(&params)?;
    actor.authorize_platform(Resource::Users, Action::Read)?;
    if let Some(at) = as_of {
        let past = as_of::fold(&state.pool, &User::stream_id(id), at, "User", id).await?;
        let StreamState::User(User {
            live: Some(user), ..
        }) = &past.state
        else {
            return Err(as_of::not_live("User", id, at, &past.state));
        };
        return Ok(Json(user.into()));
    }
    state.consistency.wait(ACCESS, consistency).await?;
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("User", id))
}

/// `GET /api/roles`: any signed-in caller; the ids never change.
pub async fn roles(Caller(_): Caller) -> Json<Value> {
    let data: Vec<Value> = Role::ASSIGNABLE
        .iter()
        .map(|role| json!({ "id": role.id(), "name": role.to_string(), "description": role.description() }))
        .collect();
    Json(json!({ "data": data }))
}
