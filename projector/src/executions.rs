//! The `executions` projection: one `read_models.executions` row per prompt-template execution (its
//! folded state, for `GET /api/executions/{id}` and a template's executions), and
//! `execution_totals`, the executions, failures, tokens and cost per organization, UTC day, environment,
//! model and currency, counted when an execution finishes, on the day it finished (when its cost was
//! incurred, the day budgets count it on); the same by month in `execution_totals_monthly`, so that a
//! report over whole months reads a thirtieth of the rows; and platform-wide per day and currency in
//! `execution_totals_platform`, for the platform's trend over time. It also keeps each model's latest
//! on-demand probe (`model_probes`, from `model_probe-<model id>` streams).
//!
//! A batch folds the executions it touches in memory with the aggregate's own `apply`, starting from
//! their stored rows, and writes them back with one statement per table. The totals are increments:
//! the runner applies a batch and moves the checkpoint in one transaction, so no batch counts twice.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::NaiveDate;
use contracts::read_models::EXECUTIONS;
use domain::aggregate::Aggregate;
use domain::execution::{Execution, ExecutionData, ExecutionEvent, Status};
use domain::model_probe::{ModelProbe, ModelProbeEvent};
use domain::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

pub struct Executions;

#[async_trait]
impl Projection for Executions {
    fn name(&self) -> &'static str {
        EXECUTIONS
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "executions",
            "execution_totals",
            "execution_totals_monthly",
            "execution_totals_platform",
            "model_probes",
        ]
    }

    fn handles(&self, stream_type: &str) -> bool {
        stream_type == Execution::TYPE || stream_type == ModelProbe::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let (probes, events): (Vec<&RecordedEvent>, Vec<&RecordedEvent>) = events
            .iter()
            .partition(|e| e.stream_id.starts_with("model_probe-"));
        record_probes(conn, &probes).await?;
        if events.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = events
            .iter()
            .filter(|e| e.stream_version > 1)
            .filter_map(|e| e.stream_id.strip_prefix("execution-")?.parse().ok())
            .collect();
        let stored: Vec<(Uuid, sqlx::types::Json<ExecutionData>)> =
            sqlx::query_as("SELECT id, data FROM executions WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?;
        let mut executions: HashMap<Uuid, Execution> = stored
            .into_iter()
            .map(|(id, data)| (id, Execution { live: Some(data.0) }))
            .collect();
        let mut totals: BTreeMap<(Uuid, NaiveDate, Uuid, Uuid, String), Totals> = BTreeMap::new();
        for event in events {
            let decoded: ExecutionEvent = event.decode().map_err(|e| {
                anyhow::anyhow!("event {} of {}: {e}", event.event_id, event.stream_id)
            })?;
            let id: Uuid = event.stream_id["execution-".len()..].parse()?;
            let execution = executions.entry(id).or_default();
            execution.apply(&decoded, event.recorded_at);
            let Some(live) = &execution.live else {
                continue;
            };
            if !matches!(decoded, ExecutionEvent::Requested { .. }) {
                let key = (
                    live.organization_id,
                    event.recorded_at.date_naive(),
                    live.environment_id,
                    live.model_id,
                    live.cost
                        .as_ref()
                        .map(|c| c.currency.clone())
                        .unwrap_or_default(),
                );
                totals.entry(key).or_default().count(live);
            }
        }
        let rows: Vec<&ExecutionData> = executions
            .values()
            .filter_map(|e| e.live.as_ref())
            .collect();
        sqlx::query(
            "INSERT INTO executions (id, organization_id, template_id, model_id, status, requested_at, data, environment_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[], $7::jsonb[], $8::uuid[]) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, data = EXCLUDED.data",
        )
        .bind(rows.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|d| d.organization_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|d| d.template_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|d| d.model_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|d| status_name(d.status)).collect::<Vec<_>>())
        .bind(rows.iter().map(|d| d.requested_at).collect::<Vec<_>>())
        .bind(rows.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?)
        .bind(rows.iter().map(|d| d.environment_id).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        if !totals.is_empty() {
            let (keys, totals): (Vec<_>, Vec<_>) = totals.into_iter().unzip();
            // The same sums by month (`execution_totals_monthly`), for reports over whole months, and
            // platform-wide by day (`execution_totals_platform`), for the platform's trend.
            sqlx::query(
                "WITH batch AS (SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::uuid[], $4::uuid[], $5::text[], \
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::numeric[]) \
                   AS b(organization_id, day, environment_id, model_id, currency, executions, failures, \
                        input_tokens, output_tokens, cost)), \
                 daily AS (INSERT INTO execution_totals (organization_id, day, environment_id, model_id, currency, \
                     executions, failures, input_tokens, output_tokens, cost) \
                   SELECT * FROM batch \
                   ON CONFLICT (organization_id, day, environment_id, model_id, currency) DO UPDATE SET \
                     executions = execution_totals.executions + EXCLUDED.executions, \
                     failures = execution_totals.failures + EXCLUDED.failures, \
                     input_tokens = execution_totals.input_tokens + EXCLUDED.input_tokens, \
                     output_tokens = execution_totals.output_tokens + EXCLUDED.output_tokens, \
                     cost = execution_totals.cost + EXCLUDED.cost), \
                 monthly AS (INSERT INTO execution_totals_monthly AS m (organization_id, month, environment_id, model_id, currency, \
                     executions, failures, input_tokens, output_tokens, cost) \
                 SELECT organization_id, date_trunc('month', day)::date, environment_id, model_id, currency, \
                   sum(executions), sum(failures), sum(input_tokens), sum(output_tokens), sum(cost) \
                 FROM batch GROUP BY 1, 2, 3, 4, 5 \
                 ON CONFLICT (organization_id, month, environment_id, model_id, currency) DO UPDATE SET \
                   executions = m.executions + EXCLUDED.executions, \
                   failures = m.failures + EXCLUDED.failures, \
                   input_tokens = m.input_tokens + EXCLUDED.input_tokens, \
                   output_tokens = m.output_tokens + EXCLUDED.output_tokens, \
                   cost = m.cost + EXCLUDED.cost) \
                 INSERT INTO execution_totals_platform AS p (day, currency, executions, failures, input_tokens, output_tokens, cost) \
                 SELECT day, currency, sum(executions), sum(failures), sum(input_tokens), sum(output_tokens), sum(cost) \
                 FROM batch GROUP BY 1, 2 \
                 ON CONFLICT (day, currency) DO UPDATE SET \
                   executions = p.executions + EXCLUDED.executions, \
                   failures = p.failures + EXCLUDED.failures, \
                   input_tokens = p.input_tokens + EXCLUDED.input_tokens, \
                   output_tokens = p.output_tokens + EXCLUDED.output_tokens, \
                   cost = p.cost + EXCLUDED.cost",
            )
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.3).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.4.clone()).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.executions).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.failures).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.input_tokens).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.output_tokens).collect::<Vec<_>>())
            // As text, so that PostgreSQL's numeric keeps the decimal the cost was rounded to.
            .bind(totals.iter().map(|t| format!("{:.10}", t.cost)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// Keeps each model's latest probe.
async fn record_probes(conn: &mut PgConnection, probes: &[&RecordedEvent]) -> anyhow::Result<()> {
    for event in probes {
        let model_id: Uuid = event.stream_id["model_probe-".len()..].parse()?;
        let ModelProbeEvent::Recorded(probe) = event.decode()?;
        sqlx::query(
            "INSERT INTO model_probes (model_id, organization_id, probed_at, ok, latency_ms, provider_status, error, probed_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (model_id) DO UPDATE SET organization_id = EXCLUDED.organization_id, \
               probed_at = EXCLUDED.probed_at, ok = EXCLUDED.ok, latency_ms = EXCLUDED.latency_ms, \
               provider_status = EXCLUDED.provider_status, error = EXCLUDED.error, probed_by = EXCLUDED.probed_by",
        )
        .bind(model_id)
        .bind(probe.organization_id)
        .bind(event.recorded_at)
        .bind(probe.ok)
        .bind(probe.latency_ms as i64)
        .bind(probe.provider_status.map(i32::from))
        .bind(probe.error)
        .bind(&event.metadata.actor.id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Running => "running",
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
    }
}

/// What finished executions add to one row of `execution_totals`.
#[derive(Default)]
struct Totals {
    executions: i64,
    failures: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost: f64,
}

impl Totals {
    fn count(&mut self, execution: &ExecutionData) {
        self.executions += 1;
        if execution.status == Status::Failed {
            self.failures += 1;
        }
        if let Some(usage) = execution.usage {
            self.input_tokens += usage.input_tokens as i64;
            self.output_tokens += usage.output_tokens as i64;
        }
        if let Some(cost) = &execution.cost {
            self.cost += cost.total;
        }
    }
}
