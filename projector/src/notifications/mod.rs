//! The `notifications` projection: the operator surface's platform alerts, derived from the event log
//! so that a rebuild derives them again, with what operators did about them (`notification-<id>`
//! streams: acknowledged, resolved).
//!
//! Its causes:
//! - message events: prompt executions that failed (not those the client cancelled), gathered per
//!   organization, failure reason and UTC hour, so an outage is one alert with a count rather than a
//!   flood; high severity but for rate limits and refused addresses (medium); and processed messages
//!   the workflow runtime filed as failed (`processed_failures`, found by the processed queue's
//!   indexer), gathered per organization and UTC hour with their count, high severity;
//! - usage events ([`usage`]): an organization's spend this month reaching a threshold of its budget,
//!   once per threshold and month; high severity from the whole budget on, medium below;
//! - schedule events: an operator job (`job-<id>`: rebuild, verify, replay, reconcile, export) that
//!   succeeded (low severity) or failed (high), one alert per job. A cancelled job raises none: an
//!   operator cancelled it.
//!
//! A new occurrence after the alert was resolved makes it unread again; an acknowledged one stays
//! acknowledged.

mod usage;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, Utc};
use contracts::read_models::NOTIFICATIONS;
use domain::aggregate::Aggregate;
use domain::budget::Budget;
use domain::execution::{Execution, ExecutionEvent, FailureReason};
use domain::job::{Job, JobEvent};
use domain::notification::{Notification, NotificationEvent};
use domain::processed_failures::{ProcessedFailures, ProcessedFailuresEvent};
use domain::RecordedEvent;
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;
use usage::UsageWatch;

/// The ids of alerts: UUID v5 of their key (`<kind>/<organization>/<cause>/<hour>`) in this namespace.
pub const ALERTS: Uuid = Uuid::from_u128(0x0193_7a1e_5c00_7000_8000_616c_6572_7473);

/// The longest last message an alert's summary quotes, in characters.
const QUOTED: usize = 300;

pub struct Notifications;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Alert {
    id: Uuid,
    kind: String,
    severity: i16,
    organization_id: Option<Uuid>,
    subject: String,
    summary: String,
    source: Json<Value>,
    occurrences: i64,
    occurred_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    state: String,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
}

/// One occurrence of an alert's cause.
struct Occurrence {
    id: Uuid,
    kind: &'static str,
    severity: i16,
    organization_id: Option<Uuid>,
    subject: String,
    cause: Cause,
    /// What the summary says of this occurrence (the latest one's is kept).
    detail: String,
    /// How many of the cause it stands for (failed messages found at once), usually 1.
    count: i64,
    source: Value,
}

/// What kind of cause an alert has, which decides how its summary reads.
enum Cause {
    /// Failures counted over the alert's hour.
    ExecutionFailures,
    /// Failed processed messages counted over the alert's hour.
    MessageFailures,
    /// A threshold reached, or a job ended: once.
    Once,
}

/// The alert `event` is an occurrence of, if any.
fn occurrence(event: &RecordedEvent) -> anyhow::Result<Option<Occurrence>> {
    if let Some(execution) = event.stream_id.strip_prefix("execution-") {
        return execution_failure(event, execution);
    }
    if let Some(job) = event.stream_id.strip_prefix("job-") {
        return job_outcome(event, job);
    }
    if event.stream_id.starts_with("processed_failures-") {
        return failed_messages(event).map(Some);
    }
    Ok(None)
}

/// Failed processed messages the indexer found.
fn failed_messages(event: &RecordedEvent) -> anyhow::Result<Occurrence> {
    let ProcessedFailuresEvent::Found {
        environment_id,
        count,
        keys,
    } = event.decode()?;
    let organization_id = event.metadata.organization_id;
    let hour = event
        .recorded_at
        .duration_trunc(chrono::Duration::hours(1))?;
    let key = format!(
        "message/{}/processed_failure/{}",
        organization_id.map_or_else(String::new, |o| o.to_string()),
        hour.to_rfc3339()
    );
    Ok(Occurrence {
        id: Uuid::new_v5(&ALERTS, key.as_bytes()),
        kind: "message",
        severity: 2,
        organization_id,
        subject: "Processed messages failing".into(),
        cause: Cause::MessageFailures,
        detail: keys.last().cloned().unwrap_or_default(),
        count: count as i64,
        source: json!({
            "type": "processed_failures.found",
            "environmentId": environment_id,
            "keys": keys,
        }),
    })
}

/// A job's success or failure.
fn job_outcome(event: &RecordedEvent, job: &str) -> anyhow::Result<Option<Occurrence>> {
    let (severity, kind, outcome, detail) = match event.decode::<JobEvent>()? {
        JobEvent::Succeeded { kind, result } => (0, kind, "succeeded", result.to_string()),
        JobEvent::Failed { kind, error } => (2, kind, "failed", error),
        _ => return Ok(None),
    };
    Ok(Some(Occurrence {
        id: Uuid::new_v5(&ALERTS, format!("schedule/{job}").as_bytes()),
        kind: "schedule",
        severity,
        organization_id: None,
        subject: format!("Job {outcome}: {}", kind.as_str()),
        cause: Cause::Once,
        detail: detail.chars().take(QUOTED).collect(),
        count: 1,
        source: json!({ "type": format!("job.{outcome}"), "jobId": job, "jobKind": kind }),
    }))
}

/// A failed prompt execution.
fn execution_failure(event: &RecordedEvent, execution: &str) -> anyhow::Result<Option<Occurrence>> {
    let ExecutionEvent::Failed {
        reason,
        message,
        provider_status,
        ..
    } = event.decode::<ExecutionEvent>()?
    else {
        return Ok(None);
    };
    let severity = match reason {
        FailureReason::Cancelled => return Ok(None),
        FailureReason::RateLimited | FailureReason::AddressRefused => 1,
        _ => 2,
    };
    let cause = serde_json::to_value(reason)?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let organization_id = event.metadata.organization_id;
    let hour = event
        .recorded_at
        .duration_trunc(chrono::Duration::hours(1))?;
    let key = format!(
        "message/{}/{cause}/{}",
        organization_id.map_or_else(String::new, |o| o.to_string()),
        hour.to_rfc3339()
    );
    Ok(Some(Occurrence {
        id: Uuid::new_v5(&ALERTS, key.as_bytes()),
        kind: "message",
        severity,
        organization_id,
        subject: "Prompt executions failing".into(),
        cause: Cause::ExecutionFailures,
        detail: message.chars().take(QUOTED).collect(),
        count: 1,
        source: json!({
            "type": "execution.failed",
            "reason": cause,
            "lastExecutionId": execution,
            "providerStatus": provider_status,
        }),
    }))
}

impl Alert {
    fn new(occurrence: &Occurrence, at: DateTime<Utc>) -> Alert {
        Alert {
            id: occurrence.id,
            kind: occurrence.kind.into(),
            severity: occurrence.severity,
            organization_id: occurrence.organization_id,
            subject: occurrence.subject.clone(),
            summary: String::new(),
            source: Json(occurrence.source.clone()),
            occurrences: 0,
            occurred_at: at,
            last_at: at,
            state: "unread".into(),
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_by: None,
            resolved_at: None,
        }
    }

    fn occur(&mut self, occurrence: Occurrence, at: DateTime<Utc>) {
        self.occurrences += occurrence.count;
        self.last_at = self.last_at.max(at);
        self.source = Json(occurrence.source);
        self.summary = match occurrence.cause {
            Cause::ExecutionFailures => format!(
                "{} since {} UTC; the last: {}",
                match self.occurrences {
                    1 => "1 failure".to_owned(),
                    n => format!("{n} failures"),
                },
                self.occurred_at.format("%H:%M"),
                occurrence.detail
            ),
            Cause::MessageFailures => format!(
                "{} since {} UTC; the last: {}",
                match self.occurrences {
                    1 => "1 failed message".to_owned(),
                    n => format!("{n} failed messages"),
                },
                self.occurred_at.format("%H:%M"),
                occurrence.detail
            ),
            Cause::Once => occurrence.detail,
        };
        if self.state == "resolved" {
            self.state = "unread".into();
        }
    }
}

#[async_trait]
impl Projection for Notifications {
    fn name(&self) -> &'static str {
        NOTIFICATIONS
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "notifications",
            "notification_budgets",
            "notification_spend",
        ]
    }

    fn handles(&self, stream_type: &str) -> bool {
        stream_type == Execution::TYPE
            || stream_type == Notification::TYPE
            || stream_type == Budget::TYPE
            || stream_type == Job::TYPE
            || stream_type == ProcessedFailures::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut usage = UsageWatch::load(conn, events).await?;
        let mut changes = Vec::new();
        for event in events {
            for occurrence in usage.observe(event)? {
                changes.push((event, Change::Occurred(occurrence)));
            }
            if let Some(occurrence) = occurrence(event)? {
                changes.push((event, Change::Occurred(occurrence)));
            } else if let Some(id) = event.stream_id.strip_prefix("notification-") {
                let decided: NotificationEvent = event.decode()?;
                changes.push((event, Change::Handled(id.parse()?, decided)));
            }
        }
        usage.save(conn).await?;
        if changes.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = changes.iter().map(|(_, change)| change.id()).collect();
        let stored: Vec<Alert> = sqlx::query_as("SELECT * FROM notifications WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        let mut alerts: HashMap<Uuid, Alert> = stored.into_iter().map(|a| (a.id, a)).collect();
        for (event, change) in changes {
            let at = event.recorded_at;
            match change {
                Change::Occurred(occurrence) => alerts
                    .entry(occurrence.id)
                    .or_insert_with(|| Alert::new(&occurrence, at))
                    .occur(occurrence, at),
                Change::Handled(id, decided) => {
                    // Operators act on alerts they see, so the alert is there; a stream for one
                    // that is not is ignored.
                    let Some(alert) = alerts.get_mut(&id) else {
                        continue;
                    };
                    let by = Some(event.metadata.actor.id.clone());
                    match decided {
                        NotificationEvent::Acknowledged {} => {
                            if alert.state == "unread" {
                                alert.state = "acknowledged".into();
                            }
                            alert.acknowledged_by = by;
                            alert.acknowledged_at = Some(at);
                        }
                        NotificationEvent::Resolved {} => {
                            alert.state = "resolved".into();
                            alert.resolved_by = by;
                            alert.resolved_at = Some(at);
                        }
                    }
                }
            }
        }
        write(conn, alerts.into_values().collect()).await
    }
}

enum Change {
    Occurred(Occurrence),
    Handled(Uuid, NotificationEvent),
}

impl Change {
    fn id(&self) -> Uuid {
        match self {
            Change::Occurred(occurrence) => occurrence.id,
            Change::Handled(id, _) => *id,
        }
    }
}

async fn write(conn: &mut PgConnection, alerts: Vec<Alert>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO notifications \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::smallint[], $4::uuid[], $5::text[], $6::text[], \
                              $7::jsonb[], $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
                              $12::text[], $13::timestamptz[], $14::text[], $15::timestamptz[]) \
         ON CONFLICT (id) DO UPDATE SET summary = EXCLUDED.summary, source = EXCLUDED.source, \
           occurrences = EXCLUDED.occurrences, last_at = EXCLUDED.last_at, state = EXCLUDED.state, \
           acknowledged_by = EXCLUDED.acknowledged_by, acknowledged_at = EXCLUDED.acknowledged_at, \
           resolved_by = EXCLUDED.resolved_by, resolved_at = EXCLUDED.resolved_at",
    )
    .bind(alerts.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.kind.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.severity).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.organization_id).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.subject.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.summary.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.source.0.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.occurrences).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.occurred_at).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.last_at).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.state.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.acknowledged_by.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.acknowledged_at).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.resolved_by.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.resolved_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
