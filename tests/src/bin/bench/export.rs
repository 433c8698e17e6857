//! (n) Usage exports: `--export-executions` finished executions written straight into
//! `read_models.executions` (as the `executions` projection keeps them), then the export job's work
//! (`projector::export::write`: every record streamed in id order, written as CSV into `export_files`
//! part by part) against a raw `COPY … TO STDOUT (FORMAT csv)` of the same records by the same query,
//! read to the end by the client. Reported as rows per second and their ratio (target ≥ 0.5), and the
//! file's download through query-api (`GET /api/v1/admin/usage/exports/{id}/file`) as MB/s.

use std::time::Instant;

use domain::job::{ExportFilters, ExportFormat};
use futures::StreamExt;
use tests::TestApp;
use uuid::Uuid;

pub async fn run(app: &TestApp, executions: i64) -> anyhow::Result<()> {
    let pool = &app.db.pool;
    sqlx::query(
        "INSERT INTO read_models.executions (id, organization_id, template_id, model_id, status, requested_at, data, environment_id) \
         SELECT id, org, tpl, model, status, at, jsonb_build_object( \
             'id', id, 'organizationId', org, 'environmentId', env, 'templateId', tpl, 'templateVersion', 3, \
             'modelId', model, 'modelKind', 'model', 'provider', 'openai', 'providerModel', 'gpt-4o-mini', \
             'renderedPrompt', 'Hello Ann', 'parameters', '{}'::jsonb, 'purpose', 'execution', 'streamed', false, \
             'status', status, 'output', 'Hi', 'usage', jsonb_build_object('inputTokens', 420, 'outputTokens', 180, 'totalTokens', 600), \
             'cost', jsonb_build_object('currency', 'USD', 'input', 0.00105, 'output', 0.0018, 'total', 0.00285), \
             'latencyMs', 800 + g % 400, 'failure', CASE WHEN status = 'failed' \
               THEN jsonb_build_object('reason', 'provider_error', 'message', 'upstream 500') END, \
             'requestedBy', requested_by, 'requestedAt', at, 'finishedAt', at + interval '1 second'), env \
         FROM (SELECT g, ('01000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid AS id, \
                 ('00000000-0000-7000-8000-' || lpad(to_hex(g % 500), 12, '0'))::uuid AS org, \
                 ('00000000-0000-7000-9000-' || lpad(to_hex(g % 1000), 12, '0'))::uuid AS env, \
                 ('00000000-0000-7000-a000-' || lpad(to_hex(g % 2000), 12, '0'))::uuid AS tpl, \
                 ('00000000-0000-7000-b000-' || lpad(to_hex(g % 1000), 12, '0'))::uuid AS model, \
                 CASE WHEN g % 20 = 0 THEN 'failed' ELSE 'succeeded' END AS status, \
                 now() - (g || ' seconds')::interval AS at, \
                 ('00000000-0000-7000-c000-' || lpad(to_hex(g % 5000), 12, '0')) AS requested_by \
               FROM generate_series(1, $1) g) s",
    )
    .bind(executions)
    .execute(pool)
    .await?;
    for statement in ["VACUUM (ANALYZE) read_models.executions", "CHECKPOINT"] {
        sqlx::raw_sql(statement).execute(pool).await?;
    }

    // Raw: the same query, copied out as CSV and read to the end.
    let copy = format!(
        "COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)",
        projector::export::records_query()
            .replace("$1", "NULL")
            .replace("$2", "NULL")
            .replace("$3", "NULL")
            .replace("$4", "NULL")
            .replace("$5", "NULL")
    );
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copied = conn.copy_out_raw(&copy).await?;
    let mut copied_bytes = 0usize;
    let mut copied_rows = 0usize;
    while let Some(chunk) = copied.next().await {
        let chunk = chunk?;
        copied_bytes += chunk.len();
        copied_rows += chunk.iter().filter(|b| **b == b'\n').count();
    }
    drop(copied);
    drop(conn);
    let raw_seconds = started.elapsed().as_secs_f64();
    let raw_rows = copied_rows.saturating_sub(1);

    let job = Uuid::now_v7();
    let started = Instant::now();
    let written = projector::export::write(
        pool,
        job,
        ExportFormat::Csv,
        &ExportFilters::default(),
        |_, _| {},
    )
    .await?;
    let export_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        written.rows as usize == raw_rows,
        "the export wrote {} rows, COPY {raw_rows}",
        written.rows
    );
    let raw_rate = raw_rows as f64 / raw_seconds;
    let export_rate = written.rows as f64 / export_seconds;
    println!(
        "(n) usage export of {} executions: export {:.0} rows/s ({:.1} MB in {:.2} s, {} parts); raw COPY {:.0} rows/s ({:.1} MB in {:.2} s); ratio {:.2} (target >= 0.5)",
        written.rows,
        export_rate,
        written.bytes as f64 / 1e6,
        export_seconds,
        written.parts,
        raw_rate,
        copied_bytes as f64 / 1e6,
        raw_seconds,
        export_rate / raw_rate
    );
    Ok(())
}
