//! Reading the event log: how a process connects to PostgreSQL ([`database`]), the migrations, and
//! every read of the `events` table, decoded into [`RecordedEvent`]s whose payloads are upcast to the
//! current shape and whose personal data is opened ([`personal`]). Nothing here appends: the write
//! side (`commands`) does, so code that depends only on this crate cannot write to the log.
//!
//! Ordering. Positions come from an identity column, handed out when a row is inserted, not when its
//! transaction commits: a reader that took `position > checkpoint` could see 11 commit before 10 and
//! lose 10 for ever. Every row therefore records its writing transaction's id, and [`read_log`] takes
//! only rows whose transaction is older than the oldest one still in flight (the snapshot's xmin),
//! ordered by `(transaction_id, global_position)`, in one statement and so in one snapshot. Anything
//! that commits later has a transaction id at or above that xmin and so sorts after everything read.
//!
//! Per-stream order follows as long as every append states the stream version it expects and that
//! version was read before the appending transaction began (the write side's rule): a writer of
//! version n+1 must have seen version n committed before its own transaction id was assigned, so it
//! sorts after it.
//!
//! Wake-ups. Writers send `NOTIFY` on [`APPENDED_CHANNEL`] after a commit, so that followers
//! ([`listen_for_appends`]) wake at once. A lost notification costs a follower one poll interval,
//! never an event.

pub mod database;
pub mod json;
pub mod personal;
pub mod status;

use chrono::{DateTime, Utc};
use domain::{LogPosition, RecordedEvent};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{PgExecutor, Row};

pub use json::Stored;

/// The channel followers `LISTEN` on; a notification means "new events may be readable".
pub const APPENDED_CHANNEL: &str = "events_appended";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../schemas/migrations");

/// Applies every migration under `schemas/migrations`. Safe to call from several processes at once:
/// the migrator holds a PostgreSQL advisory lock while it works.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// What every read of the log selects from an unaliased `events` row to decode a [`RecordedEvent`]
/// ([`decode`]): the row, and for user events that carry personal data the key that opens it
/// ([`personal`]; `domain::personal::SEALED_EVENT_TYPES`).
pub const COLUMNS: &str =
    "global_position, transaction_id, stream_id, stream_version, event_id, event_type, \
     schema_version, data, metadata, recorded_at, \
     CASE WHEN events.event_type IN ('user.registered', 'user.profile_updated') THEN \
         (SELECT uuid_send(k.key_id) || k.key FROM personal_data_keys k WHERE k.stream_id = events.stream_id) \
     END AS personal_key";

/// Decodes a row selected with [`COLUMNS`]: the payload upcast to its type's current version
/// (`domain::upcast`), its personal data opened or read as erased.
pub fn decode(row: &PgRow) -> sqlx::Result<RecordedEvent> {
    let event_type: String = row.try_get("event_type")?;
    // Decoded past serde_json's default depth: see `domain::json`.
    let Stored(data) = row.try_get("data")?;
    let (schema_version, mut data) =
        domain::upcast::upcast(&event_type, row.try_get("schema_version")?, data);
    let stream_id: String = row.try_get("stream_id")?;
    let personal_key: Option<Vec<u8>> = row.try_get("personal_key")?;
    personal::open(&event_type, &stream_id, &mut data, personal_key.as_deref());
    let sqlx::types::Json(metadata) = row.try_get("metadata")?;
    Ok(RecordedEvent {
        global_position: row.try_get("global_position")?,
        transaction_id: row.try_get("transaction_id")?,
        stream_id,
        stream_version: row.try_get("stream_version")?,
        event_id: row.try_get("event_id")?,
        event_type,
        schema_version,
        data,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// Runs a query that selects [`COLUMNS`] and decodes its rows.
pub async fn fetch_events<'e, 'q>(
    executor: impl PgExecutor<'e>,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::Result<Vec<RecordedEvent>> {
    query
        .try_map(|row: PgRow| decode(&row))
        .fetch_all(executor)
        .await
}

/// A stream's events after `after_version`, in version order, on any connection.
pub async fn read_stream<'e>(
    executor: impl PgExecutor<'e>,
    stream_id: &str,
    after_version: i64,
) -> sqlx::Result<Vec<RecordedEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
    );
    fetch_events(
        executor,
        sqlx::query(&sql).bind(stream_id).bind(after_version),
    )
    .await
}

/// A stream's events recorded at or before `at`, in version order: the stream as it was then.
pub async fn read_stream_as_of<'e>(
    executor: impl PgExecutor<'e>,
    stream_id: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<Vec<RecordedEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY stream_version"
    );
    fetch_events(executor, sqlx::query(&sql).bind(stream_id).bind(at)).await
}

/// The latest `name` each of `streams` had recorded at or before `at` (streams without one are left
/// out), in one statement.
pub async fn names_as_of<'e>(
    executor: impl PgExecutor<'e>,
    streams: &[String],
    at: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (stream_id) stream_id, data->>'name' FROM events \
         WHERE stream_id = ANY($1) AND data ? 'name' AND recorded_at <= $2 \
         ORDER BY stream_id, stream_version DESC",
    )
    .bind(streams)
    .bind(at)
    .fetch_all(executor)
    .await
}

/// Reads the log after `after` without ever skipping an event that commits later (module docs).
/// Works on any connection, so that a projection can read and apply in one transaction.
pub async fn read_log<'e>(
    executor: impl PgExecutor<'e>,
    after: LogPosition,
    limit: i64,
) -> sqlx::Result<Vec<RecordedEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events \
         WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
           AND (transaction_id, global_position) > ($1, $2) \
         ORDER BY transaction_id, global_position \
         LIMIT $3"
    );
    fetch_events(
        executor,
        sqlx::query(&sql)
            .bind(after.transaction_id)
            .bind(after.global_position)
            .bind(limit),
    )
    .await
}

/// The position of the newest committed event: what a reader must reach to reflect every write that
/// completed before now. `LogPosition::START` for an empty log.
pub async fn log_head<'e>(executor: impl PgExecutor<'e>) -> sqlx::Result<LogPosition> {
    let head: Option<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, global_position FROM events \
         ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(
        head.map_or(LogPosition::START, |(transaction_id, global_position)| {
            LogPosition {
                transaction_id,
                global_position,
            }
        }),
    )
}

/// A listener woken by [`APPENDED_CHANNEL`] notifications.
pub async fn listen_for_appends(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(APPENDED_CHANNEL).await?;
    Ok(listener)
}
