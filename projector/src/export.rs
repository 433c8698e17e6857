//! Usage exports: the finished executions an export's filters select, one record each (what usage
//! reports sum), written as CSV (RFC 4180: CRLF line ends, fields quoted when they hold a comma, a
//! quote or a line break, quotes doubled; a text cell a spreadsheet would take for a formula, one
//! starting with `=`, `+`, `-`, `@`, a tab or a carriage return, is prefixed with `'`) or NDJSON.
//!
//! The rows are streamed from `read_models.executions` in id order and the file is written into
//! `export_files` part by part (about [`PART_BYTES`] each), so neither side holds the file in memory;
//! query-api serves the parts back in order.

use chrono::{DateTime, Utc};
use domain::job::{ExportFilters, ExportFormat};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The size a part is written at.
pub const PART_BYTES: usize = 1 << 20;

/// Progress is reported every this many rows.
const ROWS_PER_REPORT: u64 = 50_000;

/// One finished execution, as an export holds it.
#[derive(Debug, sqlx::FromRow, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    pub execution_id: Uuid,
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub template_id: Uuid,
    pub template_version: i64,
    pub model_id: Uuid,
    pub provider: String,
    pub provider_model: String,
    pub purpose: String,
    pub status: String,
    pub failure_reason: Option<String>,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub currency: Option<String>,
    /// As recorded (a decimal, not a float), so sums match the usage reports exactly.
    pub cost: Option<String>,
    pub latency_ms: Option<i64>,
}

/// The CSV header: [`UsageRecord`]'s fields, in order.
pub const CSV_HEADER: &str = "executionId,organizationId,environmentId,templateId,templateVersion,modelId,provider,providerModel,purpose,status,failureReason,requestedBy,requestedAt,finishedAt,inputTokens,outputTokens,currency,cost,latencyMs\r\n";

/// The executions `filters` select, and the record columns; `$1`…`$5` are the filters.
const SELECTED: &str = "FROM read_models.executions \
     WHERE status <> 'running' \
       AND ($1::uuid IS NULL OR organization_id = $1) \
       AND ($2::uuid IS NULL OR environment_id = $2) \
       AND ($3::uuid IS NULL OR model_id = $3) \
       AND ($4::date IS NULL OR (data->>'finishedAt')::timestamptz >= ($4::date)::timestamp AT TIME ZONE 'UTC') \
       AND ($5::date IS NULL OR (data->>'finishedAt')::timestamptz < ($5::date)::timestamp AT TIME ZONE 'UTC')";

const RECORD_COLUMNS: &str = "id AS execution_id, organization_id, environment_id, template_id, \
     (data->>'templateVersion')::bigint AS template_version, model_id, data->>'provider' AS provider, \
     data->>'providerModel' AS provider_model, data->>'purpose' AS purpose, status, \
     data->'failure'->>'reason' AS failure_reason, data->>'requestedBy' AS requested_by, requested_at, \
     (data->>'finishedAt')::timestamptz AS finished_at, \
     coalesce((data->'usage'->>'inputTokens')::bigint, 0) AS input_tokens, \
     coalesce((data->'usage'->>'outputTokens')::bigint, 0) AS output_tokens, \
     data->'cost'->>'currency' AS currency, data->'cost'->>'total' AS cost, \
     (data->>'latencyMs')::bigint AS latency_ms";

/// The query an export runs: also what the benchmark copies raw.
pub fn records_query() -> String {
    format!("SELECT {RECORD_COLUMNS} {SELECTED} ORDER BY id")
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub parts: i32,
}

/// Writes the export `job` into `export_files`, reporting `(rows written, rows in all)` as it goes.
/// Parts already written by an earlier attempt of the same job are replaced.
pub async fn write(
    pool: &PgPool,
    job: Uuid,
    format: ExportFormat,
    filters: &ExportFilters,
    mut report: impl FnMut(u64, u64),
) -> anyhow::Result<Written> {
    discard(pool, job).await?;
    let mut conn = pool.acquire().await?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) {SELECTED}"))
        .bind(filters.organization_id)
        .bind(filters.environment_id)
        .bind(filters.model_id)
        .bind(filters.from)
        .bind(filters.to)
        .fetch_one(&mut *conn)
        .await?;
    let total = total as u64;
    report(0, total);
    let query = records_query();
    let mut rows = sqlx::query_as::<_, UsageRecord>(&query)
        .bind(filters.organization_id)
        .bind(filters.environment_id)
        .bind(filters.model_id)
        .bind(filters.from)
        .bind(filters.to)
        .fetch(&mut *conn);
    let mut file = PartWriter::new(pool, job);
    if format == ExportFormat::Csv {
        file.buffer.extend_from_slice(CSV_HEADER.as_bytes());
    }
    let mut written = 0u64;
    while let Some(record) = rows.try_next().await? {
        match format {
            ExportFormat::Csv => record.write_csv(&mut file.buffer),
            ExportFormat::Ndjson => {
                serde_json::to_writer(&mut file.buffer, &record)?;
                file.buffer.push(b'\n');
            }
        }
        written += 1;
        if file.buffer.len() >= PART_BYTES {
            file.flush().await?;
        }
        if written.is_multiple_of(ROWS_PER_REPORT) {
            report(written, total.max(written));
        }
    }
    drop(rows);
    file.flush().await?;
    report(written, written);
    Ok(Written {
        rows: written,
        bytes: file.bytes,
        parts: file.parts,
    })
}

/// Deletes what an export of `job` wrote (a failed, cancelled or interrupted one).
pub async fn discard(pool: &PgPool, job: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM export_files WHERE job_id = $1")
        .bind(job)
        .execute(pool)
        .await?;
    Ok(())
}

/// The result a finished export records on its job.
pub fn result(format: ExportFormat, written: Written) -> serde_json::Value {
    json!({
        "format": format,
        "rows": written.rows,
        "bytes": written.bytes,
        "parts": written.parts,
    })
}

struct PartWriter<'a> {
    pool: &'a PgPool,
    job: Uuid,
    buffer: Vec<u8>,
    parts: i32,
    bytes: u64,
}

impl<'a> PartWriter<'a> {
    fn new(pool: &'a PgPool, job: Uuid) -> Self {
        PartWriter {
            pool,
            job,
            buffer: Vec::with_capacity(PART_BYTES + 4096),
            parts: 0,
            bytes: 0,
        }
    }

    async fn flush(&mut self) -> sqlx::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO export_files (job_id, part, data) VALUES ($1, $2, $3)")
            .bind(self.job)
            .bind(self.parts)
            .bind(&self.buffer)
            .execute(self.pool)
            .await?;
        self.parts += 1;
        self.bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl UsageRecord {
    fn write_csv(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        // Ids, times and numbers cannot start a formula; every text cell goes through `text_cell`.
        let _ = write!(
            out,
            "{},{},{},{},{},{},",
            self.execution_id,
            self.organization_id,
            self.environment_id,
            self.template_id,
            self.template_version,
            self.model_id
        );
        for text in [
            &self.provider,
            &self.provider_model,
            &self.purpose,
            &self.status,
            &opt(&self.failure_reason),
            &self.requested_by,
        ] {
            text_cell(out, text);
            out.push(b',');
        }
        let _ = write!(
            out,
            "{},{},{},{},",
            self.requested_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.input_tokens,
            self.output_tokens
        );
        text_cell(out, &opt(&self.currency));
        out.push(b',');
        text_cell(out, &opt(&self.cost));
        out.push(b',');
        if let Some(latency) = self.latency_ms {
            let _ = write!(out, "{latency}");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes one text cell: formula-neutralised, then quoted as RFC 4180 asks.
pub fn text_cell(out: &mut Vec<u8>, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = value.contains(['"', ',', '\r', '\n']);
    if quoted {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quoted {
        out.extend_from_slice(value.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::text_cell;

    fn cell(value: &str) -> String {
        let mut out = Vec::new();
        text_cell(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cells_are_quoted_as_rfc_4180_asks_and_formulas_are_neutralised() {
        assert_eq!(cell("gpt-4o"), "gpt-4o");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tcmd"), "'\tcmd");
        assert_eq!(cell(""), "");
    }
}
