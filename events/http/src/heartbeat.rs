//! Each service instance's heartbeat: a row in `service_instances` (its id, service, version and
//! start), whose `last_seen_at` the instance moves every [`INTERVAL`], so that operators see which
//! instances run, since when, and which stopped answering (`GET /api/v1/admin/runtime`). A stopped
//! instance's row stays until housekeeping deletes it a day later.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

/// How often an instance reports.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Starts reporting this instance of `service` in the background; its instance id.
pub fn spawn(pool: PgPool, service: &'static str) -> Uuid {
    let instance = Uuid::now_v7();
    let started_at = Utc::now();
    tokio::spawn(async move {
        loop {
            let reported = sqlx::query(
                "INSERT INTO service_instances (instance_id, service, version, started_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (instance_id) DO UPDATE SET last_seen_at = now()",
            )
            .bind(instance)
            .bind(service)
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(started_at)
            .execute(&pool)
            .await;
            if let Err(error) = reported {
                tracing::warn!(%error, "could not report this instance's heartbeat");
            }
            tokio::time::sleep(INTERVAL).await;
        }
    });
    instance
}
