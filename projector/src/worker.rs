//! Runs one projection live: holds its advisory lock, follows the log from its checkpoint and applies
//! batches, each batch and its checkpoint in one transaction. A batch holding none of the events the
//! projection handles only moves the checkpoint, in one statement that moves it only from where this
//! runner left it ([`run_batch`]).
//!
//! Exactly-once: the checkpoint moves in the transaction that changes the tables, so a crash anywhere
//! either keeps both or neither. Single runner: the advisory lock is taken on the very connection that
//! runs the batches. If that connection dies, PostgreSQL releases the lock and aborts any open batch,
//! so a standby that takes over can never overlap with a batch of the old holder.
//!
//! Shutdown: the runner looks at its [`Shutdown`] only between batches, so a batch under way commits
//! (or, if the process is gone first, rolls back) as a whole, and the checkpoint stays with the tables.
//!
//! Cost. A batch is a few round trips and a commit whatever its size (the runner keeps the checkpoint
//! it left in memory, and its connection's `search_path` is the live schema), so after a wake-up the runner
//! waits [`WorkerConfig::gather`] for the commits around it, and applies them together. Its commits
//! do not wait for the disk (`synchronous_commit = off` on its connection): a read model is rebuilt
//! from the log, and since the checkpoint commits with the tables, a crash can only lose the last
//! batches as a whole, which the runner then applies again. The log's own appends keep waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{
    ensure_checkpoint, handled, lock_checkpoint, move_checkpoint, read_checkpoint, record_failure,
    save_checkpoint, Projection, LIVE_SCHEMA,
};
use domain::{LogPosition, RecordedEvent};
use event_log::{listen_for_appends, read_log};
use http_layer::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub batch_size: i64,
    /// How often to look for events when no notification arrives.
    pub poll_interval: Duration,
    /// How long to wait before retrying after a failure.
    pub retry_delay: Duration,
    /// How long to wait after a wake-up before reading, so that the appends committing meanwhile go
    /// into the same batch.
    pub gather: Duration,
    /// Stops the runner between batches.
    pub shutdown: Shutdown,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            retry_delay: Duration::from_secs(1),
            gather: Duration::from_millis(5),
            shutdown: Shutdown::default(),
        }
    }
}

/// Runs the projection until shutdown is requested or the task is dropped, retrying after any
/// failure. A failure is recorded on the projection's checkpoint row (see [`record_failure`]), so it
/// is seen where operators and waiting readers look, and the next batch applied clears it.
pub async fn run(pool: PgPool, projection: Arc<dyn Projection>, config: WorkerConfig) {
    let name = projection.name();
    while !config.shutdown.is_requested() {
        if let Err(failure) = hold_and_follow(&pool, projection.as_ref(), &config).await {
            let error = format!("{:#}", failure.error);
            tracing::error!(
                projection = name,
                error,
                isolated = failure.isolated,
                "projection stopped; retrying"
            );
            metrics::counter!("projection_failures_total", "projection" => name).increment(1);
            if let Err(error) = record_failure(&pool, name, failure.isolated, &error).await {
                tracing::warn!(projection = name, %error, "could not record the failure");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_delay) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    tracing::info!(projection = projection.name(), "stopped");
}

/// Why a runner stopped following the log.
struct Failure {
    /// Whether the event right after the checkpoint, applied on its own, is what failed (rather than
    /// a batch, a connection or a lock).
    isolated: bool,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            isolated: false,
            error,
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        anyhow::Error::from(error).into()
    }
}

/// Key of the advisory lock that makes one process the runner of a projection.
pub(crate) const RUNNER_LOCK_CLASS: i32 = 0x5052_4a00;

/// Waits until this connection holds the runner lock of the checkpoint `name`: while another
/// process runs it, this one stands by.
pub(crate) async fn become_runner(
    conn: &mut PgConnection,
    name: &str,
    poll_interval: Duration,
) -> sqlx::Result<()> {
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(RUNNER_LOCK_CLASS)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            return Ok(());
        }
        tokio::time::sleep(poll_interval).await;
    }
}

async fn hold_and_follow(
    pool: &PgPool,
    projection: &dyn Projection,
    config: &WorkerConfig,
) -> Result<(), Failure> {
    let name = projection.name();
    let mut conn = connect(pool).await.context("connecting")?;
    ensure_checkpoint(&mut conn, name).await?;
    tokio::select! {
        became = become_runner(&mut conn, name, config.poll_interval) => became?,
        // A standby holds nothing: it can stop at once.
        _ = config.shutdown.requested() => return Ok(()),
    }
    tracing::info!(projection = name, "running");
    let mut listener = listen_for_appends(pool)
        .await
        .context("listening for appends")?;
    // After a batch fails, its events are applied one at a time: either they all go through (the
    // failure was passing), or the one that fails is known exactly and the checkpoint stays just
    // before it.
    let mut one_at_a_time: i64 = 0;
    let mut checkpoint = None;
    while !config.shutdown.is_requested() {
        let limit = if one_at_a_time > 0 {
            1
        } else {
            config.batch_size
        };
        match run_batch(&mut conn, projection, &mut checkpoint, limit).await {
            Ok(applied) => {
                one_at_a_time = (one_at_a_time - applied as i64).max(0);
                if applied as i64 == limit {
                    continue;
                }
            }
            Err(error) if limit > 1 => {
                tracing::warn!(
                    projection = name,
                    error = format!("{error:#}"),
                    "a batch failed; applying its events one at a time"
                );
                one_at_a_time = limit;
                continue;
            }
            Err(error) => {
                return Err(Failure {
                    isolated: true,
                    error,
                })
            }
        }
        tokio::select! {
            notification = listener.recv() => {
                notification.context("waiting for appends")?;
                tokio::time::sleep(config.gather).await;
            }
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    Ok(())
}

/// A connection for running a live projection: its commits do not wait for the disk (module docs),
/// and its `search_path` is the live schema, where [`run_batch`] applies.
pub async fn connect(pool: &PgPool) -> sqlx::Result<PgConnection> {
    let options = (*pool.connect_options()).clone().options([
        ("synchronous_commit", "off"),
        ("search_path", &format!("{LIVE_SCHEMA},public")),
    ]);
    PgConnection::connect_with(&options).await
}

/// Reads the next batch after the live checkpoint and moves the checkpoint past it; returns how many
/// events it read (0: none, or the checkpoint was moved by someone else, a rebuild's swap, and the
/// next batch starts from there). `conn` comes from [`connect`]. `checkpoint` is where this runner
/// last left the checkpoint (`None`: not known yet, read it), so that a batch costs:
/// - nothing beyond the read of the log when there is nothing new;
/// - one statement more when the projection handles none of the events: the checkpoint moves on
///   alone, if it is still where this runner left it, so that reads waiting for it see it move;
/// - otherwise one transaction: the checkpoint locked (and checked to be where this runner left it),
///   the events applied, the checkpoint moved.
pub async fn run_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: &mut Option<LogPosition>,
    limit: i64,
) -> anyhow::Result<usize> {
    let name = projection.name();
    let started = Instant::now();
    let after = match *checkpoint {
        Some(position) => position,
        None => read_checkpoint(conn, name).await?,
    };
    *checkpoint = Some(after);
    let events = read_log(&mut *conn, after, limit).await?;
    let Some(last) = events.last().map(RecordedEvent::position) else {
        return Ok(0);
    };
    let ours = handled(projection, &events);
    let moved = if ours.is_empty() {
        move_checkpoint(conn, name, Some(after), last).await?
    } else {
        let mut tx = conn.begin().await?;
        if lock_checkpoint(&mut tx, name).await? == after {
            projection.apply(&mut tx, &ours).await.with_context(|| {
                format!(
                    "applying the events after global position {} to {name}",
                    after.global_position
                )
            })?;
            save_checkpoint(&mut tx, name, last).await?;
            tx.commit().await?;
            true
        } else {
            tx.rollback().await?;
            false
        }
    };
    if !moved {
        *checkpoint = None;
        return Ok(0);
    }
    *checkpoint = Some(last);
    metrics::counter!("projection_events_total", "projection" => name)
        .increment(events.len() as u64);
    metrics::gauge!("projection_position", "projection" => name).set(last.global_position as f64);
    tracing::debug!(
        projection = name,
        events = events.len(),
        applied = ours.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch applied"
    );
    Ok(events.len())
}
