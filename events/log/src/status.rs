//! Where each projection stands: its checkpoint, how far behind the log it is, and whether it is stuck
//! at an event it cannot apply.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectionStatus {
    pub name: String,
    pub transaction_id: i64,
    pub global_position: i64,
    pub updated_at: DateTime<Utc>,
    /// Committed events it has not applied yet.
    pub behind: i64,
    /// Age of the oldest event it has not applied yet; 0 when caught up.
    pub lag_seconds: f64,
    /// Set while its runner keeps failing to go past its checkpoint.
    pub failing_since: Option<DateTime<Utc>>,
    pub failed_attempts: i32,
    /// The global position of the event it cannot apply, once the runner has isolated it.
    pub failed_position: Option<i64>,
    pub last_error: Option<String>,
}

impl ProjectionStatus {
    /// One line for operators when it is failing: where and why.
    pub fn failure(&self) -> Option<String> {
        self.failing_since?;
        let at = match self.failed_position {
            Some(position) => format!("the event at global position {position}"),
            None => format!("global position {}", self.global_position),
        };
        Some(format!(
            "{} is stuck at {at} ({} attempts): {}",
            self.name,
            self.failed_attempts,
            self.last_error.as_deref().unwrap_or("no error recorded")
        ))
    }
}

pub async fn statuses(pool: &PgPool) -> sqlx::Result<Vec<ProjectionStatus>> {
    sqlx::query_as(
        "SELECT c.name, c.transaction_id, c.global_position, c.updated_at, c.failing_since, \
                c.failed_attempts, c.failed_position, c.last_error, \
                lag.behind, COALESCE(extract(epoch FROM now() - lag.oldest)::float8, 0) AS lag_seconds \
         FROM projection_checkpoints c, LATERAL ( \
             SELECT count(*) AS behind, min(e.recorded_at) AS oldest FROM events e \
             WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position) \
         ) lag \
         ORDER BY c.name",
    )
    .fetch_all(pool)
    .await
}
