//! The feedback aggregate: one submission to the platform's triage queue (a user's report from
//! `POST /api/feedback`, or a probe the platform captured), its verdict (attack classes, signal
//! quality, the fingerprint its duplicates share, decided once by [`classify`] when it is
//! submitted), and its workflow: `open → triaged → in_progress → done → archived`, each move
//! recorded with who made it, when, a note and an optional assignee.

pub mod classify;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};
use classify::{ProbeGroup, Quality};

/// The longest message, in characters.
pub const MESSAGE_MAX: usize = 4000;
/// The longest category and page, in characters.
pub const LABEL_MAX: usize = 200;
/// The largest `metadata` object, as JSON bytes.
pub const METADATA_MAX: usize = 4096;
/// The longest transition note, in characters.
pub const NOTE_MAX: usize = 2000;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// 0 (low) to 3 (critical): what lists sort on.
    pub fn rank(self) -> i16 {
        self as i16
    }

    /// The least severity a submission carrying `groups` gets: high for injections that run code or
    /// queries (SQL, command, template), medium for script and path probes, low for fuzzing alone.
    pub fn of_probe(groups: &[ProbeGroup]) -> Option<Severity> {
        groups
            .iter()
            .map(|group| match group {
                ProbeGroup::Sql | ProbeGroup::Command | ProbeGroup::Template => Severity::High,
                ProbeGroup::Script | ProbeGroup::Path => Severity::Medium,
                ProbeGroup::Fuzz => Severity::Low,
            })
            .max()
    }
}

/// Who submitted it: a signed-in user, or the platform, recording a refused request that looked
/// like an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    User,
    Probe,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Probe => "probe",
        }
    }
}

/// Where a submission is in triage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriageState {
    Open,
    Triaged,
    InProgress,
    Done,
    Archived,
}

impl TriageState {
    pub const ALL: [TriageState; 5] = [
        TriageState::Open,
        TriageState::Triaged,
        TriageState::InProgress,
        TriageState::Done,
        TriageState::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriageState::Open => "open",
            TriageState::Triaged => "triaged",
            TriageState::InProgress => "in_progress",
            TriageState::Done => "done",
            TriageState::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<TriageState> {
        TriageState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The moves the workflow allows from this state. Forward one step at a time (a triaged item may
    /// be closed as done without work), back one step to correct a move, archived only once done,
    /// and an archived item may be reopened.
    pub fn next(self) -> &'static [TriageState] {
        use TriageState::*;
        match self {
            Open => &[Triaged],
            Triaged => &[InProgress, Done, Open],
            InProgress => &[Done, Triaged],
            Done => &[Archived, InProgress],
            Archived => &[Open],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum FeedbackEvent {
    #[serde(rename = "feedback.submitted")]
    Submitted {
        id: Uuid,
        /// `None` for probes of requests outside any organization.
        organization_id: Option<Uuid>,
        source: Source,
        message: String,
        category: Option<String>,
        severity: Severity,
        /// The page (user reports) or route (probes) it was submitted from.
        page: Option<String>,
        metadata: Option<Value>,
        groups: Vec<ProbeGroup>,
        quality: Quality,
        fingerprint: String,
    },
    #[serde(rename = "feedback.transitioned")]
    Transitioned {
        from: TriageState,
        to: TriageState,
        note: Option<String>,
        /// The operator it is assigned to from now on; `None` leaves the assignment as it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assignee_id: Option<Uuid>,
    },
}

/// A new submission, as the API received it (validated by [`Feedback::decide`]).
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub source: Source,
    pub message: String,
    pub category: Option<String>,
    /// `None`: medium for a user's report; a probe's classes may raise it ([`Severity::of_probe`]).
    pub severity: Option<Severity>,
    pub page: Option<String>,
    pub metadata: Option<Value>,
    /// Whether to look for attack classes (an operator may turn it off: `FEEDBACK_CLASSIFICATION`).
    /// Without, `groups` is empty; quality and fingerprint are still decided.
    pub classify: bool,
}

pub enum FeedbackCommand {
    Submit(Submission),
    Transition {
        to: TriageState,
        note: Option<String>,
        assignee_id: Option<Uuid>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackData {
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub source: Source,
    pub message: String,
    pub category: Option<String>,
    pub severity: Severity,
    pub page: Option<String>,
    pub metadata: Option<Value>,
    pub groups: Vec<ProbeGroup>,
    pub quality: Quality,
    pub fingerprint: String,
    pub state: TriageState,
    pub assignee_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub live: Option<FeedbackData>,
}

impl Aggregate for Feedback {
    const TYPE: &'static str = "feedback";
    type Event = FeedbackEvent;
    type Command = FeedbackCommand;

    fn apply(&mut self, event: &FeedbackEvent, at: DateTime<Utc>) {
        match event {
            FeedbackEvent::Submitted {
                id,
                organization_id,
                source,
                message,
                category,
                severity,
                page,
                metadata,
                groups,
                quality,
                fingerprint,
            } => {
                self.live = Some(FeedbackData {
                    id: *id,
                    organization_id: *organization_id,
                    source: *source,
                    message: message.clone(),
                    category: category.clone(),
                    severity: *severity,
                    page: page.clone(),
                    metadata: metadata.clone(),
                    groups: groups.clone(),
                    quality: *quality,
                    fingerprint: fingerprint.clone(),
                    state: TriageState::Open,
                    assignee_id: None,
                    created_at: at,
                    updated_at: at,
                })
            }
            FeedbackEvent::Transitioned {
                to, assignee_id, ..
            } => {
                if let Some(item) = &mut self.live {
                    item.state = *to;
                    if assignee_id.is_some() {
                        item.assignee_id = *assignee_id;
                    }
                    item.updated_at = at;
                }
            }
        }
    }

    fn decide(&self, command: FeedbackCommand) -> Result<Vec<FeedbackEvent>, DomainError> {
        match (command, &self.live) {
            (FeedbackCommand::Submit(submission), None) => Ok(vec![submitted(submission)?]),
            (FeedbackCommand::Submit(_), Some(_)) => Err(DomainError::AlreadyExists),
            (
                FeedbackCommand::Transition {
                    to,
                    note,
                    assignee_id,
                },
                Some(item),
            ) => {
                let note = optional_text("note", note, NOTE_MAX)?;
                if !item.state.next().contains(&to) {
                    let allowed: Vec<&str> = item.state.next().iter().map(|s| s.as_str()).collect();
                    return Err(DomainError::Conflict {
                        error: "Invalid transition",
                        details: format!(
                            "feedback {} is {} and can move only to {}",
                            item.id,
                            item.state.as_str(),
                            allowed.join(" or ")
                        ),
                    });
                }
                Ok(vec![FeedbackEvent::Transitioned {
                    from: item.state,
                    to,
                    note,
                    assignee_id,
                }])
            }
            (FeedbackCommand::Transition { .. }, None) => Err(DomainError::NotFound),
        }
    }
}

fn submitted(submission: Submission) -> Result<FeedbackEvent, DomainError> {
    let message = submission.message.trim().to_owned();
    if message.is_empty() {
        return Err(DomainError::invalid("message", "must not be empty"));
    }
    if message.chars().count() > MESSAGE_MAX {
        return Err(DomainError::invalid(
            "message",
            format!("must be at most {MESSAGE_MAX} characters"),
        ));
    }
    let category = optional_text("category", submission.category, LABEL_MAX)?;
    let page = optional_text("page", submission.page, LABEL_MAX)?;
    if let Some(metadata) = &submission.metadata {
        if !metadata.is_object() {
            return Err(DomainError::invalid("metadata", "must be a JSON object"));
        }
        if metadata.to_string().len() > METADATA_MAX {
            return Err(DomainError::invalid(
                "metadata",
                format!("must be at most {METADATA_MAX} bytes of JSON"),
            ));
        }
    }
    // Everything a submitter wrote is looked at, not only the message: a probe may hide in any field.
    let looked_at = [Some(message.as_str()), category.as_deref(), page.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    let mut groups = Vec::new();
    if submission.classify {
        groups = classify::classify(&looked_at);
    }
    if let Some(metadata) = submission.metadata.as_ref().filter(|_| submission.classify) {
        for group in classify::classify(&metadata.to_string()) {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        groups.sort();
    }
    let severity = submission
        .severity
        .unwrap_or(Severity::Medium)
        .max(Severity::of_probe(&groups).unwrap_or(Severity::Low));
    Ok(FeedbackEvent::Submitted {
        id: submission.id,
        organization_id: submission.organization_id,
        source: submission.source,
        quality: classify::quality(&message, &groups),
        fingerprint: classify::fingerprint(&message),
        message,
        category,
        severity,
        page,
        metadata: submission.metadata,
        groups,
    })
}

/// A trimmed optional text of at most `max` characters; empty is `None`.
fn optional_text(
    field: &str,
    text: Option<String>,
    max: usize,
) -> Result<Option<String>, DomainError> {
    let Some(text) = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given::given;

    fn submission(message: &str) -> Submission {
        Submission {
            id: Uuid::nil(),
            organization_id: Some(Uuid::max()),
            source: Source::User,
            message: message.into(),
            category: None,
            severity: None,
            page: None,
            metadata: None,
            classify: true,
        }
    }

    fn submitted_event(message: &str) -> FeedbackEvent {
        Feedback::default()
            .decide(FeedbackCommand::Submit(submission(message)))
            .unwrap()
            .remove(0)
    }

    fn moved(from: TriageState, to: TriageState) -> FeedbackEvent {
        FeedbackEvent::Transitioned {
            from,
            to,
            note: None,
            assignee_id: None,
        }
    }

    #[test]
    fn a_submission_is_classified_once_and_keeps_its_verdict() {
        let FeedbackEvent::Submitted {
            groups,
            quality,
            severity,
            ..
        } = submitted_event("' OR 1=1 --")
        else {
            panic!("a submission")
        };
        assert_eq!(groups, vec![ProbeGroup::Sql]);
        assert_eq!(quality, Quality::SecurityProbe);
        assert_eq!(severity, Severity::High);
        let FeedbackEvent::Submitted {
            groups, severity, ..
        } = submitted_event("  The save button is broken  ")
        else {
            panic!("a submission")
        };
        assert_eq!(groups, vec![]);
        assert_eq!(severity, Severity::Medium);
    }

    #[test]
    fn the_workflow_moves_one_step_at_a_time_and_refuses_the_rest() {
        use TriageState::*;
        let item = given::<Feedback>([submitted_event("Please add exports")]);
        item.when(FeedbackCommand::Transition {
            to: Triaged,
            note: Some("seen".into()),
            assignee_id: None,
        })
        .then([FeedbackEvent::Transitioned {
            from: Open,
            to: Triaged,
            note: Some("seen".into()),
            assignee_id: None,
        }]);
        for to in [Open, InProgress, Done, Archived] {
            item.when(FeedbackCommand::Transition {
                to,
                note: None,
                assignee_id: None,
            })
            .then_conflict();
        }
        let done = given::<Feedback>([
            submitted_event("Please add exports"),
            moved(Open, Triaged),
            moved(Triaged, Done),
        ]);
        assert_eq!(done.state.live.as_ref().unwrap().state, Done);
        done.when(FeedbackCommand::Transition {
            to: Archived,
            note: None,
            assignee_id: None,
        })
        .then([moved(Done, Archived)]);
    }

    #[test]
    fn every_move_the_workflow_allows_and_none_other() {
        use TriageState::*;
        let allowed = [
            (Open, Triaged),
            (Triaged, InProgress),
            (Triaged, Done),
            (Triaged, Open),
            (InProgress, Done),
            (InProgress, Triaged),
            (Done, Archived),
            (Done, InProgress),
            (Archived, Open),
        ];
        for from in TriageState::ALL {
            // Folding does not check moves, so any state can be set up directly.
            let item =
                given::<Feedback>([submitted_event("Please add exports"), moved(Open, from)]);
            for to in TriageState::ALL {
                let decided = item.state.decide(FeedbackCommand::Transition {
                    to,
                    note: None,
                    assignee_id: None,
                });
                assert_eq!(
                    decided.is_ok(),
                    allowed.contains(&(from, to)),
                    "{} -> {}: {decided:?}",
                    from.as_str(),
                    to.as_str()
                );
            }
        }
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let refused = |submission: Submission| {
            Feedback::default()
                .decide(FeedbackCommand::Submit(submission))
                .unwrap_err()
        };
        assert!(
            matches!(refused(submission("   ")), DomainError::Invalid { field, .. } if field == "message")
        );
        assert!(matches!(
            refused(submission(&"x".repeat(MESSAGE_MAX + 1))),
            DomainError::Invalid { field, .. } if field == "message"
        ));
        let mut with_metadata = submission("ok");
        with_metadata.metadata = Some(Value::from(3));
        assert!(
            matches!(refused(with_metadata), DomainError::Invalid { field, .. } if field == "metadata")
        );
    }
}
