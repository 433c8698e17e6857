//! `GET /api/executions/{id}` and `GET /api/prompt-templates/{id}/executions` (newest first,
//! paginated), from the `executions` read model. Reading executions takes `entities:read` in their
//! organization, as running them does.

use axum::extract::{Path, State};
use axum::Json;
use contracts::read_models::EXECUTIONS;
use domain::catalog::kinds::PromptTemplate;
use domain::execution::{view, ExecutionData};
use domain::{Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;

use crate::catalog::load;
use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{Page, PageRequest};
use crate::AppState;

type Row = sqlx::types::Json<ExecutionData>;

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    actor.authorize_anywhere(Resource::Entities, Action::Read)?;
    state.consistency.wait(EXECUTIONS, consistency).await?;
    let row: Option<Row> =
        sqlx::query_scalar("SELECT data FROM read_models.executions WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    let data = row.ok_or_else(|| ApiError::not_found("Execution", id))?.0;
    actor
        .authorize_in(data.organization_id, Resource::Entities, Action::Read)
        .map_err(ApiError::denied("Execution", id))?;
    Ok(Json(view(&data)))
}

pub async fn list_for_template(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    let id = parse_id(&id)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    // The template decides access (and answers 404 for a deleted or hidden one).
    load::<PromptTemplate>(&state, &actor, consistency, id).await?;
    state.consistency.wait(EXECUTIONS, consistency).await?;
    let (total, rows): (i64, Vec<Row>) = tokio::try_join!(
        sqlx::query_scalar("SELECT count(*) FROM read_models.executions WHERE template_id = $1")
            .bind(id)
            .fetch_one(&state.pool),
        sqlx::query_scalar(
            "SELECT data FROM read_models.executions WHERE template_id = $1 \
             ORDER BY requested_at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(id)
        .bind(page.limit)
        .bind(page.offset())
        .fetch_all(&state.pool),
    )?;
    let data = rows.iter().map(|row| view(&row.0)).collect::<Vec<_>>();
    Ok(Json(Page::new(data, page, total)))
}
