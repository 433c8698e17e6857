//! The projection contract, what every runner applies a batch with ([`apply_batch`]: only the
//! events the projection handles, in the schema it is told), and the checkpoint's reads and moves.

use std::borrow::Cow;

use async_trait::async_trait;
use contracts::read_models::CHECKPOINT_CHANNEL;
use domain::{LogPosition, RecordedEvent};
use event_log::read_log;
use sqlx::PgConnection;

/// The schema live read models sit in; query-api reads from it.
pub const LIVE_SCHEMA: &str = "read_models";

#[async_trait]
pub trait Projection: Send + Sync {
    /// Its checkpoint's name, also what `projector rebuild <name>` takes.
    fn name(&self) -> &'static str;

    /// The tables it owns. They are created by the migrations in [`LIVE_SCHEMA`]; a rebuild copies their
    /// definitions.
    fn tables(&self) -> &'static [&'static str];

    /// Whether it reads the events of streams of this type (the part of a stream id before its first
    /// `-`). Only those are passed to [`Projection::apply`], by every runner; a live batch holding
    /// none of them moves the checkpoint without a transaction.
    fn handles(&self, _stream_type: &str) -> bool {
        true
    }

    /// Applies events, in log order, to its tables, named without a schema: the runner sets the
    /// `search_path` to the live schema or to a rebuild's scratch schema. Only the events of stream
    /// types it [handles](Projection::handles) are passed, never an empty batch.
    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()>;
}

/// The events of `events` that `projection` handles, borrowed when that is all of them.
pub fn handled<'a>(
    projection: &dyn Projection,
    events: &'a [RecordedEvent],
) -> Cow<'a, [RecordedEvent]> {
    let handles = |event: &RecordedEvent| {
        let stream_type = event.stream_id.split_once('-').map_or("", |(t, _)| t);
        projection.handles(stream_type)
    };
    if events.iter().all(handles) {
        Cow::Borrowed(events)
    } else {
        Cow::Owned(events.iter().filter(|e| handles(e)).cloned().collect())
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub events: usize,
    pub last: LogPosition,
}

/// Reads up to `limit` events after `after` and applies them to the tables in `schema`, in the
/// caller's transaction. `None` when there was nothing to read.
pub async fn apply_next_batch(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    after: LogPosition,
    limit: i64,
) -> anyhow::Result<Option<Batch>> {
    let events = read_log(&mut *tx, after, limit).await?;
    let Some(last) = events.last().map(RecordedEvent::position) else {
        return Ok(None);
    };
    apply_batch(tx, projection, schema, &events).await?;
    Ok(Some(Batch {
        events: events.len(),
        last,
    }))
}

/// Applies events already read to the tables in `schema`, in the caller's transaction.
pub async fn apply_batch(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    events: &[RecordedEvent],
) -> anyhow::Result<()> {
    let events = handled(projection, events);
    if events.is_empty() {
        return Ok(());
    }
    // `schema` is one of our own identifiers (the live schema or a rebuild's), never request input.
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *tx)
        .await?;
    projection.apply(tx, &events).await
}

pub async fn ensure_checkpoint(conn: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the projection's checkpoint row until the transaction ends and returns it. Live batches and a
/// rebuild's swap both take this lock, so they never interleave.
pub async fn lock_checkpoint(tx: &mut PgConnection, name: &str) -> sqlx::Result<LogPosition> {
    select_checkpoint(tx, name, " FOR UPDATE").await
}

/// Reads the projection's checkpoint, without locking it.
pub async fn read_checkpoint(conn: &mut PgConnection, name: &str) -> sqlx::Result<LogPosition> {
    select_checkpoint(conn, name, "").await
}

async fn select_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    locking: &str,
) -> sqlx::Result<LogPosition> {
    let (transaction_id, global_position): (i64, i64) = sqlx::query_as(&format!(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1{locking}"
    ))
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(LogPosition {
        transaction_id,
        global_position,
    })
}

/// Moves the checkpoint (in the transaction that applied the events) and tells waiting readers.
pub async fn save_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    position: LogPosition,
) -> sqlx::Result<()> {
    move_checkpoint(tx, name, None, position).await?;
    Ok(())
}

/// Moves the checkpoint to `to`, only if it is still at `from` when that is given, and tells waiting
/// readers, in one statement; returns whether it moved. Moving it also ends any failure recorded at
/// this place (see `record_failure`).
pub async fn move_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    from: Option<LogPosition>,
    to: LogPosition,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "WITH saved AS ( \
             UPDATE projection_checkpoints SET transaction_id = $2, global_position = $3, updated_at = now(), \
               failing_since = NULL, failed_attempts = 0, failed_position = NULL, last_error = NULL \
             WHERE name = $1 AND ($4::bigint IS NULL OR (transaction_id, global_position) = ($4, $5)) \
             RETURNING name \
         ) \
         SELECT pg_notify($6, name) FROM saved",
    )
    .bind(name)
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(from.map(|p| p.transaction_id))
    .bind(from.map(|p| p.global_position))
    .bind(CHECKPOINT_CHANNEL)
    .fetch_optional(conn)
    .await?;
    Ok(moved.is_some())
}

/// Records that the runner of `name` failed to go past its checkpoint, and tells waiting readers, so
/// that reads depending on it stop waiting for it (query-api) and operators see it (`status`,
/// `/readyz`, `/metrics`). `isolated`: the failure is the event right after the checkpoint, applied
/// on its own; its position is then recorded too.
pub async fn record_failure(
    pool: &sqlx::PgPool,
    name: &str,
    isolated: bool,
    error: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE projection_checkpoints c SET failing_since = COALESCE(c.failing_since, now()), \
           failed_attempts = c.failed_attempts + 1, last_error = $3, \
           failed_position = CASE WHEN $2 THEN ( \
               SELECT e.global_position FROM events e \
               WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position) \
               ORDER BY e.transaction_id, e.global_position LIMIT 1 \
           ) ELSE c.failed_position END \
         WHERE c.name = $1",
    )
    .bind(name)
    .bind(isolated)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    notify_readers(&mut tx, name).await?;
    tx.commit().await
}

/// Tells query-api's checkpoint watchers that `name`'s checkpoint row changed, when `tx` commits.
async fn notify_readers(tx: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHECKPOINT_CHANNEL)
        .bind(name)
        .execute(tx)
        .await?;
    Ok(())
}
