//! Operator jobs (System only): `POST /api/v1/admin/jobs` (`{kind, args?}`) requests a rebuild,
//! verification, replay, processed-queue reconciliation or usage export; `POST
//! /api/v1/admin/usage/exports` (`{format, filters?}`) requests an export; `POST
//! /api/v1/admin/jobs/{id}/cancel` cancels a pending job at once and asks a running one to stop. Each
//! is recorded on the job's `job-<id>` stream; the projector runs them (`projector::job_runner`) and
//! records how they end. Requests answer `202` with the job, to be followed at its `Location`.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::read_models::PROJECTIONS;
use contracts::views::JobView;
use domain::job::{
    ExportFilters, ExportFormat, Job, JobCommand, JobKind, JobSource, JobSpec, JobState,
};
use domain::{Action, Aggregate, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::AppState;

/// `POST /api/v1/admin/jobs`: `args` may be left out for kinds whose arguments all have defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    kind: JobKind,
    #[serde(default)]
    args: Option<Value>,
}

/// `POST /api/v1/admin/usage/exports`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    format: ExportFormat,
    #[serde(default)]
    filters: ExportFilters,
}

pub async fn request(State(state): State<AppState>, write: Write) -> Result<Response, ApiError> {
    let permission = Permission::platform(Resource::Operations, Action::Create);
    write.actor.authorize(&permission)?;
    let body = write.parse::<JobRequest>()?;
    let args = body.args.unwrap_or_else(|| json!({}));
    let spec: JobSpec = serde_json::from_value(json!({"kind": body.kind, "args": args}))
        .map_err(|e| ApiError::invalid("args", e))?;
    // Every argument a kind takes is in its spec's `args`; anything else is a mistake to say so.
    let taken = spec.args();
    if let Some(unknown) = args
        .as_object()
        .and_then(|given| given.keys().find(|key| taken.get(key.as_str()).is_none()))
    {
        return Err(ApiError::invalid(
            &format!("args.{unknown}"),
            format!("a {} job takes no such argument", body.kind.as_str()),
        ));
    }
    start(&state, &write, permission, spec, "jobs").await
}

pub async fn export(State(state): State<AppState>, write: Write) -> Result<Response, ApiError> {
    let permission = Permission::platform(Resource::Operations, Action::Create);
    write.actor.authorize(&permission)?;
    let body = write.parse::<ExportRequest>()?;
    let spec = JobSpec::Export {
        format: body.format,
        filters: body.filters,
    };
    start(&state, &write, permission, spec, "usage/exports").await
}

async fn start(
    state: &AppState,
    write: &Write,
    permission: Permission,
    spec: JobSpec,
    collection: &str,
) -> Result<Response, ApiError> {
    let spec = spec.checked(&PROJECTIONS)?;
    if spec.kind() == JobKind::Reconcile && state.bucket.is_none() {
        return Err(ApiError::invalid(
            "kind",
            "there is no processed queue to reconcile: S3_BUCKET is not set",
        ));
    }
    let spec = &spec;
    execute(state, write, || async move {
        let id = Uuid::now_v7();
        let mut job = Loaded::<Job>::new_stream();
        let events = job.state.decide(JobCommand::Request {
            spec: spec.clone(),
            source: JobSource::Api,
        })?;
        let events = job.record(events, &write.metadata(Role::System, None), Utc::now());
        let changes = WriteSet::append(&Job::stream_id(id), 0, events);
        let view =
            JobView::new(id, &job.state, &write.actor.user_id.to_string()).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a requested job without its spec"))
            })?;
        Ok(Outcome::new(202, view, job.version)
            .located(format!("/api/v1/admin/{collection}/{id}"))
            .appending(changes, permission))
    })
    .await
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let (state, write) = (&state, &write);
    execute(state, write, || async move {
        let mut job = state.executor.load::<Job>(id).await?;
        if job.version == 0 {
            return Err(ApiError::not_found("Job", id));
        }
        write.check_if_match(job.version)?;
        let expected = job.version;
        let events = job.state.decide(JobCommand::Cancel)?;
        let body = |job: &Job| {
            json!({
                "id": id,
                "state": job.state,
                "cancelRequested": job.cancel_requested,
            })
        };
        if events.is_empty() {
            return Ok(Outcome::new(202, body(&job.state), job.version));
        }
        let events = job.record(events, &write.metadata(Role::System, None), Utc::now());
        let changes = WriteSet::append(&Job::stream_id(id), expected, events);
        let status = if job.state.state == JobState::Cancelled {
            200
        } else {
            202
        };
        Ok(Outcome::new(status, body(&job.state), job.version).appending(changes, permission))
    })
    .await
}
