//! Read-your-writes over eventually consistent read models (API.md §5).
//!
//! A read names the projection it reads from and waits until that projection's checkpoint has reached
//! a log position: the one in the request's `X-Consistency-Token`, or by default the newest event
//! committed when the read began (so every write that completed before the read is reflected).
//! `Consistency: eventual` skips the wait. Projectors notify on every checkpoint move; a short poll
//! covers a lost notification. After [`MAX_WAIT`] the read answers `503`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use events::read_models::CHECKPOINT_CHANNEL;
use events::LogPosition;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ApiError;

pub const MAX_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(25);

/// What a request asked for.
#[derive(Debug, Clone, Copy)]
pub enum ReadConsistency {
    /// Reflect every write that completed before the read began.
    Default,
    /// Reflect at least the write that returned this token.
    AtLeast(LogPosition),
    Eventual,
}

impl<S: Send + Sync> FromRequestParts<S> for ReadConsistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        if let Some(token) = parts.headers.get("x-consistency-token") {
            let position = token
                .to_str()
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| {
                    ApiError::invalid("X-Consistency-Token", "not a token returned by this API")
                })?;
            return Ok(ReadConsistency::AtLeast(position));
        }
        match parts
            .headers
            .get("consistency")
            .map(|v| v.to_str().unwrap_or_default())
        {
            None => Ok(ReadConsistency::Default),
            Some(v) if v.eq_ignore_ascii_case("eventual") => Ok(ReadConsistency::Eventual),
            Some(other) => Err(ApiError::invalid(
                "Consistency",
                format!("{other:?} is not supported; use \"eventual\""),
            )),
        }
    }
}

#[derive(Clone)]
pub struct Consistency {
    pool: PgPool,
    checkpoint_moved: Arc<Notify>,
}

impl Consistency {
    /// Starts listening for checkpoint moves on the current runtime.
    pub fn start(pool: PgPool) -> Self {
        let checkpoint_moved = Arc::new(Notify::new());
        tokio::spawn(listen(pool.clone(), checkpoint_moved.clone()));
        Consistency {
            pool,
            checkpoint_moved,
        }
    }

    /// Waits until `projection` reflects what `wanted` asks for.
    pub async fn wait(&self, projection: &str, wanted: ReadConsistency) -> Result<(), ApiError> {
        self.wait_all(&[projection], wanted).await
    }

    /// Waits until every one of `projections` reflects what `wanted` asks for, for reads that join
    /// read models of several projections.
    pub async fn wait_all(
        &self,
        projections: &[&str],
        wanted: ReadConsistency,
    ) -> Result<(), ApiError> {
        let target = match wanted {
            ReadConsistency::Eventual => return Ok(()),
            ReadConsistency::AtLeast(position) => position,
            ReadConsistency::Default => {
                // The head and the checkpoints in one statement: one round trip in the common case.
                let (head, checkpoint) = self.head_and_checkpoint(projections).await?;
                if checkpoint >= head {
                    return Ok(());
                }
                head
            }
        };
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            // Registered before reading the checkpoint, so a move in between is not missed.
            let moved = self.checkpoint_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.checkpoint(projections).await? >= target {
                return Ok(());
            }
            tokio::select! {
                _ = moved => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::Unavailable(format!(
                        "the {} read model has not caught up with the requested writes within {} s; retry, or send Consistency: eventual",
                        projections.join(" and "),
                        MAX_WAIT.as_secs()
                    )));
                }
            }
        }
    }

    async fn head_and_checkpoint(
        &self,
        projections: &[&str],
    ) -> Result<(LogPosition, LogPosition), ApiError> {
        let row: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(&format!(
            "SELECT h.transaction_id, h.global_position, c.transaction_id, c.global_position \
             FROM (SELECT 1) one \
             LEFT JOIN LATERAL (SELECT transaction_id, global_position FROM events \
                                ORDER BY transaction_id DESC, global_position DESC LIMIT 1) h ON true \
             LEFT JOIN LATERAL ({SLOWEST_CHECKPOINT}) c ON true"
        ))
        .bind(projections)
        .fetch_one(&self.pool)
        .await?;
        Ok((position(row.0, row.1), position(row.2, row.3)))
    }

    /// The checkpoint of the projection furthest behind among `projections`.
    async fn checkpoint(&self, projections: &[&str]) -> Result<LogPosition, ApiError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(SLOWEST_CHECKPOINT)
            .bind(projections)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(LogPosition::START, |(tx, pos)| position(tx, pos)))
    }
}

/// The least checkpoint of the projections named in `$1`; a projection without one counts as the start.
const SLOWEST_CHECKPOINT: &str = "SELECT c.transaction_id, c.global_position \
     FROM unnest($1::text[]) AS p(name) LEFT JOIN projection_checkpoints c ON c.name = p.name \
     ORDER BY c.transaction_id NULLS FIRST, c.global_position NULLS FIRST LIMIT 1";

fn position(transaction_id: Option<i64>, global_position: Option<i64>) -> LogPosition {
    LogPosition {
        transaction_id: transaction_id.unwrap_or(0),
        global_position: global_position.unwrap_or(0),
    }
}

async fn listen(pool: PgPool, checkpoint_moved: Arc<Notify>) {
    loop {
        let result = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHECKPOINT_CHANNEL).await?;
            loop {
                listener.recv().await?;
                checkpoint_moved.notify_waiters();
            }
        }
        .await;
        let error: sqlx::Error = match result {
            Ok(()) => continue,
            Err(error) => error,
        };
        // Waiters fall back to polling meanwhile.
        tracing::warn!(%error, "lost the checkpoint listener; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
