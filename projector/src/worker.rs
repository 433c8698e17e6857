//! Runs one projection live: holds its advisory lock, follows the log from its checkpoint and applies
//! batches, each batch and its checkpoint in one transaction.
//!
//! Exactly-once: the checkpoint moves in the transaction that changes the tables, so a crash anywhere
//! either keeps both or neither. Single runner: the advisory lock is taken on the very connection that
//! runs the batches. If that connection dies, PostgreSQL releases the lock and aborts any open batch,
//! so a standby that takes over can never overlap with a batch of the old holder.
//!
//! Shutdown: the runner looks at its [`Shutdown`] only between batches, so a batch under way commits
//! (or, if the process is gone first, rolls back) as a whole, and the checkpoint stays with the tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{
    apply_next_batch, ensure_checkpoint, lock_checkpoint, save_checkpoint, Projection, LIVE_SCHEMA,
};
use events::shutdown::Shutdown;
use events::store::listen_for_appends;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub batch_size: i64,
    /// How often to look for events when no notification arrives.
    pub poll_interval: Duration,
    /// How long to wait before retrying after a failure.
    pub retry_delay: Duration,
    /// Stops the runner between batches.
    pub shutdown: Shutdown,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            retry_delay: Duration::from_secs(1),
            shutdown: Shutdown::default(),
        }
    }
}

/// Runs the projection until shutdown is requested or the task is dropped, retrying after any
/// failure.
pub async fn run(pool: PgPool, projection: Arc<dyn Projection>, config: WorkerConfig) {
    while !config.shutdown.is_requested() {
        if let Err(error) = hold_and_follow(&pool, projection.as_ref(), &config).await {
            tracing::error!(
                projection = projection.name(),
                error = format!("{error:#}"),
                "projection stopped; retrying"
            );
            metrics::counter!("projection_failures_total", "projection" => projection.name())
                .increment(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_delay) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    tracing::info!(projection = projection.name(), "stopped");
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
) -> anyhow::Result<()> {
    let name = projection.name();
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("connecting")?;
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
    while !config.shutdown.is_requested() {
        let applied = run_batch(&mut conn, projection, config.batch_size).await?;
        if applied as i64 == config.batch_size {
            continue;
        }
        tokio::select! {
            notification = listener.recv() => { notification.context("waiting for appends")?; }
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    Ok(())
}

/// Applies the next batch after the live checkpoint; returns how many events it applied.
pub async fn run_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    limit: i64,
) -> anyhow::Result<usize> {
    let name = projection.name();
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let checkpoint = lock_checkpoint(&mut tx, name).await?;
    let Some(batch) = apply_next_batch(&mut tx, projection, LIVE_SCHEMA, checkpoint, limit)
        .await
        .with_context(|| format!("applying events after {checkpoint:?} to {name}"))?
    else {
        return Ok(0);
    };
    save_checkpoint(&mut tx, name, batch.last).await?;
    tx.commit().await?;
    metrics::counter!("projection_events_total", "projection" => name)
        .increment(batch.events as u64);
    metrics::gauge!("projection_position", "projection" => name)
        .set(batch.last.global_position as f64);
    tracing::debug!(
        projection = name,
        events = batch.events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch applied"
    );
    Ok(batch.events)
}
