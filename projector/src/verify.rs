//! `projector verify`: proof that the read models are a function of the log, and that the log is what
//! was written.
//!
//! Read models ([`verify`]): a projection is rebuilt from the start of the log into a scratch schema
//! up to where the live one stands, and every table is compared with its live twin: a checksum each,
//! and the rows that only one side has. The comparison runs in one REPEATABLE READ transaction that
//! first reads the live checkpoint and brings the copies up to it, so the live tables it sees are
//! exactly those of that checkpoint while the live runner goes on meanwhile.
//!
//! The log ([`verify_log`]): every event stores a hash over its content and the previous event's hash
//! in its stream (`event_hash` in `schemas/migrations/0007_history.sql`). Walking each stream in version
//! order and recomputing them finds the first event whose content, hash or place in the chain does not
//! match, a version missing from a stream, and a stream whose recorded version is not its last event's.

use anyhow::Context;
use events::store::read_log;
use events::LogPosition;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{apply_batch, ensure_checkpoint, Projection, LIVE_SCHEMA};
use crate::scratch::{create_copies, fill, lock_rebuilds, Progress, Until, BATCH_SIZE};

/// How many differing rows a table report lists per side.
const ROWS_SHOWN: i64 = 20;

#[derive(Debug, Clone)]
pub struct TableReport {
    pub table: String,
    pub live_rows: i64,
    pub rebuilt_rows: i64,
    /// MD5 over the MD5s of the rows' text forms, in order.
    pub live_checksum: String,
    pub rebuilt_checksum: String,
    /// Rows (in PostgreSQL's row text form) only the live table has, and only the rebuilt one has.
    pub only_live: Vec<String>,
    pub only_rebuilt: Vec<String>,
}

impl TableReport {
    pub fn matches(&self) -> bool {
        self.live_checksum == self.rebuilt_checksum
    }
}

#[derive(Debug, Clone)]
pub struct ProjectionReport {
    pub projection: &'static str,
    /// The checkpoint both sides were compared at.
    pub position: LogPosition,
    pub tables: Vec<TableReport>,
}

impl ProjectionReport {
    pub fn matches(&self) -> bool {
        self.tables.iter().all(TableReport::matches)
    }
}

pub async fn verify(
    pool: &PgPool,
    projection: &dyn Projection,
    report: impl FnMut(Progress),
) -> anyhow::Result<ProjectionReport> {
    let name = projection.name();
    let scratch = format!("verify_{name}");
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    // A rebuild swapping tables under the comparison would compare the wrong ones.
    lock_rebuilds(&mut conn, name).await?;
    ensure_checkpoint(&mut conn, name).await?;
    let result = compare_with_rebuild(&mut conn, pool, projection, &scratch, report).await;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {scratch} CASCADE"))
        .execute(&mut conn)
        .await?;
    result
}

async fn compare_with_rebuild(
    conn: &mut PgConnection,
    pool: &PgPool,
    projection: &dyn Projection,
    scratch: &str,
    report: impl FnMut(Progress),
) -> anyhow::Result<ProjectionReport> {
    let name = projection.name();
    create_copies(conn, &[projection], scratch, true).await?;
    let started_at = checkpoint(&mut *conn, name).await?;
    fill(
        conn,
        pool,
        &[projection],
        scratch,
        Until::Position(started_at),
        report,
    )
    .await?;
    // The copies now hold every event up to `started_at`, a prefix of the log.
    let mut position = started_at;

    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let live_at = checkpoint(&mut *tx, name).await?;
    // Every event up to the live checkpoint is committed and visible in this snapshot.
    loop {
        let mut events = read_log(&mut *tx, position, BATCH_SIZE).await?;
        events.retain(|e| e.position() <= live_at);
        let Some(last) = events.last().map(|e| e.position()) else {
            break;
        };
        apply_batch(&mut tx, projection, scratch, &events).await?;
        position = last;
    }
    let mut tables = Vec::new();
    for table in projection.tables() {
        tables.push(
            compare_table(&mut tx, table, scratch)
                .await
                .with_context(|| format!("comparing {table}"))?,
        );
    }
    tx.rollback().await?;
    Ok(ProjectionReport {
        projection: name,
        position: live_at,
        tables,
    })
}

async fn checkpoint<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    name: &str,
) -> sqlx::Result<LogPosition> {
    let (transaction_id, global_position): (i64, i64) = sqlx::query_as(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(executor)
    .await?;
    Ok(LogPosition {
        transaction_id,
        global_position,
    })
}

async fn compare_table(
    conn: &mut PgConnection,
    table: &str,
    scratch: &str,
) -> anyhow::Result<TableReport> {
    // Table and schema names are the projector's own identifiers.
    let live = format!("{LIVE_SCHEMA}.{table}");
    let rebuilt = format!("{scratch}.{table}");
    let summary = |relation: &str| {
        format!(
            "SELECT count(*), COALESCE(md5(string_agg(h, '' ORDER BY h)), md5('')) \
             FROM (SELECT md5(r::text) AS h FROM {relation} r) rows"
        )
    };
    let (live_rows, live_checksum): (i64, String) = sqlx::query_as(&summary(&live))
        .fetch_one(&mut *conn)
        .await?;
    let (rebuilt_rows, rebuilt_checksum): (i64, String) = sqlx::query_as(&summary(&rebuilt))
        .fetch_one(&mut *conn)
        .await?;
    let only = |first: &str, second: &str| {
        format!(
            "SELECT r::text FROM {first} r EXCEPT ALL SELECT r::text FROM {second} r ORDER BY 1 LIMIT {ROWS_SHOWN}"
        )
    };
    let (mut only_live, mut only_rebuilt) = (Vec::new(), Vec::new());
    if live_checksum != rebuilt_checksum {
        only_live = sqlx::query_scalar(&only(&live, &rebuilt))
            .fetch_all(&mut *conn)
            .await?;
        only_rebuilt = sqlx::query_scalar(&only(&rebuilt, &live))
            .fetch_all(&mut *conn)
            .await?;
    }
    Ok(TableReport {
        table: table.to_owned(),
        live_rows,
        rebuilt_rows,
        live_checksum,
        rebuilt_checksum,
        only_live,
        only_rebuilt,
    })
}

/// The first thing wrong with the log, in log order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogProblem {
    pub global_position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: uuid::Uuid,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct LogReport {
    pub events: i64,
    pub streams: i64,
    /// The problem with the lowest global position, if any.
    pub first_problem: Option<LogProblem>,
}

/// Streams are checked this many at a time, each chunk one statement.
const STREAMS_PER_CHUNK: i64 = 2_000;

/// Walks every stream, recomputing each event's hash from its stored content and its predecessor's
/// stored hash. `report` gets (streams checked, streams in all) as it goes.
pub async fn verify_log(
    pool: &PgPool,
    mut report: impl FnMut(i64, i64),
) -> anyhow::Result<LogReport> {
    let streams: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(pool)
        .await?;
    let mut checked = 0;
    let mut events = 0;
    let mut after = String::new();
    let mut first_problem: Option<LogProblem> = None;
    loop {
        let chunk: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(&after)
        .bind(STREAMS_PER_CHUNK)
        .fetch_all(pool)
        .await?;
        let Some(last) = chunk.last() else {
            break;
        };
        after = last.clone();
        let (counted, problem) = check_streams(pool, &chunk).await?;
        events += counted;
        if let Some(problem) = problem {
            if first_problem
                .as_ref()
                .is_none_or(|p| problem.global_position < p.global_position)
            {
                first_problem = Some(problem);
            }
        }
        checked += chunk.len() as i64;
        report(checked, streams);
    }
    // Events of a stream the streams table does not list at all.
    let orphan: Option<LogProblem> = sqlx::query_as(
        "SELECT e.global_position, e.stream_id, e.stream_version, e.event_id, \
                'its stream is missing from the streams table' AS problem \
         FROM events e WHERE NOT EXISTS (SELECT 1 FROM streams s WHERE s.stream_id = e.stream_id) \
         ORDER BY e.global_position LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(orphan) = orphan {
        if first_problem
            .as_ref()
            .is_none_or(|p| orphan.global_position < p.global_position)
        {
            first_problem = Some(orphan);
        }
    }
    Ok(LogReport {
        events,
        streams,
        first_problem,
    })
}

/// Checks the streams named, returning how many events they hold and their first problem.
async fn check_streams(
    pool: &PgPool,
    streams: &[String],
) -> anyhow::Result<(i64, Option<LogProblem>)> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = ANY($1)")
        .bind(streams)
        .fetch_one(pool)
        .await?;
    let problem: Option<LogProblem> = sqlx::query_as(
        "WITH chained AS ( \
             SELECT e.global_position, e.stream_id, e.stream_version, e.event_id, e.hash, \
                    event_hash(lag(e.hash) OVER w, e.global_position, e.stream_id, e.stream_version, e.event_id, \
                               e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at) AS expected, \
                    COALESCE(lag(e.stream_version) OVER w, 0) AS previous_version, \
                    lead(e.stream_version) OVER w IS NULL AS last_of_stream, s.version AS recorded_version \
             FROM events e JOIN streams s ON s.stream_id = e.stream_id \
             WHERE e.stream_id = ANY($1) \
             WINDOW w AS (PARTITION BY e.stream_id ORDER BY e.stream_version) \
         ) \
         SELECT global_position, stream_id, stream_version, event_id, \
                CASE WHEN previous_version <> stream_version - 1 \
                       THEN format('version %s is missing from the stream', previous_version + 1) \
                     WHEN hash <> expected \
                       THEN 'its content or its place in the chain does not match its hash' \
                     ELSE format('the stream ends at version %s but the streams table says %s', \
                                 stream_version, recorded_version) \
                END AS problem \
         FROM chained \
         WHERE previous_version <> stream_version - 1 OR hash <> expected \
            OR (last_of_stream AND recorded_version <> stream_version) \
         ORDER BY global_position LIMIT 1",
    )
    .bind(streams)
    .fetch_optional(pool)
    .await?;
    Ok((events, problem))
}
