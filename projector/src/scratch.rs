//! Building read models from the log into a schema other than the live one: what `rebuild`, `verify`
//! and `replay` share. The copies are made `LIKE` the live tables, so their columns, constraints and
//! indexes are the live ones, and they are filled batch by batch, each batch its own short transaction,
//! while a reader on its own connection stays a couple of batches ahead (reading and decoding the log
//! overlaps with writing the tables).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use domain::job::ReplayPoint;
use domain::{LogPosition, RecordedEvent};
use event_log::read_log;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{apply_batch, Projection, LIVE_SCHEMA};

pub const BATCH_SIZE: i64 = 5_000;

/// Key of the advisory lock that keeps rebuilds and verifications of one projection apart.
pub const REBUILD_LOCK_CLASS: i32 = 0x5245_4200;

/// Holds `conn`'s session lock on rebuilding `projection` (until the connection closes).
pub async fn lock_rebuilds(conn: &mut PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(REBUILD_LOCK_CLASS)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

/// Which events of the log a build takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything committed.
    End,
    /// Every event up to this position in log order, inclusive (a checkpoint).
    Position(LogPosition),
    /// Every event at or below this global position (as the audit trail shows positions).
    GlobalPosition(i64),
    /// Every event recorded at or before this time (as `asOf` reads see the log).
    Time(DateTime<Utc>),
}

/// A replay's bound as a job records it.
impl From<ReplayPoint> for Until {
    fn from(point: ReplayPoint) -> Until {
        match point {
            ReplayPoint::GlobalPosition(position) => Until::GlobalPosition(position),
            ReplayPoint::Time(at) => Until::Time(at),
        }
    }
}

impl Until {
    pub fn includes(&self, event: &RecordedEvent) -> bool {
        match self {
            Until::End => true,
            Until::Position(position) => event.position() <= *position,
            Until::GlobalPosition(position) => event.global_position <= *position,
            Until::Time(at) => event.recorded_at <= *at,
        }
    }

    /// Whether no event after this one in log order can be included.
    fn passed(&self, event: &RecordedEvent) -> bool {
        matches!(self, Until::Position(position) if event.position() > *position)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events read from the log.
    pub read: u64,
    /// Events the bound took and the tables were given.
    pub applied: u64,
    /// Events in the log when the build started; more may arrive meanwhile.
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn events_per_second(&self) -> f64 {
        self.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Creates `schema` (dropping any earlier one of that name when `replace`) with empty copies of the
/// tables of `projections`. `schema` is one of the projector's own identifiers or one checked by
/// [`check_schema_name`], never raw input.
pub async fn create_copies(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    schema: &str,
    replace: bool,
) -> anyhow::Result<()> {
    let mut ddl = if replace {
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};")
    } else {
        format!("CREATE SCHEMA {schema};")
    };
    for table in projections.iter().flat_map(|p| p.tables()) {
        ddl +=
            &format!("CREATE TABLE {schema}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL);");
    }
    sqlx::raw_sql(&ddl)
        .execute(conn)
        .await
        .with_context(|| format!("creating the tables in schema {schema}"))?;
    Ok(())
}

/// Refuses a schema name that is not a plain lower-case identifier, or that names a schema the system
/// itself uses (the rule replay jobs are checked against when requested).
pub fn check_schema_name(schema: &str) -> anyhow::Result<()> {
    domain::job::check_schema_name(schema).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Vacuums and analyzes the copies in `schema`: freshly filled tables have no planner statistics and
/// no visibility map, and would be read with poor plans until autovacuum reached them.
pub async fn analyze_copies(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    schema: &str,
) -> anyhow::Result<()> {
    for table in projections.iter().flat_map(|p| p.tables()) {
        sqlx::raw_sql(&format!("VACUUM (ANALYZE) {schema}.{table}"))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("analyzing {schema}.{table}"))?;
    }
    Ok(())
}

/// Applies the events `until` takes, from the start of the log up to its end as it is now, to the
/// copies in `schema`. Returns the position of the last event read: a live build continues after it.
pub async fn fill(
    conn: &mut PgConnection,
    pool: &PgPool,
    projections: &[&dyn Projection],
    schema: &str,
    until: Until,
    mut report: impl FnMut(Progress),
) -> anyhow::Result<(LogPosition, Progress)> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let started = Instant::now();
    let mut progress = Progress {
        read: 0,
        applied: 0,
        total: total as u64,
        elapsed: Duration::ZERO,
    };
    let mut position = LogPosition::START;
    let mut last_report = Instant::now();
    let (batches, mut ahead) = tokio::sync::mpsc::channel::<Vec<RecordedEvent>>(2);
    let reader = tokio::spawn(read_ahead(pool.clone(), until, batches));
    while let Some(mut events) = ahead.recv().await {
        position = events.last().map_or(position, RecordedEvent::position);
        progress.read += events.len() as u64;
        events.retain(|e| until.includes(e));
        if !events.is_empty() {
            let mut tx = conn.begin().await?;
            for projection in projections {
                apply_batch(&mut tx, *projection, schema, &events).await?;
            }
            tx.commit().await?;
            progress.applied += events.len() as u64;
        }
        progress.elapsed = started.elapsed();
        if last_report.elapsed() >= Duration::from_secs(1) {
            report(progress);
            last_report = Instant::now();
        }
    }
    reader.await.context("the log reader panicked")??;
    progress.elapsed = started.elapsed();
    Ok((position, progress))
}

/// Reads the log from the start in batches and hands them over until it reaches the end or passes
/// `until` (or the receiving side stops).
async fn read_ahead(
    pool: PgPool,
    until: Until,
    batches: tokio::sync::mpsc::Sender<Vec<RecordedEvent>>,
) -> anyhow::Result<()> {
    let mut position = LogPosition::START;
    loop {
        let events = read_log(&pool, position, BATCH_SIZE).await?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        position = last.position();
        let done = (events.len() as i64) < BATCH_SIZE || until.passed(last);
        if batches.send(events).await.is_err() || done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_bounds_parse_and_schema_names_are_checked() {
        let parse = |raw: &str| raw.parse::<ReplayPoint>().map(Until::from);
        assert_eq!(parse("42").unwrap(), Until::GlobalPosition(42));
        assert!(matches!(
            parse("2026-11-30T12:00:00Z").unwrap(),
            Until::Time(_)
        ));
        assert!(parse("yesterday").is_err());
        assert!(check_schema_name("audit_2026_q3").is_ok());
        for bad in [
            "read_models",
            "public",
            "pg_x",
            "rebuild_catalog",
            "Audit",
            "a;drop",
            "",
            "9lives",
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
