//! The `jobs` projection: `read_models.jobs`, one row per operator job (`job-<id>` streams) with its
//! kind, arguments, state, runner, times and outcome, for `GET /api/v1/admin/jobs` and for the job
//! runner's queue ([`crate::job_runner`]). Jobs are few, so each event is one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use contracts::read_models::JOBS;
use domain::aggregate::Aggregate;
use domain::job::{Job, JobEvent, JobState};
use domain::RecordedEvent;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

pub struct Jobs;

/// What one event changes of a job's row; `None` keeps the column.
#[derive(Default)]
struct Change {
    state: Option<&'static str>,
    runner: Option<String>,
    started_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    result: Option<Value>,
    error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

#[async_trait]
impl Projection for Jobs {
    fn name(&self) -> &'static str {
        JOBS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        stream_type == Job::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            let id: Uuid = event.stream_id["job-".len()..].parse()?;
            let at = event.recorded_at;
            let finished = |state: JobState| Change {
                state: Some(state.as_str()),
                finished_at: Some(at),
                ..Change::default()
            };
            let change = match event.decode::<JobEvent>()? {
                JobEvent::Requested { spec, source } => {
                    sqlx::query(
                        "INSERT INTO jobs (id, kind, args, source, state, requested_by, requested_at, \
                           cancel_requested, version) \
                         VALUES ($1, $2, $3, $4, 'pending', $5, $6, false, $7) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(spec.kind().as_str())
                    .bind(spec.args())
                    .bind(source.as_str())
                    .bind(&event.metadata.actor.id)
                    .bind(at)
                    .bind(event.stream_version)
                    .execute(&mut *conn)
                    .await?;
                    continue;
                }
                JobEvent::Started { runner } => Change {
                    state: Some(JobState::Running.as_str()),
                    runner: Some(runner),
                    started_at: Some(at),
                    ..Change::default()
                },
                JobEvent::CancelRequested {} => Change {
                    cancel_requested: true,
                    ..Change::default()
                },
                JobEvent::Succeeded { result, .. } => Change {
                    result: Some(result),
                    ..finished(JobState::Succeeded)
                },
                JobEvent::Failed { error, .. } => Change {
                    error: Some(error),
                    ..finished(JobState::Failed)
                },
                JobEvent::Cancelled {} => finished(JobState::Cancelled),
            };
            sqlx::query(
                "UPDATE jobs SET version = $2, state = coalesce($3, state), runner = coalesce($4, runner), \
                   started_at = coalesce($5, started_at), cancel_requested = cancel_requested OR $6, \
                   result = coalesce($7, result), error = coalesce($8, error), \
                   finished_at = coalesce($9, finished_at) \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(event.stream_version)
            .bind(change.state)
            .bind(change.runner)
            .bind(change.started_at)
            .bind(change.cancel_requested)
            .bind(change.result)
            .bind(change.error)
            .bind(change.finished_at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
