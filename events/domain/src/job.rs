//! A long-running operator job (`job-<id>`): a rebuild, verification, replay, reconciliation of the
//! processed queue, or usage export, requested from the API (`POST /api/v1/admin/jobs`) or run by the
//! projector's command line, and run by the projector one at a time per kind.
//!
//! `pending → running → succeeded | failed | cancelled`; a pending job is cancelled at once, a running
//! one is asked to stop (`job.cancel_requested`) and its runner records `job.cancelled` when it has.
//! Progress is not recorded in the log (it changes every second); the runner keeps it beside the log.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};

/// The longest error a failed job records, in characters.
pub const MAX_ERROR_CHARS: usize = 2_000;

/// What a job does, with its arguments: the request body's `{kind, args}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "args", rename_all = "lowercase")]
pub enum JobSpec {
    /// Rebuild a projection (or `all`) from the start of the log and swap it in.
    Rebuild {
        #[serde(default = "all")]
        projection: String,
    },
    /// Rebuild projections into a scratch schema and compare them with the live ones, or (`log`)
    /// check every event's hash chain.
    Verify {
        #[serde(default = "all")]
        projection: String,
        #[serde(default)]
        log: bool,
    },
    /// Build every read model as of a point of the log into a new schema.
    #[serde(rename_all = "camelCase")]
    Replay { until: ReplayPoint, into: String },
    /// Compare the processed queue's bucket whole with its index.
    Reconcile {},
    /// Write the usage records matching `filters` into a file.
    Export {
        format: ExportFormat,
        #[serde(default)]
        filters: ExportFilters,
    },
}

fn all() -> String {
    "all".into()
}

/// Where a replay stops: a global position (as the audit trail shows them) or a time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReplayPoint {
    GlobalPosition(i64),
    Time(DateTime<Utc>),
}

impl std::str::FromStr for ReplayPoint {
    type Err = String;

    /// `replay --until`: a global position (an integer) or an RFC 3339 time.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if let Ok(position) = raw.parse::<i64>() {
            return Ok(ReplayPoint::GlobalPosition(position));
        }
        DateTime::parse_from_rfc3339(raw)
            .map(|at| ReplayPoint::Time(at.with_timezone(&Utc)))
            .map_err(|_| {
                format!("{raw:?} is neither a log position (an integer) nor an RFC 3339 time")
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// RFC 4180, with a header row; cells that a spreadsheet would read as a formula are escaped.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl ExportFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Ndjson => "ndjson",
        }
    }
}

/// Which finished executions a usage export holds: all of them, or those matching every filter.
/// `from` (inclusive) and `to` (exclusive) are UTC days of when an execution finished, as usage
/// reports take them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExportFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NaiveDate>,
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Rebuild { .. } => JobKind::Rebuild,
            JobSpec::Verify { .. } => JobKind::Verify,
            JobSpec::Replay { .. } => JobKind::Replay,
            JobSpec::Reconcile {} => JobKind::Reconcile,
            JobSpec::Export { .. } => JobKind::Export,
        }
    }

    /// Its arguments, as the request's `args`.
    pub fn args(&self) -> Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|spec| spec.get("args").cloned())
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// The spec, or why it is refused. `projections` are the names a rebuild or verification may
    /// take besides `all`.
    pub fn checked(self, projections: &[&str]) -> Result<JobSpec, DomainError> {
        let known = |name: &str| name == "all" || projections.contains(&name);
        match &self {
            JobSpec::Rebuild { projection } | JobSpec::Verify { projection, .. }
                if !known(projection) =>
            {
                return Err(DomainError::invalid(
                    "args.projection",
                    format!(
                        "{projection:?} is not a projection; one of all, {}",
                        projections.join(", ")
                    ),
                ))
            }
            JobSpec::Verify {
                projection,
                log: true,
            } if projection != "all" => {
                return Err(DomainError::invalid(
                    "args.log",
                    "checks the whole log; it takes no projection",
                ))
            }
            JobSpec::Replay { until, into } => {
                if matches!(until, ReplayPoint::GlobalPosition(p) if *p < 0) {
                    return Err(DomainError::invalid(
                        "args.until",
                        "a position is at least 0",
                    ));
                }
                check_schema_name(into)?;
            }
            JobSpec::Export { filters, .. } => {
                if let (Some(from), Some(to)) = (filters.from, filters.to) {
                    if from >= to {
                        return Err(DomainError::invalid(
                            "args.filters.from",
                            "must be before to (which is exclusive)",
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(self)
    }
}

/// Schemas the platform keeps for itself, which a replay may not be written into.
const RESERVED_SCHEMAS: &[&str] = &["public", "read_models", "information_schema"];

/// The prefixes of PostgreSQL's schemas and of the platform's scratch schemas.
const RESERVED_SCHEMA_PREFIXES: &[&str] = &["pg_", "rebuild_", "retired_", "verify_"];

/// A replay's schema: a lower-case SQL identifier that is none of the platform's own.
pub fn check_schema_name(name: &str) -> Result<(), DomainError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Err(DomainError::invalid(
            "args.into",
            "a schema name: lower-case letters, digits and underscores, starting with a letter, at most 63",
        ));
    }
    if RESERVED_SCHEMAS.contains(&name)
        || RESERVED_SCHEMA_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(DomainError::invalid(
            "args.into",
            format!("schema {name:?} is used by the system itself; choose another name"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Rebuild,
    Verify,
    Replay,
    Reconcile,
    Export,
}

impl JobSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Api => "api",
            JobSource::Cli => "cli",
        }
    }
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Rebuild,
        JobKind::Verify,
        JobKind::Replay,
        JobKind::Reconcile,
        JobKind::Export,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Rebuild => "rebuild",
            JobKind::Verify => "verify",
            JobKind::Replay => "replay",
            JobKind::Reconcile => "reconcile",
            JobKind::Export => "export",
        }
    }
}

/// Who asked for a job: an operator through the API, or the projector's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobSource {
    Api,
    Cli,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum JobEvent {
    #[serde(rename = "job.requested")]
    Requested {
        #[serde(flatten)]
        spec: JobSpec,
        source: JobSource,
    },
    /// A runner (`<host>/<process id>`) took the job.
    #[serde(rename = "job.started")]
    Started { runner: String },
    #[serde(rename = "job.cancel_requested")]
    CancelRequested {},
    /// `kind` repeats the request's, so that an outcome reads on its own (a schedule alert).
    #[serde(rename = "job.succeeded")]
    Succeeded { kind: JobKind, result: Value },
    #[serde(rename = "job.failed")]
    Failed { kind: JobKind, error: String },
    #[serde(rename = "job.cancelled")]
    Cancelled {},
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    Request { spec: JobSpec, source: JobSource },
    Start { runner: String },
    Cancel,
    Succeed { result: Value },
    Fail { error: String },
    ConfirmCancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub spec: Option<JobSpec>,
    pub source: Option<JobSource>,
    pub state: JobState,
    pub runner: Option<String>,
    pub cancel_requested: bool,
    pub requested_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl Aggregate for Job {
    const TYPE: &'static str = "job";
    type Event = JobEvent;
    type Command = JobCommand;

    fn apply(&mut self, event: &JobEvent, at: DateTime<Utc>) {
        match event {
            JobEvent::Requested { spec, source } => {
                self.spec = Some(spec.clone());
                self.source = Some(*source);
                self.requested_at = Some(at);
            }
            JobEvent::Started { runner } => {
                self.state = JobState::Running;
                self.runner = Some(runner.clone());
                self.started_at = Some(at);
            }
            JobEvent::CancelRequested {} => self.cancel_requested = true,
            JobEvent::Succeeded { result, .. } => {
                self.state = JobState::Succeeded;
                self.result = Some(result.clone());
                self.finished_at = Some(at);
            }
            JobEvent::Failed { error, .. } => {
                self.state = JobState::Failed;
                self.error = Some(error.clone());
                self.finished_at = Some(at);
            }
            JobEvent::Cancelled {} => {
                self.state = JobState::Cancelled;
                self.finished_at = Some(at);
            }
        }
    }

    fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, DomainError> {
        let Some(kind) = self.spec.as_ref().map(JobSpec::kind) else {
            return match command {
                JobCommand::Request { spec, source } => {
                    Ok(vec![JobEvent::Requested { spec, source }])
                }
                _ => Err(DomainError::NotFound),
            };
        };
        Ok(match command {
            JobCommand::Request { .. } => return Err(DomainError::AlreadyExists),
            JobCommand::Start { runner } if self.state == JobState::Pending => {
                vec![JobEvent::Started { runner }]
            }
            JobCommand::Cancel if self.state == JobState::Pending => vec![JobEvent::Cancelled {}],
            JobCommand::Cancel if self.state == JobState::Running => match self.cancel_requested {
                true => vec![],
                false => vec![JobEvent::CancelRequested {}],
            },
            JobCommand::Succeed { result } if self.state == JobState::Running => {
                vec![JobEvent::Succeeded { kind, result }]
            }
            JobCommand::Fail { error } if self.state == JobState::Running => {
                vec![JobEvent::Failed {
                    kind,
                    error: error.chars().take(MAX_ERROR_CHARS).collect(),
                }]
            }
            JobCommand::ConfirmCancelled if self.state == JobState::Running => {
                vec![JobEvent::Cancelled {}]
            }
            _ => {
                return Err(DomainError::Conflict {
                    error: "Job not in that state",
                    details: format!("the job is {}", self.state.as_str()),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given::given;

    fn requested() -> JobEvent {
        JobEvent::Requested {
            spec: JobSpec::Rebuild {
                projection: "all".into(),
            },
            source: JobSource::Api,
        }
    }

    fn started() -> JobEvent {
        JobEvent::Started {
            runner: "host/1".into(),
        }
    }

    #[test]
    fn a_pending_job_is_cancelled_at_once_and_a_running_one_is_asked_to_stop_once() {
        given::<Job>([requested()])
            .when(JobCommand::Cancel)
            .then([JobEvent::Cancelled {}]);
        given::<Job>([requested(), started()])
            .when(JobCommand::Cancel)
            .then([JobEvent::CancelRequested {}]);
        given::<Job>([requested(), started(), JobEvent::CancelRequested {}])
            .when(JobCommand::Cancel)
            .then([]);
    }

    #[test]
    fn a_job_starts_once_and_finishes_once() {
        given::<Job>([requested(), started()])
            .when(JobCommand::Start {
                runner: "other/2".into(),
            })
            .then_conflict();
        let done = JobEvent::Succeeded {
            kind: JobKind::Rebuild,
            result: Value::Null,
        };
        given::<Job>([requested(), started(), done.clone()])
            .when(JobCommand::Fail {
                error: "late".into(),
            })
            .then_conflict();
        given::<Job>([requested(), started(), done])
            .when(JobCommand::Cancel)
            .then_conflict();
        given::<Job>([requested()])
            .when(JobCommand::Succeed {
                result: Value::Null,
            })
            .then_conflict();
    }

    #[test]
    fn the_request_body_reads_as_a_spec_and_nonsense_is_refused_naming_the_field() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "kind": "export",
            "args": {"format": "csv", "filters": {"from": "2026-01-01"}}
        }))
        .unwrap();
        assert_eq!(spec.kind(), JobKind::Export);
        let event = JobEvent::Requested {
            spec: spec.clone(),
            source: JobSource::Api,
        };
        let stored = serde_json::to_value(&event).unwrap();
        assert_eq!(stored["data"]["kind"], "export");
        assert_eq!(stored["data"]["args"]["filters"]["from"], "2026-01-01");
        assert_eq!(stored["data"]["source"], "api");
        assert_eq!(serde_json::from_value::<JobEvent>(stored).unwrap(), event);
        let field = |spec: serde_json::Value| match serde_json::from_value::<JobSpec>(spec)
            .unwrap()
            .checked(&["tenants"])
        {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(
            field(serde_json::json!({"kind": "rebuild", "args": {"projection": "nope"}})),
            "args.projection"
        );
        assert_eq!(
            field(
                serde_json::json!({"kind": "replay", "args": {"until": 5, "into": "read_models"}})
            ),
            "args.into"
        );
        assert_eq!(
            field(serde_json::json!({"kind": "replay", "args": {"until": 5, "into": "x; drop"}})),
            "args.into"
        );
        assert_eq!(
            field(
                serde_json::json!({"kind": "export", "args": {"format": "csv",
                "filters": {"from": "2026-02-01", "to": "2026-01-01"}}})
            ),
            "args.filters.from"
        );
        assert!(serde_json::from_value::<JobSpec>(
            serde_json::json!({"kind": "replay", "args": {"until": "yesterday", "into": "a"}})
        )
        .is_err());
    }
}
