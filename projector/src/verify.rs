//! `projector verify`: proof that the read models are a function of the log, and that the log is what
//! was written.
//!
//! Read models ([`verify`]): a projection is rebuilt from the start of the log into a scratch schema
//! up to where the live one stands, and every table is compared with its live twin: a checksum each,
//! and the rows that only one side has.
//!
//! The live side is read in one `REPEATABLE READ READ ONLY` transaction, which first reads the live
//! checkpoint: the live tables it sees are exactly those of that checkpoint, while the live runner goes
//! on meanwhile. That transaction never writes, so it is never given a transaction id, and the log
//! readers (which take only events older than the oldest transaction id in flight, see
//! `events::store`) are not held back by it however long the comparison takes. The copies are brought
//! to that same checkpoint on another connection, in short transactions of their own. Each table is
//! then compared by streaming both sides ordered by their rows' hashes and merging the two streams
//! here, so neither side's rows are held in memory.
//!
//! The log ([`verify_log`]): every event stores a hash over its content and the previous event's hash
//! in its stream (`event_hash` in `schemas/migrations/0007_history.sql`). Walking each stream in version
//! order and recomputing them finds the first event whose content, hash or place in the chain does not
//! match, a version missing from a stream, and a stream whose recorded version is not its last event's.

use std::cmp::Ordering;

use anyhow::Context;
use domain::{LogPosition, RecordedEvent};
use event_log::read_log;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{apply_batch, ensure_checkpoint, Projection, LIVE_SCHEMA};
use crate::scratch::{create_copies, fill, lock_rebuilds, Progress, Until, BATCH_SIZE};

/// How many differing rows a table report lists per side.
const ROWS_SHOWN: usize = 20;

/// A comparison reports its progress every this many rows (of both sides together).
const ROWS_PER_REPORT: u64 = 50_000;

#[derive(Debug, Clone)]
pub struct TableReport {
    pub table: String,
    pub live_rows: i64,
    pub rebuilt_rows: i64,
    /// SHA-256 (hex) over the MD5s (hex) of the rows' text forms, in the order of those MD5s: equal
    /// for two tables holding the same rows, however they are stored.
    pub live_checksum: String,
    pub rebuilt_checksum: String,
    /// Rows (in PostgreSQL's row text form) only the live table has, and only the rebuilt one has, in
    /// the order of their MD5s; at most 20 each.
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

/// How far a verification has got.
#[derive(Debug, Clone, Copy)]
pub enum VerifyProgress {
    /// Rebuilding the projection into the scratch schema.
    Building(Progress),
    /// Comparing `table` with its live twin: `rows` rows of both sides taken so far. Reported with 0
    /// when the table's comparison starts, then every 50 000 rows.
    Comparing { table: &'static str, rows: u64 },
}

pub async fn verify(
    pool: &PgPool,
    projection: &dyn Projection,
    report: impl FnMut(VerifyProgress),
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
    mut report: impl FnMut(VerifyProgress),
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
        |p| report(VerifyProgress::Building(p)),
    )
    .await?;
    // The copies now hold every event up to `started_at`, a prefix of the log.

    // Read only, so that it never gets a transaction id: see the module docs.
    let mut live = PgConnection::connect_with(&pool.connect_options()).await?;
    let mut tx = live.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let live_at = checkpoint(&mut *tx, name).await?;
    catch_up(conn, projection, scratch, started_at, live_at).await?;
    // The copies are now exactly at `live_at` and nothing writes them any more: their rows are read on
    // `conn`, outside any transaction, beside the live rows read in `tx`.
    let mut tables = Vec::new();
    for &table in projection.tables() {
        report(VerifyProgress::Comparing { table, rows: 0 });
        tables.push(
            compare_table(&mut tx, conn, table, scratch, &mut report)
                .await
                .with_context(|| format!("comparing {table}"))?,
        );
    }
    tx.rollback().await?;
    live.close().await?;
    Ok(ProjectionReport {
        projection: name,
        position: live_at,
        tables,
    })
}

/// Applies the events after `from` up to and including `to` to the copies in `scratch`, each batch in
/// a short transaction of its own. Every one of them is committed and readable: the live checkpoint
/// `to` was reached by reading them.
async fn catch_up(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    scratch: &str,
    from: LogPosition,
    to: LogPosition,
) -> anyhow::Result<()> {
    let mut position = from;
    loop {
        let mut events = read_log(&mut *conn, position, BATCH_SIZE).await?;
        events.retain(|e| e.position() <= to);
        let Some(last) = events.last().map(RecordedEvent::position) else {
            return Ok(());
        };
        let mut tx = conn.begin().await?;
        apply_batch(&mut tx, projection, scratch, &events).await?;
        tx.commit().await?;
        position = last;
    }
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

/// One side of a table comparison: its rows as (MD5, text) in that order, the row taken next, and
/// what the rows taken so far add up to.
struct Side<'c> {
    rows: BoxStream<'c, sqlx::Result<(String, String)>>,
    next: Option<(String, String)>,
    count: i64,
    checksum: Sha256,
    only: Vec<String>,
}

impl<'c> Side<'c> {
    async fn open(conn: &'c mut PgConnection, query: &'c str) -> sqlx::Result<Side<'c>> {
        let mut rows = sqlx::query_as(query).fetch(conn);
        let next = rows.try_next().await?;
        Ok(Side {
            rows,
            next,
            count: 0,
            checksum: Sha256::new(),
            only: Vec::new(),
        })
    }

    /// Counts the row taken next, keeping its text if `only_here` (the other side lacks it), and
    /// moves on to the following one.
    async fn take(&mut self, only_here: bool) -> sqlx::Result<()> {
        if let Some((hash, text)) = self.next.take() {
            self.count += 1;
            self.checksum.update(hash.as_bytes());
            if only_here && self.only.len() < ROWS_SHOWN {
                self.only.push(text);
            }
        }
        self.next = self.rows.try_next().await?;
        Ok(())
    }

    fn checksum(self) -> String {
        format!("{:x}", self.checksum.finalize())
    }
}

/// Compares the live `table`, read in `live`, with its rebuilt copy in `scratch`, read on `rebuilt`.
async fn compare_table(
    live: &mut PgConnection,
    rebuilt: &mut PgConnection,
    table: &'static str,
    scratch: &str,
    report: &mut impl FnMut(VerifyProgress),
) -> anyhow::Result<TableReport> {
    // Table and schema names are the projector's own identifiers. The "C" collation orders the
    // hashes and texts bytewise, as the merge below compares them.
    let rows = |relation: &str| {
        format!(
            "SELECT md5(r::text) COLLATE \"C\" AS h, r::text COLLATE \"C\" AS t \
             FROM {relation} r ORDER BY h, t"
        )
    };
    let (live_query, rebuilt_query) = (
        rows(&format!("{LIVE_SCHEMA}.{table}")),
        rows(&format!("{scratch}.{table}")),
    );
    let mut live = Side::open(live, &live_query).await?;
    let mut rebuilt = Side::open(rebuilt, &rebuilt_query).await?;
    // A merge of the two sorted streams: equal rows are taken from both sides at once, any other is
    // one that only its side has (as many times as it has it more).
    let mut taken = 0;
    loop {
        let order = match (&live.next, &rebuilt.next) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => l.cmp(r),
        };
        match order {
            Ordering::Less => live.take(true).await?,
            Ordering::Greater => rebuilt.take(true).await?,
            Ordering::Equal => {
                live.take(false).await?;
                rebuilt.take(false).await?;
            }
        }
        let before = taken;
        taken += if order == Ordering::Equal { 2 } else { 1 };
        if taken / ROWS_PER_REPORT > before / ROWS_PER_REPORT {
            report(VerifyProgress::Comparing { table, rows: taken });
        }
    }
    Ok(TableReport {
        table: table.to_owned(),
        live_rows: live.count,
        rebuilt_rows: rebuilt.count,
        only_live: std::mem::take(&mut live.only),
        only_rebuilt: std::mem::take(&mut rebuilt.only),
        live_checksum: live.checksum(),
        rebuilt_checksum: rebuilt.checksum(),
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
