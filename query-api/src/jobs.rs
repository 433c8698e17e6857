//! Operator jobs (System only): `GET /api/v1/admin/jobs` (newest first; `kind`, `state`, `source`
//! filter; paged) and `GET /api/v1/admin/jobs/{id}`, each with its runner's latest progress; and
//! usage exports: `GET /api/v1/admin/usage/exports/{id}` (the export job, with `fileUrl` once it
//! succeeded) and `GET …/exports/{id}/file`, the file streamed part by part as the export wrote it
//! (`projector::export`), never whole in memory.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use contracts::read_models::JOBS;
use domain::job::{ExportFormat, JobKind, JobState};
use domain::{Action, Resource};
use futures::SinkExt;
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{page_of, Page, PageRequest};
use crate::AppState;

/// A job as the API shows it (`contracts::views::JobView`'s shape), from `read_models.jobs` `j`
/// and its progress `p`.
const JOB: &str = "jsonb_build_object('id', j.id, 'kind', j.kind, 'args', j.args, 'source', j.source, \
     'state', j.state, 'requestedBy', j.requested_by, 'requestedAt', api_time(j.requested_at), \
     'runner', j.runner, 'startedAt', api_time(j.started_at), 'finishedAt', api_time(j.finished_at), \
     'cancelRequested', j.cancel_requested, 'result', j.result, 'error', j.error, 'progress', p.progress)";

const FROM: &str = " FROM read_models.jobs j LEFT JOIN job_progress p ON p.job_id = j.id";

const STATES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let kinds: Vec<&'static str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = params.named("kind", &kinds)?;
    let job_state = params.named("state", &STATES)?;
    let source = params.named("source", &["api", "cli"])?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(JOBS, consistency).await?;
    let conditions = |query: &mut QueryBuilder<'_, sqlx::Postgres>| {
        query.push(FROM).push(" WHERE true");
        if let Some(kind) = kind {
            query.push(" AND j.kind = ").push_bind(kind);
        }
        if let Some(job_state) = job_state {
            query.push(" AND j.state = ").push_bind(job_state);
        }
        if let Some(source) = source {
            query.push(" AND j.source = ").push_bind(source);
        }
    };
    let mut rows = QueryBuilder::new(format!("SELECT {JOB}"));
    conditions(&mut rows);
    rows.push(" ORDER BY j.requested_at DESC, j.id DESC");
    let mut total = QueryBuilder::new("SELECT count(*)");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let id = parse_id(&id)?;
    state.consistency.wait(JOBS, consistency).await?;
    Ok(Json(job(&state, id, None).await?))
}

pub async fn export(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let id = parse_id(&id)?;
    state.consistency.wait(JOBS, consistency).await?;
    let mut export = job(&state, id, Some(JobKind::Export)).await?;
    if export["state"] == JobState::Succeeded.as_str() {
        export["fileUrl"] = format!("/api/v1/admin/usage/exports/{id}/file").into();
    }
    Ok(Json(export))
}

/// Job `id` (of `kind`, when given), or `404`.
async fn job(state: &AppState, id: Uuid, kind: Option<JobKind>) -> Result<Value, ApiError> {
    let mut query = QueryBuilder::new(format!("SELECT {JOB}"));
    query.push(FROM).push(" WHERE j.id = ").push_bind(id);
    if let Some(kind) = kind {
        query.push(" AND j.kind = ").push_bind(kind.as_str());
    }
    let resource = if kind == Some(JobKind::Export) {
        "Export"
    } else {
        "Job"
    };
    query
        .build_query_scalar::<Value>()
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(resource, id))
}

pub async fn export_file(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let id = parse_id(&id)?;
    state.consistency.wait(JOBS, consistency).await?;
    let export = job(&state, id, Some(JobKind::Export)).await?;
    if export["state"] != JobState::Succeeded.as_str() {
        return Err(ApiError::Conflict {
            error: "Export not ready".into(),
            details: format!(
                "the export is {}",
                export["state"].as_str().unwrap_or_default()
            ),
        });
    }
    let format: ExportFormat = serde_json::from_value(export["args"]["format"].clone())
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("an export's format")))?;
    let parts = export["result"]["parts"].as_i64().unwrap_or(0) as i32;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM export_files WHERE job_id = $1")
        .bind(id)
        .fetch_one(&state.pool)
        .await?;
    if kept < i64::from(parts) {
        return Err(ApiError::Gone {
            error: "Export expired".into(),
            details: format!("export {id}'s file was deleted; request the export again"),
        });
    }
    let (mut chunks, body) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        for part in 0..parts {
            let data = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT data FROM export_files WHERE job_id = $1 AND part = $2",
            )
            .bind(id)
            .bind(part)
            .fetch_optional(&pool)
            .await;
            let chunk = match data {
                Ok(Some(data)) => Ok(Bytes::from(data)),
                // Deleted under the download: a broken transfer, not a short file.
                Ok(None) => Err(std::io::Error::other("the export's file was deleted")),
                Err(error) => {
                    tracing::error!(%error, export = %id, "reading an export's file failed");
                    Err(std::io::Error::other("reading the export failed"))
                }
            };
            let failed = chunk.is_err();
            if chunks.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let disposition = format!("attachment; filename=\"usage-{id}.{}\"", format.extension());
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.media_type()),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).map_err(anyhow::Error::from)?,
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
