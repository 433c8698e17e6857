//! Where each projection stands: its checkpoint and how far behind the log it is.

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
}

pub async fn statuses(pool: &PgPool) -> sqlx::Result<Vec<ProjectionStatus>> {
    sqlx::query_as(
        "SELECT c.name, c.transaction_id, c.global_position, c.updated_at, \
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
