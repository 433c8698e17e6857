//! Runtime status (System only): `GET /api/v1/admin/runtime`, what operators check when something is
//! slow or stuck:
//! - the log: its head and how many events were appended in the last minute (counted among the
//!   newest [`RATE_WINDOW`] events, so the answer stays cheap under any load);
//! - each checkpoint (the projections, the Kafka publisher as `kafka`): its position, how many events
//!   and seconds it is behind, and its state: `failed` (stuck at an event it cannot apply, with the
//!   error), `stalled` (behind, and its checkpoint has not moved for [`STALLED_AFTER_SECONDS`]), or
//!   `running`;
//! - the database: this instance's pool (size, idle, most) and PostgreSQL's connections;
//! - the queues: probe reports waiting for the intake, and operator jobs waiting for a runner
//!   (pending) and running, each with the oldest;
//! - the service instances' heartbeats (`http_layer::heartbeat`): version, start, uptime, and `up`
//!   or `stale` (not seen for three intervals).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::{Action, Resource};
use event_log::status::{statuses, ProjectionStatus};
use http_layer::heartbeat;
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::extract::Caller;
use crate::AppState;

/// A checkpoint that is behind and has not moved for this long is stalled.
pub const STALLED_AFTER_SECONDS: i64 = 60;

/// The newest events the append rate is counted among.
pub const RATE_WINDOW: i64 = 100_000;

fn state_of(status: &ProjectionStatus, now: DateTime<Utc>) -> &'static str {
    if status.failing_since.is_some() {
        "failed"
    } else if status.behind > 0 && (now - status.updated_at).num_seconds() >= STALLED_AFTER_SECONDS
    {
        "stalled"
    } else {
        "running"
    }
}

#[derive(sqlx::FromRow)]
struct Instance {
    instance_id: Uuid,
    service: String,
    version: String,
    started_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub async fn runtime(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
) -> Result<Json<Value>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let pool = &state.pool;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let (head, appended): (Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT max(global_position) FROM events), \
                (SELECT count(*) FROM events WHERE global_position > \
                   (SELECT coalesce(max(global_position), 0) FROM events) - $1 \
                 AND recorded_at > now() - interval '1 minute')",
    )
    .bind(RATE_WINDOW)
    .fetch_one(pool)
    .await?;
    let checkpoints: Vec<Value> = statuses(pool)
        .await?
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "position": s.global_position,
                "behind": s.behind,
                "lagSeconds": s.lag_seconds,
                "state": state_of(s, now),
                "updatedAt": time(s.updated_at),
                "failingSince": s.failing_since.map(time),
                "failedPosition": s.failed_position,
                "error": s.failure(),
            })
        })
        .collect();
    let (connections, max_connections): (i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()), \
                current_setting('max_connections')::int",
    )
    .fetch_one(pool)
    .await?;
    let (probes, oldest_probe): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), min(first_at) FROM security_refusals WHERE kind = 'probe' AND NOT reported",
    )
    .fetch_one(pool)
    .await?;
    let (jobs_pending, oldest_job, jobs_running, oldest_running): (
        i64,
        Option<DateTime<Utc>>,
        i64,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'), min(requested_at) FILTER (WHERE state = 'pending'), \
                count(*) FILTER (WHERE state = 'running'), min(started_at) FILTER (WHERE state = 'running') \
         FROM read_models.jobs WHERE state IN ('pending', 'running')",
    )
    .fetch_one(pool)
    .await?;
    let instances: Vec<Instance> = sqlx::query_as(
        "SELECT instance_id, service, version, started_at, last_seen_at FROM service_instances \
         ORDER BY service, started_at",
    )
    .fetch_all(pool)
    .await?;
    let stale_after = heartbeat::INTERVAL.as_secs() as i64 * 3;
    let services: Vec<Value> = instances
        .into_iter()
        .map(|i| {
            json!({
                "instanceId": i.instance_id,
                "service": i.service,
                "version": i.version,
                "startedAt": time(i.started_at),
                "lastSeenAt": time(i.last_seen_at),
                "uptimeSeconds": (i.last_seen_at - i.started_at).num_seconds(),
                "state": if (now - i.last_seen_at).num_seconds() > stale_after { "stale" } else { "up" },
            })
        })
        .collect();
    Ok(Json(json!({
        "at": time(now),
        "log": {
            "head": head.unwrap_or(0),
            "appendedLastMinute": appended,
            "appendRatePerSecond": appended as f64 / 60.0,
        },
        "checkpoints": checkpoints,
        "database": {
            "pool": {
                "size": pool.size(),
                "idle": pool.num_idle(),
                "max": pool.options().get_max_connections(),
            },
            "connections": connections,
            "maxConnections": max_connections,
        },
        "queues": {
            "probeReports": { "depth": probes, "oldestAt": oldest_probe.map(time) },
            "jobs": {
                "depth": jobs_pending,
                "oldestAt": oldest_job.map(time),
                "running": jobs_running,
                "oldestRunningSince": oldest_running.map(time),
            },
        },
        "services": services,
    })))
}
