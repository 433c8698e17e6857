//! Rebuilding a projection from position 0 without taking its read model away.
//!
//! The rebuild fills fresh copies of the projection's tables in a scratch schema while the live tables
//! keep serving and the live runner keeps updating them. When it has nearly caught up, one transaction
//! locks the live checkpoint (which waits for the runner's current batch and holds off the next), applies
//! the last events to the copies, swaps the copies in and sets the checkpoint to where they got. Readers
//! see the old tables or the new ones, never a half-built model; the runner continues from the new
//! checkpoint on the new tables.

use std::time::Instant;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{
    apply_next_batch, ensure_checkpoint, lock_checkpoint, save_checkpoint, Projection, LIVE_SCHEMA,
};
use crate::scratch::{
    analyze_copies, create_copies, fill, lock_rebuilds, Progress, Until, BATCH_SIZE,
};

pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    report: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let started = Instant::now();
    let name = projection.name();
    let scratch = format!("rebuild_{name}");
    let retired = format!("retired_{name}");
    // The copies' batches need not wait for the disk: a crash loses the copies, never the live model,
    // and the rebuild starts again. The swap below waits for it.
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    let mut conn = PgConnection::connect_with(&options).await?;
    lock_rebuilds(&mut conn, name).await?;
    ensure_checkpoint(&mut conn, name).await?;
    create_copies(&mut conn, &[projection], &scratch, true).await?;

    // Fill the copies up to the log's end as it is now; the rest is applied under the checkpoint lock.
    let (mut position, mut progress) =
        fill(&mut conn, pool, &[projection], &scratch, Until::End, report).await?;
    // Statistics before the swap, so that the first reads of the new tables are planned well.
    analyze_copies(&mut conn, &[projection], &scratch).await?;

    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = on")
        .execute(&mut *tx)
        .await?;
    lock_checkpoint(&mut tx, name).await?;
    while let Some(batch) =
        apply_next_batch(&mut tx, projection, &scratch, position, BATCH_SIZE).await?
    {
        position = batch.last;
        progress.read += batch.events as u64;
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
    Ok(progress)
}
