//! Rebuilding a projection from position 0 without taking its read model away.
//!
//! The rebuild fills fresh copies of the projection's tables in a scratch schema while the live tables
//! keep serving and the live runner keeps updating them. When it has nearly caught up, one transaction
//! locks the live checkpoint (which waits for the runner's current batch and holds off the next), applies
//! the last events to the copies, swaps the copies in and sets the checkpoint to where they got. Readers
//! see the old tables or the new ones, never a half-built model; the runner continues from the new
//! checkpoint on the new tables.

use std::time::{Duration, Instant};

use anyhow::Context;
use events::store::read_log;
use events::{LogPosition, RecordedEvent};
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{
    apply_batch, apply_next_batch, ensure_checkpoint, lock_checkpoint, save_checkpoint, Projection,
    LIVE_SCHEMA,
};

const BATCH_SIZE: i64 = 5_000;

/// Key of the advisory lock that keeps two rebuilds of one projection apart.
const REBUILD_LOCK_CLASS: i32 = 0x5245_4200;

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub applied: u64,
    /// Events in the log when the rebuild started; more may arrive meanwhile.
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn events_per_second(&self) -> f64 {
        self.applied as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    mut report: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let name = projection.name();
    let scratch = format!("rebuild_{name}");
    let retired = format!("retired_{name}");
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(REBUILD_LOCK_CLASS)
        .bind(name)
        .execute(&mut conn)
        .await?;
    ensure_checkpoint(&mut conn, name).await?;

    // Identifiers below are built from the projection's own static names, never from input.
    let mut ddl = format!("DROP SCHEMA IF EXISTS {scratch} CASCADE; CREATE SCHEMA {scratch};");
    for table in projection.tables() {
        ddl +=
            &format!("CREATE TABLE {scratch}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL);");
    }
    sqlx::raw_sql(&ddl)
        .execute(&mut conn)
        .await
        .context("creating the scratch tables")?;

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await?;
    let started = Instant::now();
    let mut progress = Progress {
        applied: 0,
        total: total as u64,
        elapsed: Duration::ZERO,
    };
    let mut position = LogPosition::START;
    let mut last_report = Instant::now();

    // Fill the copies batch by batch, each batch its own short transaction, until the log is read to
    // its end; the rest is applied under the checkpoint lock. A reader on its own connection stays a
    // couple of batches ahead, so reading and decoding the log overlaps with writing the tables.
    let (batches, mut ahead) = tokio::sync::mpsc::channel::<Vec<RecordedEvent>>(2);
    let reader = tokio::spawn(read_ahead(pool.clone(), batches));
    while let Some(events) = ahead.recv().await {
        let mut tx = conn.begin().await?;
        apply_batch(&mut tx, projection, &scratch, &events).await?;
        tx.commit().await?;
        position = events.last().map_or(position, RecordedEvent::position);
        progress.applied += events.len() as u64;
        progress.elapsed = started.elapsed();
        if last_report.elapsed() >= Duration::from_secs(1) {
            report(progress);
            last_report = Instant::now();
        }
    }
    reader.await.context("the log reader panicked")??;

    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, name).await?;
    while let Some(batch) =
        apply_next_batch(&mut tx, projection, &scratch, position, BATCH_SIZE).await?
    {
        position = batch.last;
        progress.applied += batch.events as u64;
    }
    let mut swap = format!("DROP SCHEMA IF EXISTS {retired} CASCADE; CREATE SCHEMA {retired};");
    for table in projection.tables() {
        swap += &format!(
            "ALTER TABLE {LIVE_SCHEMA}.{table} SET SCHEMA {retired}; ALTER TABLE {scratch}.{table} SET SCHEMA {LIVE_SCHEMA};"
        );
    }
    swap += &format!("DROP SCHEMA {retired} CASCADE; DROP SCHEMA {scratch} CASCADE;");
    sqlx::raw_sql(&swap)
        .execute(&mut *tx)
        .await
        .context("swapping the rebuilt tables in")?;
    save_checkpoint(&mut tx, name, position).await?;
    tx.commit().await?;

    progress.elapsed = started.elapsed();
    report(progress);
    Ok(progress)
}

/// Reads the log from the start in batches and hands them over until it reaches the end (or the
/// receiving side stops).
async fn read_ahead(
    pool: PgPool,
    batches: tokio::sync::mpsc::Sender<Vec<RecordedEvent>>,
) -> anyhow::Result<()> {
    let mut position = LogPosition::START;
    loop {
        let events = read_log(&pool, position, BATCH_SIZE).await?;
        let Some(last) = events.last().map(RecordedEvent::position) else {
            return Ok(());
        };
        position = last;
        let short = (events.len() as i64) < BATCH_SIZE;
        if batches.send(events).await.is_err() || short {
            return Ok(());
        }
    }
}
