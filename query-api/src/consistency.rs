//! Read-your-writes over eventually consistent read models (contract §5, `events/docs/contract.md`).
//!
//! A read names the projections it reads from and waits until their checkpoints have reached a log
//! position: the one in the request's `X-Consistency-Token`, or by default the newest event committed
//! when the read began (so every write that completed before the read is reflected). That head is read
//! in the statement that reads the caller's access ([`ReadStart`]) and compared with the checkpoints
//! the watcher last read, so a read of caught-up models asks the database nothing more; without it (a
//! caller served from a cache) the head and the checkpoints are read in one statement.
//! `Consistency: eventual` skips the wait. After [`ConsistencyConfig::max_wait`] the read answers
//! `503`.
//!
//! Waiting is cheap: one watcher task per process follows every checkpoint (woken by the projectors'
//! notifications, with a short poll for a lost one) and publishes them on a `watch` channel; a waiting
//! request holds no database connection and asks the database nothing until its wait ends. The
//! number of requests waiting at once is capped ([`ConsistencyConfig::max_waiters`]; over it: `503`
//! with `Retry-After`), a token past the end of the log is refused at once (`400`), and a projection
//! stuck at an event it cannot apply fails the reads that wait on it at once instead of after the
//! whole wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use contracts::read_models::CHECKPOINT_CHANNEL;
use domain::LogPosition;
use event_log::log_head;
use http_layer::ApiError;
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// How often the watcher reads the checkpoints without a notification while requests wait (a lost
/// notification costs a waiter at most this), and while none does.
const POLL: Duration = Duration::from_millis(50);
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A projection whose runner failed this many times in a row at the same place is stuck: reads that
/// need it past there fail at once. (One failure may be passing: a lost connection, a restart.)
const STUCK_AFTER_ATTEMPTS: i32 = 2;

#[derive(Debug, Clone, Copy)]
pub struct ConsistencyConfig {
    /// The longest a read waits for the read models.
    pub max_wait: Duration,
    /// How many reads may wait at once.
    pub max_waiters: usize,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            max_wait: Duration::from_secs(5),
            max_waiters: 1_000,
        }
    }
}

/// What a request asked for.
#[derive(Debug, Clone, Copy)]
pub enum ReadConsistency {
    /// Reflect every write that completed before the read began: the log's head read with the
    /// caller's access ([`ReadStart`]), or, when there is none, read when the read waits.
    Default(Option<LogPosition>),
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
            None => Ok(ReadConsistency::Default(
                parts.extensions.get::<ReadStart>().map(|start| start.0),
            )),
            Some(v) if v.eq_ignore_ascii_case("eventual") => Ok(ReadConsistency::Eventual),
            Some(other) => Err(ApiError::invalid(
                "Consistency",
                format!("{other:?} is not supported; use \"eventual\""),
            )),
        }
    }
}

/// The log's head when the request's caller was authenticated, read in the same statement as its
/// access (`identity::auth::Authenticated::read_at`); the caller's extractor leaves it in the
/// request's extensions, so that a default read need not read the head again. Handlers take the
/// caller before the consistency, and axum extracts in that order; a consistency extracted first
/// finds nothing here and reads the head itself, which is as exact and costs one statement.
#[derive(Debug, Clone, Copy)]
pub struct ReadStart(pub LogPosition);

/// One projection's checkpoint as the watcher last read it.
#[derive(Debug, Clone, Copy, Default)]
struct Checkpoint {
    position: LogPosition,
    /// Where it is stuck, when it is (the event it cannot apply, or its checkpoint).
    stuck_at: Option<i64>,
}

type Checkpoints = HashMap<String, Checkpoint>;

#[derive(Clone)]
pub struct Consistency {
    pool: PgPool,
    config: ConsistencyConfig,
    checkpoints: watch::Receiver<Arc<Checkpoints>>,
    waiters: Arc<Semaphore>,
    /// Reads of the checkpoints made to serve waiting requests: what waiting costs the database.
    checkpoint_reads: Arc<AtomicU64>,
}

/// What the watcher task needs: not the receiving side, so that it ends with the last [`Consistency`].
struct Watcher {
    pool: PgPool,
    waiters: Arc<Semaphore>,
    max_waiters: usize,
    reads: Arc<AtomicU64>,
}

impl Consistency {
    /// Starts the checkpoint watcher on the current runtime.
    pub fn start(pool: PgPool, config: ConsistencyConfig) -> Self {
        let (sender, checkpoints) = watch::channel(Arc::new(Checkpoints::new()));
        let consistency = Consistency {
            pool,
            config,
            checkpoints,
            waiters: Arc::new(Semaphore::new(config.max_waiters)),
            checkpoint_reads: Arc::new(AtomicU64::new(0)),
        };
        let watcher = Watcher {
            pool: consistency.pool.clone(),
            waiters: consistency.waiters.clone(),
            max_waiters: config.max_waiters,
            reads: consistency.checkpoint_reads.clone(),
        };
        tokio::spawn(watch_checkpoints(watcher, sender));
        consistency
    }

    /// How many times the watcher has read the checkpoints from the database.
    pub fn checkpoint_reads(&self) -> u64 {
        self.checkpoint_reads.load(Ordering::Relaxed)
    }

    /// How many reads are waiting now.
    pub fn waiting(&self) -> usize {
        self.config.max_waiters - self.waiters.available_permits()
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
        let mut checkpoints = self.checkpoints.clone();
        let target = match wanted {
            ReadConsistency::Eventual => return Ok(()),
            ReadConsistency::AtLeast(position) => {
                if let Some(verdict) =
                    verdict(&checkpoints.borrow_and_update(), projections, position)
                {
                    return verdict;
                }
                // Only a token this API handed out is ever waited for: a forged one past the end of
                // the log would hold the request for the whole wait.
                if position > log_head(&self.pool).await? {
                    return Err(ApiError::invalid(
                        "X-Consistency-Token",
                        "points past the end of the log; send a token returned by this API",
                    ));
                }
                position
            }
            ReadConsistency::Default(Some(head)) => {
                // Read with the caller's access: nothing to ask the database when the checkpoints
                // last read have reached it.
                if let Some(verdict) = verdict(&checkpoints.borrow_and_update(), projections, head)
                {
                    return verdict;
                }
                head
            }
            ReadConsistency::Default(None) => {
                // The head and the checkpoints in one statement: one round trip in the common case.
                let (head, checkpoint) = self.head_and_checkpoint(projections).await?;
                if checkpoint >= head {
                    return Ok(());
                }
                head
            }
        };
        let _waiting = self.waiters.clone().try_acquire_owned().map_err(|_| ApiError::Busy {
            retry_after_seconds: 1,
            details: format!(
                "{} reads are already waiting for the read models; retry, or send Consistency: eventual",
                self.config.max_waiters
            ),
        })?;
        let deadline = Instant::now() + self.config.max_wait;
        loop {
            if let Some(verdict) = verdict(&checkpoints.borrow_and_update(), projections, target) {
                return verdict;
            }
            tokio::select! {
                changed = checkpoints.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Unavailable("the checkpoint watcher stopped".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::Unavailable(format!(
                        "the {} read model has not caught up with the requested writes within {} s; retry, or send Consistency: eventual",
                        projections.join(" and "),
                        self.config.max_wait.as_secs()
                    )));
                }
            }
        }
    }

    async fn head_and_checkpoint(
        &self,
        projections: &[&str],
    ) -> Result<(LogPosition, LogPosition), ApiError> {
        let row: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT h.transaction_id, h.global_position, c.transaction_id, c.global_position \
             FROM (SELECT 1) one \
             LEFT JOIN LATERAL (SELECT transaction_id, global_position FROM events \
                                ORDER BY transaction_id DESC, global_position DESC LIMIT 1) h ON true \
             LEFT JOIN LATERAL ( \
                 SELECT c.transaction_id, c.global_position \
                 FROM unnest($1::text[]) AS p(name) LEFT JOIN projection_checkpoints c ON c.name = p.name \
                 ORDER BY c.transaction_id NULLS FIRST, c.global_position NULLS FIRST LIMIT 1 \
             ) c ON true",
        )
        .bind(projections)
        .fetch_one(&self.pool)
        .await?;
        Ok((position(row.0, row.1), position(row.2, row.3)))
    }
}

/// Whether a wait for `projections` to reach `target` is over, by the checkpoints last read: `Ok` when
/// they all have, an error when one that has not is stuck, `None` while it must go on.
fn verdict(
    checkpoints: &Checkpoints,
    projections: &[&str],
    target: LogPosition,
) -> Option<Result<(), ApiError>> {
    let mut reached = true;
    for name in projections {
        let checkpoint = checkpoints.get(*name).copied().unwrap_or_default();
        if checkpoint.position >= target {
            continue;
        }
        if let Some(position) = checkpoint.stuck_at {
            return Some(Err(ApiError::Unavailable(format!(
                "the {name} read model has stopped at global position {position}, at an event it cannot apply; operators see why in `projector status`. Retry later, or send Consistency: eventual"
            ))));
        }
        reached = false;
    }
    reached.then_some(Ok(()))
}

fn position(transaction_id: Option<i64>, global_position: Option<i64>) -> LogPosition {
    LogPosition {
        transaction_id: transaction_id.unwrap_or(0),
        global_position: global_position.unwrap_or(0),
    }
}

/// Keeps the published checkpoints fresh: read at once on every notification of a move (a burst of
/// them costs one read), and every [`POLL`] while requests wait, in case a notification was lost.
/// Ends when the last [`Consistency`] is dropped.
async fn watch_checkpoints(watcher: Watcher, sender: watch::Sender<Arc<Checkpoints>>) {
    while !sender.is_closed() {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&watcher.pool).await?;
            listener.listen(CHECKPOINT_CHANNEL).await?;
            while !sender.is_closed() {
                sender.send_replace(Arc::new(watcher.read_checkpoints().await?));
                let waiting = watcher.waiters.available_permits() < watcher.max_waiters;
                let poll = if waiting { POLL } else { IDLE_POLL };
                tokio::select! {
                    notification = listener.recv() => {
                        notification?;
                        while listener.next_buffered().is_some() {}
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "lost the checkpoint watcher's connection; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Watcher {
    async fn read_checkpoints(&self) -> Result<Checkpoints, sqlx::Error> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let rows: Vec<(String, i64, i64, i32, Option<i64>)> = sqlx::query_as(
            "SELECT name, transaction_id, global_position, failed_attempts, failed_position \
             FROM projection_checkpoints",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(name, transaction_id, global_position, attempts, failed)| {
                    let stuck_at = (attempts >= STUCK_AFTER_ATTEMPTS)
                        .then(|| failed.unwrap_or(global_position));
                    let position = LogPosition {
                        transaction_id,
                        global_position,
                    };
                    (name, Checkpoint { position, stuck_at })
                },
            )
            .collect())
    }
}
