//! (m) Usage reports over `--usage-executions` executions: the sums the `executions` projection keeps
//! (`execution_totals` per organization, UTC day, environment, model and currency, and
//! `execution_totals_monthly`) written straight into the read models for 500 organizations with two
//! environments and two models each, active every day of the last year; then `GET /api/v1/admin/usage`
//! from 8 clients for the reports operators run, each beside the same report aggregated straight from
//! the per-organization sums (daily, or monthly over whole months) by PostgreSQL from 8 connections. The
//! platform-wide reports over time read the platform's daily sums (`execution_totals_platform`)
//! instead, so for them the ratio is what that rollup saves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Months, Utc};
use sqlx::PgPool;
use tests::TestApp;
use uuid::Uuid;

use super::{measure, pages_latency, Measured};

const ORGANIZATIONS: i64 = 500;
const DAYS: i64 = 365;

pub async fn run(app: &TestApp, executions: i64, requests: usize) -> anyhow::Result<()> {
    let pool = &app.db.pool;
    // Rows of (organization, day, environment, model), each with `base` to `2 * base - 1` executions.
    let rows = ORGANIZATIONS * DAYS * 4;
    let base = (executions * 2 / (rows * 3)).max(1);
    let organization: Uuid = sqlx::query_scalar(
        "WITH orgs AS (SELECT gen_random_uuid() AS id, gen_random_uuid() AS e1, gen_random_uuid() AS e2, \
                              gen_random_uuid() AS m1, gen_random_uuid() AS m2 FROM generate_series(1, $1)), \
         inserted AS (INSERT INTO read_models.execution_totals \
             (organization_id, day, environment_id, model_id, currency, executions, failures, input_tokens, output_tokens, cost) \
           SELECT o.id, current_date - d::int, e, m, 'USD', n, n / 20, n * 420, n * 180, n * 0.0029 \
           FROM orgs o, generate_series(0, $2 - 1) d, LATERAL (VALUES (o.e1), (o.e2)) envs(e), \
                LATERAL (VALUES (o.m1), (o.m2)) models(m), \
                LATERAL (SELECT $3 + (hashtext(o.id::text || d || e::text || m::text) & 2147483647) % $3 AS n) c) \
         SELECT id FROM orgs LIMIT 1",
    )
    .bind(ORGANIZATIONS)
    .bind(DAYS)
    .bind(base)
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.execution_totals_monthly \
         SELECT organization_id, date_trunc('month', day)::date, environment_id, model_id, currency, \
                sum(executions), sum(failures), sum(input_tokens), sum(output_tokens), sum(cost) \
         FROM read_models.execution_totals GROUP BY 1, 2, 3, 4, 5",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.execution_totals_platform \
         SELECT day, currency, sum(executions), sum(failures), sum(input_tokens), sum(output_tokens), sum(cost) \
         FROM read_models.execution_totals GROUP BY 1, 2",
    )
    .execute(pool)
    .await?;
    for statement in [
        "VACUUM (ANALYZE) read_models.execution_totals",
        "VACUUM (ANALYZE) read_models.execution_totals_monthly",
        "VACUUM (ANALYZE) read_models.execution_totals_platform",
        "CHECKPOINT",
    ] {
        sqlx::raw_sql(statement).execute(pool).await?;
    }
    let (total, rows): (i64, i64) =
        sqlx::query_as("SELECT sum(executions)::int8, count(*) FROM read_models.execution_totals")
            .fetch_one(pool)
            .await?;

    let today = Utc::now().date_naive();
    let this_month = today.with_day(1).expect("the first of a month exists");
    let year_ago = this_month - Months::new(11);
    let month_ago = today - chrono::Days::new(30);
    let reports: [(String, String, String); 5] = [
        (
            "one organization, 12 months by month".into(),
            format!("organizationId={organization}&from={year_ago}&groupBy=month"),
            format!(
                "SELECT to_char(month, 'YYYY-MM'), currency, n, c FROM (SELECT month, currency, sum(executions) n, sum(cost) c \
                 FROM read_models.execution_totals_monthly \
                 WHERE organization_id = '{organization}' AND month >= '{year_ago}' GROUP BY 1, 2) g"
            ),
        ),
        (
            "one organization, 30 days by day".into(),
            format!("organizationId={organization}&from={month_ago}&groupBy=day"),
            format!(
                "SELECT day::text, currency, n, c FROM (SELECT day, currency, sum(executions) n, sum(cost) c \
                 FROM read_models.execution_totals \
                 WHERE organization_id = '{organization}' AND day >= '{month_ago}' GROUP BY 1, 2) g"
            ),
        ),
        (
            "all organizations, this month by organization".into(),
            format!("from={this_month}&groupBy=organization"),
            format!(
                "SELECT organization_id::text, currency, n, c FROM (SELECT organization_id, currency, sum(executions) n, sum(cost) c \
                 FROM read_models.execution_totals_monthly WHERE month >= '{this_month}' GROUP BY 1, 2) g"
            ),
        ),
        (
            "all organizations, all time by month".into(),
            "groupBy=month".into(),
            "SELECT to_char(month, 'YYYY-MM'), currency, n, c FROM (SELECT month, currency, sum(executions) n, sum(cost) c \
             FROM read_models.execution_totals_monthly GROUP BY 1, 2) g"
                .into(),
        ),
        (
            "all organizations, 30 days by day".into(),
            format!("from={month_ago}&groupBy=day"),
            format!(
                "SELECT day::text, currency, n, c FROM (SELECT day, currency, sum(executions) n, sum(cost) c \
                 FROM read_models.execution_totals WHERE day >= '{month_ago}' GROUP BY 1, 2) g"
            ),
        ),
    ];
    println!(
        "(m) usage over {total} executions ({rows} daily sums of {ORGANIZATIONS} organizations over {DAYS} days), 8 clients each:"
    );
    for (name, query, sql) in reports {
        let api = pages_latency(
            app,
            format!("{}/api/v1/admin/usage?{query}", app.query_url),
            1,
            requests,
        )
        .await?;
        let raw = raw_latency(pool, &sql, requests).await?;
        println!(
            "    {name}: p50 {:.2} ms, p99 {:.2} ms{}; raw aggregate p50 {:.2} ms, p99 {:.2} ms; p99 ratio {:.2} (target p99 < 50 ms)",
            api.p50,
            api.p99,
            api.cpu_text(),
            raw.p50,
            raw.p99,
            api.p99 / raw.p99
        );
    }
    Ok(())
}

/// `sql` sent `requests` times from 8 connections.
async fn raw_latency(pool: &PgPool, sql: &str, requests: usize) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (pool, next, sql) = (pool.clone(), next.clone(), sql.to_owned());
            tokio::spawn(async move {
                let mut latencies: Vec<Duration> = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let t = Instant::now();
                    if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                        latencies.push(t.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let errors = requests.saturating_sub(latencies.len());
    Ok(measure(latencies, started.elapsed(), errors))
}
