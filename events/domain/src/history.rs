//! Resources' history: which resource an event is about (what the audit index files it under), any
//! stream's state folded from its events whatever its aggregate, and the field-by-field changes one
//! event made, with write-only values shown as [`REDACTED`] and erased personal data as [`ERASED`].
//!
//! An event's changes are the difference between the state folded up to the event before and the
//! state after it, with the aggregates' own `apply`, so the audit trail cannot disagree with what the
//! write side decided. The `audit` projection computes them once, when it indexes the event, keeping
//! each stream's state between batches in the form [`StreamState::to_stored`] gives.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::budget::Budget;
use crate::catalog::kinds::{self, by_type_name};
use crate::catalog::{Change, DocumentState, KindInfo, SEALED_VALUES};
use crate::environment::Environment;
use crate::execution::Execution;
use crate::feedback::Feedback;
use crate::job::Job;
use crate::members::Members;
use crate::model_probe::ModelProbe;
use crate::notification::Notification;
use crate::organization::Organization;
use crate::personal::{self, ERASED};
use crate::processed_failures::ProcessedFailures;
use crate::processed_queue::ProcessedQueue;
use crate::user::User;
use crate::RecordedEvent;

/// What the audit trail shows instead of a write-only value.
pub const REDACTED: &str = "[redacted]";

/// The resource type of a membership, whose events live in its organization's `members` stream.
pub const MEMBER: &str = "member";

/// The resource type of a processed message, whose deletions live in its organization's
/// `processed_queue` stream.
pub const PROCESSED_MESSAGE: &str = "processed_message";

/// Every resource type the audit trail files events under.
pub fn resource_types() -> Vec<&'static str> {
    let mut types = vec![
        Organization::TYPE,
        Environment::TYPE,
        User::TYPE,
        MEMBER,
        Execution::TYPE,
        PROCESSED_MESSAGE,
        Feedback::TYPE,
        Notification::TYPE,
        Budget::TYPE,
        Job::TYPE,
        ModelProbe::TYPE,
        ProcessedFailures::TYPE,
    ];
    types.extend(kinds::ALL.iter().map(|kind| kind.type_name));
    types
}

/// The resource an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub resource_type: String,
    pub resource_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
}

/// A stream is `<type>-<id>` and about that resource, except an organization's `members` stream,
/// whose events are each about one membership (the `userId` they carry), and its `processed_queue`
/// stream, whose events are each about one message (the `id` they carry). The organization is the
/// one the event recorded in its metadata (none for users and platform-wide resources).
pub fn subject(event: &RecordedEvent) -> Subject {
    let (stream_type, stream_key) = event
        .stream_id
        .split_once('-')
        .unwrap_or((event.stream_id.as_str(), ""));
    let organization_id = event.metadata.organization_id;
    if stream_type == Members::TYPE {
        return Subject {
            resource_type: MEMBER.into(),
            resource_id: member_of(event),
            organization_id: organization_id.or_else(|| stream_key.parse().ok()),
        };
    }
    if stream_type == ProcessedQueue::TYPE {
        return Subject {
            resource_type: PROCESSED_MESSAGE.into(),
            resource_id: message_of(event),
            organization_id: organization_id.or_else(|| stream_key.parse().ok()),
        };
    }
    Subject {
        resource_type: stream_type.into(),
        resource_id: stream_key.parse().ok(),
        organization_id,
    }
}

fn member_of(event: &RecordedEvent) -> Option<Uuid> {
    event.data.get("userId")?.as_str()?.parse().ok()
}

fn message_of(event: &RecordedEvent) -> Option<Uuid> {
    event.data.get("id")?.as_str()?.parse().ok()
}

/// What an event's changes are folded from: its stream, except in a members stream, where each
/// membership is folded on its own (`members-<organization>/<user>`), since its events change only
/// the membership they name and its audited fields are that membership's alone; and likewise each
/// message of a `processed_queue` stream (`processed_queue-<organization>/<message id>`). Either way
/// the key starts with the stream's type, which is all [`StreamState::for_stream`] reads.
pub fn fold_key(event: &RecordedEvent) -> String {
    let stream_type = event.stream_id.split_once('-').map(|(t, _)| t);
    let about = match stream_type {
        Some(Members::TYPE) => member_of(event),
        Some(ProcessedQueue::TYPE) => message_of(event),
        _ => None,
    };
    match about {
        Some(id) => format!("{}/{id}", event.stream_id),
        None => event.stream_id.clone(),
    }
}

/// A stream's state, whatever its aggregate.
#[derive(Debug, Clone)]
pub enum StreamState {
    Organization(Organization),
    Environment(Environment),
    User(User),
    Members(Members),
    /// Boxed: an execution's state is much larger than the other states.
    Execution(Box<Execution>),
    ProcessedQueue(ProcessedQueue),
    Feedback(Box<Feedback>),
    Notification(Notification),
    Budget(Budget),
    Job(Job),
    ModelProbe(ModelProbe),
    ProcessedFailures(ProcessedFailures),
    Document(&'static KindInfo, DocumentState),
}

#[derive(Debug, thiserror::Error)]
#[error("event {event_id} of {stream}: {reason}")]
pub struct FoldError {
    pub stream: String,
    pub event_id: Uuid,
    pub reason: String,
}

impl StreamState {
    /// The empty state of a stream, from its id (or a [`fold_key`]); `None` for a type this system does
    /// not know.
    pub fn for_stream(stream_id: &str) -> Option<StreamState> {
        let (stream_type, _) = stream_id.split_once('-')?;
        Some(match stream_type {
            Organization::TYPE => StreamState::Organization(Organization::default()),
            Environment::TYPE => StreamState::Environment(Environment::default()),
            User::TYPE => StreamState::User(User::default()),
            Members::TYPE => StreamState::Members(Members::default()),
            Execution::TYPE => StreamState::Execution(Box::default()),
            ProcessedQueue::TYPE => StreamState::ProcessedQueue(ProcessedQueue::default()),
            Feedback::TYPE => StreamState::Feedback(Box::default()),
            Notification::TYPE => StreamState::Notification(Notification::default()),
            Budget::TYPE => StreamState::Budget(Budget::default()),
            Job::TYPE => StreamState::Job(Job::default()),
            ModelProbe::TYPE => StreamState::ModelProbe(ModelProbe::default()),
            ProcessedFailures::TYPE => StreamState::ProcessedFailures(ProcessedFailures::default()),
            other => StreamState::Document(by_type_name(other)?, DocumentState::default()),
        })
    }

    /// The state as the aggregate serialises it, to be kept between batches. It holds no write-only
    /// value: documents record only which write-only fields are set.
    pub fn to_stored(&self) -> serde_json::Result<Value> {
        match self {
            StreamState::Organization(state) => serde_json::to_value(state),
            StreamState::Environment(state) => serde_json::to_value(state),
            StreamState::User(state) => serde_json::to_value(state),
            StreamState::Members(state) => serde_json::to_value(state),
            StreamState::Execution(state) => serde_json::to_value(state),
            StreamState::ProcessedQueue(state) => serde_json::to_value(state),
            StreamState::Feedback(state) => serde_json::to_value(state),
            StreamState::Notification(state) => serde_json::to_value(state),
            StreamState::Budget(state) => serde_json::to_value(state),
            StreamState::Job(state) => serde_json::to_value(state),
            StreamState::ModelProbe(state) => serde_json::to_value(state),
            StreamState::ProcessedFailures(state) => serde_json::to_value(state),
            StreamState::Document(_, state) => serde_json::to_value(state),
        }
    }

    /// A state [`to_stored`](Self::to_stored) gave, of the stream (or [`fold_key`]) `stream_id`;
    /// `None` for a type this system does not know.
    pub fn from_stored(stream_id: &str, stored: Value) -> serde_json::Result<Option<StreamState>> {
        let Some(empty) = StreamState::for_stream(stream_id) else {
            return Ok(None);
        };
        Ok(Some(match empty {
            StreamState::Organization(_) => {
                StreamState::Organization(serde_json::from_value(stored)?)
            }
            StreamState::Environment(_) => {
                StreamState::Environment(serde_json::from_value(stored)?)
            }
            StreamState::User(_) => StreamState::User(serde_json::from_value(stored)?),
            StreamState::Members(_) => StreamState::Members(serde_json::from_value(stored)?),
            StreamState::Execution(_) => StreamState::Execution(serde_json::from_value(stored)?),
            StreamState::ProcessedQueue(_) => {
                StreamState::ProcessedQueue(serde_json::from_value(stored)?)
            }
            StreamState::Feedback(_) => StreamState::Feedback(serde_json::from_value(stored)?),
            StreamState::Notification(_) => {
                StreamState::Notification(serde_json::from_value(stored)?)
            }
            StreamState::Budget(_) => StreamState::Budget(serde_json::from_value(stored)?),
            StreamState::Job(_) => StreamState::Job(serde_json::from_value(stored)?),
            StreamState::ModelProbe(_) => StreamState::ModelProbe(serde_json::from_value(stored)?),
            StreamState::ProcessedFailures(_) => {
                StreamState::ProcessedFailures(serde_json::from_value(stored)?)
            }
            StreamState::Document(info, _) => {
                StreamState::Document(info, serde_json::from_value(stored)?)
            }
        }))
    }

    /// Folds `event` in and returns what it changed (see [`changes`]).
    pub fn audit(&mut self, event: &RecordedEvent) -> Result<Map<String, Value>, FoldError> {
        let before = self.audited_fields(event);
        self.apply(event)?;
        Ok(changes(&before, &self.audited_fields(event), event))
    }

    /// Folds one more event of the stream in, with its aggregate's own `apply`.
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), FoldError> {
        let failed = |reason: String| FoldError {
            stream: event.stream_id.clone(),
            event_id: event.event_id,
            reason,
        };
        let at = event.recorded_at;
        match self {
            StreamState::Organization(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Environment(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::User(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Members(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Execution(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::ProcessedQueue(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Feedback(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Notification(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Budget(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Job(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::ModelProbe(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::ProcessedFailures(state) => {
                state.apply(&event.decode().map_err(|e| failed(e.to_string()))?, at)
            }
            StreamState::Document(info, state) => {
                let action = event
                    .event_type
                    .strip_prefix(info.type_name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .ok_or_else(|| {
                        failed(format!("{} is not a {}", event.event_type, info.label))
                    })?;
                Change::from_stored(action, &event.data)
                    .map_err(failed)?
                    .apply_to(state, at);
            }
        }
        Ok(())
    }

    /// When the resource was deleted, if it is: an erased user counts as deleted (memberships are
    /// never deleted, only removed); a processed message folded on its own, when it was last deleted.
    pub fn deleted_at(&self) -> Option<DateTime<Utc>> {
        match self {
            StreamState::Organization(state) => state.deleted_at,
            StreamState::Environment(state) => state.deleted_at,
            StreamState::Document(_, state) => state.deleted_at,
            StreamState::User(state) => state.erased_at,
            StreamState::ProcessedQueue(state) => state.last_deleted.as_ref().map(|d| d.deleted_at),
            StreamState::Members(_)
            | StreamState::Execution(_)
            | StreamState::Feedback(_)
            | StreamState::Notification(_)
            | StreamState::Budget(_)
            | StreamState::Job(_)
            | StreamState::ModelProbe(_)
            | StreamState::ProcessedFailures(_) => None,
        }
    }

    /// The audited fields of the resource `event` is about, in this state: empty while it does not
    /// exist; write-only fields that hold a value as [`REDACTED`].
    pub fn audited_fields(&self, event: &RecordedEvent) -> Map<String, Value> {
        let mut fields = Map::new();
        match self {
            StreamState::Organization(state) => {
                if let Some(org) = &state.live {
                    fields.insert("name".into(), json!(org.name));
                    fields.insert("description".into(), json!(org.description));
                }
            }
            StreamState::Environment(state) => {
                if let Some(env) = &state.live {
                    fields.insert("organizationId".into(), json!(env.organization_id));
                    fields.insert("name".into(), json!(env.name));
                    fields.insert("description".into(), json!(env.description));
                }
            }
            StreamState::User(state) => {
                if let Some(user) = &state.live {
                    fields.insert("subject".into(), json!(user.subject));
                    fields.insert("email".into(), json!(user.email));
                    fields.insert("name".into(), json!(user.name));
                    fields.insert("systemRole".into(), json!(user.system_role));
                }
            }
            StreamState::Members(state) => {
                if let Some(member) = member_of(event).and_then(|id| state.members.get(&id)) {
                    fields.insert("role".into(), json!(member.role));
                }
            }
            StreamState::Execution(state) => {
                if let Some(execution) = &state.live {
                    fields.insert("status".into(), json!(execution.status));
                    fields.insert("templateId".into(), json!(execution.template_id));
                    fields.insert("templateVersion".into(), json!(execution.template_version));
                    fields.insert("modelId".into(), json!(execution.model_id));
                    fields.insert("provider".into(), json!(execution.provider));
                    fields.insert("usage".into(), json!(execution.usage));
                    fields.insert("cost".into(), json!(execution.cost));
                    fields.insert("latencyMs".into(), json!(execution.latency_ms));
                    if let Some(failure) = &execution.failure {
                        fields.insert("failureReason".into(), json!(failure.reason));
                    }
                }
            }
            StreamState::ProcessedQueue(state) => {
                if let Some(deleted) = &state.last_deleted {
                    fields.insert("key".into(), json!(deleted.key));
                    fields.insert("environmentId".into(), json!(deleted.environment_id));
                    fields.insert("status".into(), json!(deleted.status));
                    fields.insert("messageId".into(), json!(deleted.message_id));
                    fields.insert("deletedAt".into(), json!(deleted.deleted_at));
                }
            }
            StreamState::Feedback(state) => {
                if let Some(item) = &state.live {
                    fields.insert("state".into(), json!(item.state));
                    fields.insert("severity".into(), json!(item.severity));
                    fields.insert("quality".into(), json!(item.quality));
                    fields.insert("groups".into(), json!(item.groups));
                    fields.insert("assigneeId".into(), json!(item.assignee_id));
                }
            }
            StreamState::Notification(state) => {
                fields.insert("acknowledgedAt".into(), json!(state.acknowledged_at));
                fields.insert("resolvedAt".into(), json!(state.resolved_at));
            }
            StreamState::Budget(state) => {
                if let Some(limits) = &state.limits {
                    fields.insert("monthlyLimit".into(), json!(limits.monthly_limit));
                    fields.insert("currency".into(), json!(limits.currency));
                    fields.insert("alertAt".into(), json!(limits.alert_at));
                    fields.insert("hardStop".into(), json!(limits.hard_stop));
                }
            }
            StreamState::Job(state) => {
                if let Some(spec) = &state.spec {
                    fields.insert("kind".into(), json!(spec.kind()));
                    fields.insert("state".into(), json!(state.state));
                    fields.insert("cancelRequested".into(), json!(state.cancel_requested));
                    fields.insert("error".into(), json!(state.error));
                }
            }
            StreamState::ProcessedFailures(state) => {
                fields.insert("found".into(), json!(state.found));
            }
            StreamState::ModelProbe(state) => {
                if let Some(last) = &state.last {
                    fields.insert("ok".into(), json!(last.ok));
                    fields.insert("latencyMs".into(), json!(last.latency_ms));
                    fields.insert("providerStatus".into(), json!(last.provider_status));
                    fields.insert("error".into(), json!(last.error));
                }
            }
            StreamState::Document(info, state) => {
                if let Some(live) = &state.live {
                    fields.extend(live.fields.clone());
                    fields.extend(live.annotations.clone());
                    for slot in info.write_only {
                        if live.secrets.contains(slot.field) {
                            fields.insert(slot.field.into(), json!(REDACTED));
                        }
                    }
                }
            }
        }
        fields
    }
}

/// What `event` changed: `{field: {from, to}}` for every audited field whose value differs between
/// `before` and `after` (absent reads as `null`), in field-name order. A write-only value set again
/// is a change even though both sides read [`REDACTED`]: the event says it was sealed anew. So is a
/// personal value the event set whose user was erased since, though both sides read [`ERASED`].
pub fn changes(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    event: &RecordedEvent,
) -> Map<String, Value> {
    let mut resealed = event
        .data
        .get(SEALED_VALUES)
        .and_then(Value::as_object)
        .map(|sealed| sealed.keys().cloned().collect::<BTreeSet<_>>())
        .unwrap_or_default();
    resealed.extend(
        personal::FIELDS
            .into_iter()
            .filter(|field| event.data.get(*field).and_then(Value::as_str) == Some(ERASED))
            .map(str::to_owned),
    );
    let fields: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changes = Map::new();
    for field in fields {
        let from = before.get(field).unwrap_or(&Value::Null);
        let to = after.get(field).unwrap_or(&Value::Null);
        if from != to || resealed.contains(field) {
            changes.insert(field.clone(), json!({ "from": from, "to": to }));
        }
    }
    changes
}

/// The changes of a user's event stored before the user was erased, as they read after: each side of a
/// personal field that held a value reads [`ERASED`] (a `null` side stays `null`: nothing was set), as
/// folding the log again now gives. Whether anything was rewritten.
pub fn erase_personal_changes(changes: &mut Value) -> bool {
    let mut erased = false;
    for field in personal::FIELDS {
        if let Some(Value::Object(sides)) = changes.get_mut(field) {
            for value in sides.values_mut() {
                if !value.is_null() && value != ERASED {
                    *value = json!(ERASED);
                    erased = true;
                }
            }
        }
    }
    erased
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream_id: &str, event_type: &str, version: i64, data: Value) -> RecordedEvent {
        RecordedEvent::fixture(stream_id, event_type, version, data)
    }

    /// Folds `events` and returns each one's changes, storing and restoring the state between any
    /// two events, as the audit projection does between batches.
    fn changes_of(events: &[RecordedEvent]) -> Vec<Map<String, Value>> {
        let mut states: std::collections::HashMap<String, Value> = Default::default();
        events
            .iter()
            .map(|e| {
                let key = fold_key(e);
                let mut state = match states.remove(&key) {
                    Some(stored) => StreamState::from_stored(&key, stored).unwrap().unwrap(),
                    None => StreamState::for_stream(&key).unwrap(),
                };
                let changes = state.audit(e).unwrap();
                states.insert(key, state.to_stored().unwrap());
                changes
            })
            .collect()
    }

    #[test]
    fn changes_compare_the_states_around_each_event_and_redact_write_only_values() {
        let id = Uuid::now_v7();
        let org = Uuid::now_v7();
        let stream = format!("model-{id}");
        let created = json!({ "id": id, "organizationId": org, "name": "GPT", "description": null,
                              "modelUrl": "https://m.test/v1", "secrets": { "token": "v1.sealed" } });
        let all = changes_of(&[
            event(&stream, "model.created", 1, created),
            event(
                &stream,
                "model.updated",
                2,
                json!({ "secrets": { "token": "v1.again" } }),
            ),
            event(
                &stream,
                "model.updated",
                3,
                json!({ "name": "GPT-4", "secrets": { "token": null } }),
            ),
            event(&stream, "model.deleted", 4, json!({})),
        ]);
        assert_eq!(
            Value::Object(all[0].clone()),
            json!({
                "modelUrl": { "from": null, "to": "https://m.test/v1" },
                "name": { "from": null, "to": "GPT" },
                "organizationId": { "from": null, "to": org },
                "token": { "from": null, "to": REDACTED },
            })
        );
        assert_eq!(
            Value::Object(all[1].clone()),
            json!({ "token": { "from": REDACTED, "to": REDACTED } })
        );
        assert_eq!(
            Value::Object(all[2].clone()),
            json!({ "name": { "from": "GPT", "to": "GPT-4" }, "token": { "from": REDACTED, "to": null } })
        );
        assert_eq!(all[3]["name"], json!({ "from": "GPT-4", "to": null }));
        assert!(!all
            .iter()
            .any(|c| Value::Object(c.clone()).to_string().contains("v1.")));
    }

    #[test]
    fn a_membership_event_is_about_the_member_and_shows_its_role() {
        let org = Uuid::now_v7();
        let user = Uuid::now_v7();
        let other = Uuid::now_v7();
        let stream = format!("members-{org}");
        let events = [
            event(
                &stream,
                "member.added",
                1,
                json!({ "userId": user, "role": "admin" }),
            ),
            event(
                &stream,
                "member.added",
                2,
                json!({ "userId": other, "role": "user" }),
            ),
            event(
                &stream,
                "member.role_changed",
                3,
                json!({ "userId": user, "role": "guest", "previousRole": "admin" }),
            ),
            event(&stream, "member.removed", 4, json!({ "userId": user })),
        ];
        let all = changes_of(&events);
        assert_eq!(all[0]["role"], json!({ "from": null, "to": "admin" }));
        assert_eq!(all[1]["role"], json!({ "from": null, "to": "user" }));
        assert_eq!(all[2]["role"], json!({ "from": "admin", "to": "guest" }));
        assert_eq!(all[3]["role"], json!({ "from": "guest", "to": null }));
        assert_eq!(fold_key(&events[0]), format!("{stream}/{user}"));
        assert_ne!(fold_key(&events[1]), fold_key(&events[0]));
        let about = subject(&events[2]);
        assert_eq!(about.resource_type, MEMBER);
        assert_eq!(about.resource_id, Some(user));
        assert_eq!(about.organization_id, Some(org));
    }

    #[test]
    fn a_deletion_from_the_queue_is_about_the_message_it_names() {
        let org = Uuid::now_v7();
        let stream = format!("processed_queue-{org}");
        let deleted = |key: &str| {
            let key = crate::processed_queue::MessageKey::parse(key).unwrap();
            serde_json::to_value(crate::processed_queue::ProcessedQueueEvent::deleted(&key))
                .unwrap()["data"]
                .clone()
        };
        let env = Uuid::now_v7();
        let first = format!("{org}/{env}/fail/2026/01/02/m1.json");
        let second = format!("{org}/{env}/success/2026/01/02/m2.json");
        let events = [
            event(&stream, "processed_message.deleted", 1, deleted(&first)),
            event(&stream, "processed_message.deleted", 2, deleted(&second)),
        ];
        let all = changes_of(&events);
        assert_eq!(all[0]["key"], json!({ "from": null, "to": first }));
        assert_eq!(
            all[1]["key"],
            json!({ "from": null, "to": second }),
            "each message on its own"
        );
        assert_eq!(all[1]["status"], json!({ "from": null, "to": "success" }));
        let about = subject(&events[1]);
        assert_eq!(about.resource_type, PROCESSED_MESSAGE);
        assert_eq!(
            about.resource_id,
            Some(crate::processed_queue::key_id(&second))
        );
        assert_eq!(about.organization_id, Some(org));
        assert_ne!(fold_key(&events[0]), fold_key(&events[1]));
    }
}
