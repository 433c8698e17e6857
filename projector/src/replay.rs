//! `projector replay --until <time|position> --into <schema>`: every read model as it was at a point
//! of the log, built into a schema of its own that auditors can query with plain SQL while the live
//! system runs. The live tables, checkpoints and runners are never touched: replay only reads the log.
//!
//! Read models hold no write-only values (only which ones are set), so neither does a replay. The
//! schema also gets a one-row table `replay` saying what it holds.

use sqlx::{Connection, PgConnection, PgPool};

use crate::projections;
use crate::scratch::{analyze_copies, check_schema_name, create_copies, fill, Progress, Until};

pub async fn replay(
    pool: &PgPool,
    until: Until,
    schema: &str,
    report: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    check_schema_name(schema)?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        !exists,
        "schema {schema} exists already; drop it or choose another name"
    );
    let all = projections();
    let chosen: Vec<_> = all.iter().map(|p| p.as_ref()).collect();
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    create_copies(&mut conn, &chosen, schema, false).await?;
    let (_, progress) = fill(&mut conn, pool, &chosen, schema, until, report).await?;
    analyze_copies(&mut conn, &chosen, schema).await?;
    let described = match until {
        Until::End => "the end of the log".to_owned(),
        Until::Position(position) => format!("log position {position}"),
        Until::GlobalPosition(position) => format!("global position {position}"),
        Until::Time(at) => at.to_rfc3339(),
    };
    sqlx::raw_sql(&format!(
        "CREATE TABLE {schema}.replay (until text NOT NULL, events bigint NOT NULL, built_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(&mut conn)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.replay (until, events) VALUES ($1, $2)"
    ))
    .bind(described)
    .bind(progress.applied as i64)
    .execute(&mut conn)
    .await?;
    Ok(progress)
}
