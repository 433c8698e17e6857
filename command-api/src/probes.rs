//! The probe intake: turns the refused requests recorded as attack probes (`security_refusals` rows of
//! kind `probe`, `http_layer::security`) into triage reports, `feedback.submitted` events with the
//! source `probe`, one per minute, source and caller, so that the operators triage them with the
//! rest of the queue (where the duplicate and burst groups collect repeated ones).
//!
//! Each report's id is derived from its row, so a row reported again (by two processes, or after a
//! crash before the row was marked) finds its report's stream already there: it is then only marked. The report carries the redacted excerpt, never the request's body.

use std::time::Duration;

use chrono::{DateTime, Utc};
use commands::{Caller, Executor, Outcome, WriteSet};
use domain::feedback::{Feedback, FeedbackCommand, Source, Submission, MESSAGE_MAX};
use domain::{Actor, ActorRef, Aggregate, EventMetadata};
use http_layer::ApiError;
use serde_json::{json, Value};
use uuid::Uuid;

/// The ids of probe reports: UUID v5 of their row's key in this namespace.
const REPORTS: Uuid = Uuid::from_u128(0x0193_7a1e_5c00_7000_8000_7072_6f62_6573);
const BATCH: i64 = 100;

#[derive(sqlx::FromRow)]
struct Probe {
    minute: DateTime<Utc>,
    source: String,
    actor_id: String,
    count: i64,
    first_at: DateTime<Utc>,
    sample: Value,
}

/// Reports new probes every `interval`, for as long as the runtime runs.
pub async fn run(executor: Executor, interval: Duration) {
    loop {
        match report_new(&executor).await {
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "probe intake failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Reports the probes not reported yet, oldest first; how many it reported.
pub async fn report_new(executor: &Executor) -> anyhow::Result<usize> {
    let probes: Vec<Probe> = sqlx::query_as(
        "SELECT minute, source, actor_id, count, first_at, sample FROM security_refusals \
         WHERE kind = 'probe' AND NOT reported ORDER BY first_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(executor.pool())
    .await?;
    let platform = Actor {
        user_id: Uuid::nil(),
        system: true,
        memberships: Default::default(),
    };
    for probe in &probes {
        let key = format!(
            "{}/{}/{}",
            probe.minute.to_rfc3339(),
            probe.source,
            probe.actor_id
        );
        let id = Uuid::new_v5(&REPORTS, key.as_bytes());
        let caller = Caller {
            actor: &platform,
            idempotency: None,
        };
        let appended = executor
            .run(caller, || report(executor, probe, id, &key))
            .await;
        match appended {
            Ok(_) => {}
            // Reported already, by another process or before a crash: the stream exists.
            Err(ApiError::Conflict { .. }) => {}
            Err(error) => return Err(anyhow::anyhow!("reporting probe {key}: {error}")),
        }
        sqlx::query(
            "UPDATE security_refusals SET reported = true \
             WHERE minute = $1 AND kind = 'probe' AND source = $2 AND actor_id = $3",
        )
        .bind(probe.minute)
        .bind(&probe.source)
        .bind(&probe.actor_id)
        .execute(executor.pool())
        .await?;
    }
    Ok(probes.len())
}

/// The report of `probe` as report `id`; refused (`409`) when that report exists already.
async fn report(
    executor: &Executor,
    probe: &Probe,
    id: Uuid,
    key: &str,
) -> Result<Outcome, ApiError> {
    let text = |name: &str| probe.sample[name].as_str().unwrap_or("").to_owned();
    let route = text("route");
    let groups: Vec<&str> = probe.sample["groups"]
        .as_array()
        .map(|groups| groups.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let message: String = format!(
        "Probe ({}) refused on {} {}: {}",
        groups.join(", "),
        text("method"),
        route,
        text("excerpt")
    )
    .chars()
    .take(MESSAGE_MAX)
    .collect();
    let known = |value: &str| (!value.is_empty() && value != "*").then(|| value.to_owned());
    let metadata = EventMetadata {
        actor: ActorRef {
            id: known(&probe.actor_id).unwrap_or_else(|| "anonymous".into()),
            role: None,
        },
        organization_id: None,
        request_id: format!("probe-intake:{key}"),
        correlation_id: format!("probe-intake:{key}"),
        causation_id: None,
        client_ip: known(&probe.source),
        user_agent: probe.sample["userAgent"].as_str().map(str::to_owned),
        channel: None,
    };
    let mut item = executor.load::<Feedback>(id).await?;
    let expected = item.version;
    let events = item.state.decide(FeedbackCommand::Submit(Submission {
        id,
        organization_id: None,
        source: Source::Probe,
        message,
        category: Some("security_probe".into()),
        severity: None,
        page: Some(route.chars().take(domain::feedback::LABEL_MAX).collect()),
        metadata: Some(json!({
            "requests": probe.count,
            "firstAt": probe.first_at,
            "status": probe.sample["status"],
            "reason": probe.sample["reason"],
            "groups": groups,
        })),
        classify: true,
    }))?;
    let events = item.record(events, &metadata, Utc::now());
    let write = WriteSet::append(&Feedback::stream_id(id), expected, events);
    Ok(Outcome::new(201, json!({ "id": id }), write.version_after()).appending(write, None))
}
