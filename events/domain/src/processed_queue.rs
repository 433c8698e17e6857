//! The processed queue: the workflow runtime writes one JSON object per processed message into S3,
//! under `<organizationId>/<environmentId>/<status>/yyyy/mm/dd/<messageId>.json`. This module owns
//! what the platform decides about them without I/O:
//! - which keys are well formed, and whose organization they belong to ([`MessageKey`]);
//! - the object's JSON shape and what an index can learn from it ([`StoredMessage`], [`Summary`]);
//! - the `processed_queue` aggregate: one stream per organization (`processed_queue-<organization id>`)
//!   whose events record who deleted which message, one event per key.
//!
//! A message's resource id (in the audit trail and on Kafka) is the UUID v5 of its key
//! ([`MessageKey::id`]), so that it can be named by id like every other resource.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};

/// The namespace of the UUID v5 ids of message keys.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0a11);

/// The longest message id a key may carry (S3 keys are at most 1,024 bytes).
pub const MAX_MESSAGE_ID: usize = 200;

/// How a message's processing ended: the third segment of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Success,
    Fail,
    Ignore,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 3] = [
        MessageStatus::Success,
        MessageStatus::Fail,
        MessageStatus::Ignore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Success => "success",
            MessageStatus::Fail => "fail",
            MessageStatus::Ignore => "ignore",
        }
    }

    pub fn parse(raw: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A well-formed key of the processed queue, and what it says about its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKey {
    pub key: String,
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub status: MessageStatus,
    /// The UTC day in the key's path.
    pub day: NaiveDate,
    pub message_id: String,
}

impl MessageKey {
    /// Parses `<organizationId>/<environmentId>/<status>/yyyy/mm/dd/<messageId>.json`: ids in their
    /// hyphenated lower-case form, a real date, and a message id of letters, digits, `.`, `_` and `-`
    /// (not starting with `.`). Anything else (an empty segment, `..`, an escaped character, another
    /// layout) is not a key of the queue.
    pub fn parse(key: &str) -> Option<MessageKey> {
        let segments: Vec<&str> = key.split('/').collect();
        let [organization, environment, status, year, month, day, file] = segments[..] else {
            return None;
        };
        let id = |raw: &str| {
            let id: Uuid = raw.parse().ok()?;
            (id.hyphenated().to_string() == raw).then_some(id)
        };
        let number = |raw: &str, digits: usize| {
            (raw.len() == digits && raw.bytes().all(|b| b.is_ascii_digit()))
                .then(|| raw.parse::<u32>().ok())
                .flatten()
        };
        let message_id = file.strip_suffix(".json")?;
        let message_id_ok = !message_id.is_empty()
            && message_id.len() <= MAX_MESSAGE_ID
            && !message_id.starts_with('.')
            && message_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !message_id_ok {
            return None;
        }
        Some(MessageKey {
            key: key.to_owned(),
            organization_id: id(organization)?,
            environment_id: id(environment)?,
            status: MessageStatus::parse(status)?,
            day: NaiveDate::from_ymd_opt(
                number(year, 4)? as i32,
                number(month, 2)?,
                number(day, 2)?,
            )?,
            message_id: message_id.to_owned(),
        })
    }

    /// [`MessageKey::parse`], for a key of `organization_id`'s queue only: a key of another
    /// organization is no key at all to this caller.
    pub fn parse_in(organization_id: Uuid, key: &str) -> Option<MessageKey> {
        MessageKey::parse(key).filter(|k| k.organization_id == organization_id)
    }

    /// The key an object of this message is stored under.
    pub fn format(
        organization_id: Uuid,
        environment_id: Uuid,
        status: MessageStatus,
        day: NaiveDate,
        message_id: &str,
    ) -> String {
        format!(
            "{}{}/{message_id}.json",
            prefix(organization_id, environment_id, status),
            day.format("%Y/%m/%d")
        )
    }

    /// The message's resource id: the UUID v5 of its key.
    pub fn id(&self) -> Uuid {
        key_id(&self.key)
    }
}

/// The resource id of the message stored under `key`.
pub fn key_id(key: &str) -> Uuid {
    Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes())
}

/// The prefix every key of one environment's messages of one status starts with.
pub fn prefix(organization_id: Uuid, environment_id: Uuid, status: MessageStatus) -> String {
    format!("{organization_id}/{environment_id}/{}/", status.as_str())
}

/// The JSON object the runtime stores per processed message. Every field but `messageId` and
/// `status` is optional; unknown fields are allowed and kept in the object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub message_id: String,
    pub status: MessageStatus,
    #[serde(default)]
    pub workflow_id: Option<String>,
    #[serde(default)]
    pub received_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub processed_at: Option<DateTime<Utc>>,
    /// The message as the runtime received it.
    #[serde(default)]
    pub input: Option<Value>,
    /// What processing produced (`success`, `ignore`).
    #[serde(default)]
    pub result: Option<Value>,
    /// Why processing failed (`fail`).
    #[serde(default)]
    pub error: Option<Value>,
}

/// What the index learns from an object's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Summary {
    /// The body has the expected shape and agrees with its key.
    Parsed {
        workflow_id: Option<String>,
        received_at: Option<DateTime<Utc>>,
        processed_at: Option<DateTime<Utc>>,
    },
    /// Not JSON, another shape, or a message id or status other than its key's: what the key says is
    /// all that is known.
    Unparsed { reason: String },
}

impl Summary {
    pub fn of(key: &MessageKey, body: &[u8]) -> Summary {
        let unparsed = |reason: String| Summary::Unparsed { reason };
        let message: StoredMessage = match serde_json::from_slice(body) {
            Ok(message) => message,
            Err(error) => return unparsed(format!("not a processed message: {error}")),
        };
        if message.message_id != key.message_id {
            return unparsed(format!(
                "messageId {:?} is not the key's {:?}",
                message.message_id, key.message_id
            ));
        }
        if message.status != key.status {
            return unparsed(format!(
                "status {:?} is not the key's {:?}",
                message.status.as_str(),
                key.status.as_str()
            ));
        }
        Summary::Parsed {
            workflow_id: message.workflow_id,
            received_at: message.received_at,
            processed_at: message.processed_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ProcessedQueueEvent {
    /// A message's object was deleted from the queue's bucket by the event's actor.
    #[serde(rename = "processed_message.deleted")]
    Deleted {
        /// The message's resource id (UUID v5 of its key).
        id: Uuid,
        key: String,
        environment_id: Uuid,
        status: MessageStatus,
        message_id: String,
    },
}

impl ProcessedQueueEvent {
    pub fn deleted(key: &MessageKey) -> ProcessedQueueEvent {
        ProcessedQueueEvent::Deleted {
            id: key.id(),
            key: key.key.clone(),
            environment_id: key.environment_id,
            status: key.status,
            message_id: key.message_id.clone(),
        }
    }
}

pub enum ProcessedQueueCommand {
    /// Records the deletion of these messages, which the caller found in the bucket.
    Delete(Vec<MessageKey>),
}

/// One organization's queue as its stream folds: how many deletions it recorded, and the last one.
/// The audit trail folds each message on its own (`history::fold_key`), so there the last deletion
/// is that message's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedQueue {
    pub deletions: u64,
    pub last_deleted: Option<DeletedMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedMessage {
    pub key: String,
    pub environment_id: Uuid,
    pub status: MessageStatus,
    pub message_id: String,
    pub deleted_at: DateTime<Utc>,
}

impl Aggregate for ProcessedQueue {
    const TYPE: &'static str = "processed_queue";
    type Event = ProcessedQueueEvent;
    type Command = ProcessedQueueCommand;

    fn apply(&mut self, event: &ProcessedQueueEvent, at: DateTime<Utc>) {
        let ProcessedQueueEvent::Deleted {
            key,
            environment_id,
            status,
            message_id,
            ..
        } = event;
        self.deletions += 1;
        self.last_deleted = Some(DeletedMessage {
            key: key.clone(),
            environment_id: *environment_id,
            status: *status,
            message_id: message_id.clone(),
            deleted_at: at,
        });
    }

    fn decide(
        &self,
        command: ProcessedQueueCommand,
    ) -> Result<Vec<ProcessedQueueEvent>, DomainError> {
        let ProcessedQueueCommand::Delete(keys) = command;
        Ok(keys.iter().map(ProcessedQueueEvent::deleted).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "0193a000-0000-7000-8000-000000000001";
    const ENV: &str = "0193a000-0000-7000-8000-000000000002";

    #[test]
    fn a_key_says_whose_message_it_is_and_where_it_was_filed() {
        let key = MessageKey::parse(&format!("{ORG}/{ENV}/fail/2026/02/28/msg-01J.x_y.json"))
            .expect("a key");
        assert_eq!(key.organization_id.to_string(), ORG);
        assert_eq!(key.environment_id.to_string(), ENV);
        assert_eq!(key.status, MessageStatus::Fail);
        assert_eq!(key.day, NaiveDate::from_ymd_opt(2026, 2, 28).unwrap());
        assert_eq!(key.message_id, "msg-01J.x_y");
        assert_eq!(
            MessageKey::format(
                key.organization_id,
                key.environment_id,
                key.status,
                key.day,
                "msg-01J.x_y"
            ),
            key.key
        );
        assert_eq!(key.id(), key_id(&key.key));
        assert_ne!(
            key.id(),
            key_id(&key.key.replace("msg-01J", "msg-01K")),
            "ids differ by key"
        );
    }

    #[test]
    fn anything_but_the_layout_is_no_key() {
        let other_org = "0193a000-0000-7000-8000-000000000009";
        for bad in [
            format!("{ORG}/{ENV}/success/2026/01/02/m.txt"),
            format!("{ORG}/{ENV}/success/2026/01/02/.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/..json"),
            format!("{ORG}/{ENV}/success/2026/1/02/m.json"),
            format!("{ORG}/{ENV}/success/2026/02/30/m.json"),
            format!("{ORG}/{ENV}/done/2026/01/02/m.json"),
            format!("{ORG}/{ENV}//2026/01/02/m.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/extra/m.json"),
            format!("{ORG}/../{ENV}/success/2026/01/02/m.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/m%2Fx.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/m\\x.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/m x.json"),
            format!("{}/{ENV}/success/2026/01/02/m.json", ORG.to_uppercase()),
            format!("/{ORG}/{ENV}/success/2026/01/02/m.json"),
            format!("{ORG}/{ENV}/success/2026/01/02/{}.json", "m".repeat(201)),
            String::new(),
        ] {
            assert_eq!(MessageKey::parse(&bad), None, "{bad}");
        }
        let foreign = format!("{other_org}/{ENV}/success/2026/01/02/m.json");
        assert!(MessageKey::parse(&foreign).is_some());
        assert_eq!(MessageKey::parse_in(ORG.parse().unwrap(), &foreign), None);
    }

    #[test]
    fn a_body_is_summarised_when_it_matches_its_key_and_flagged_otherwise() {
        let key = MessageKey::parse(&format!("{ORG}/{ENV}/success/2026/01/02/m1.json")).unwrap();
        let body = br#"{"messageId":"m1","status":"success","workflowId":"wf-9",
            "receivedAt":"2026-01-02T10:00:00Z","processedAt":"2026-01-02T10:00:01.5Z",
            "input":{"text":"hi"},"result":{"ok":true},"extra":1}"#;
        assert_eq!(
            Summary::of(&key, body),
            Summary::Parsed {
                workflow_id: Some("wf-9".into()),
                received_at: Some("2026-01-02T10:00:00Z".parse().unwrap()),
                processed_at: Some("2026-01-02T10:00:01.5Z".parse().unwrap()),
            }
        );
        for bad in [
            &b"not json"[..],
            br#"{"status":"success"}"#,
            br#"{"messageId":"m2","status":"success"}"#,
            br#"{"messageId":"m1","status":"fail"}"#,
            br#"{"messageId":"m1","status":"success","receivedAt":"yesterday"}"#,
        ] {
            assert!(
                matches!(Summary::of(&key, bad), Summary::Unparsed { .. }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_deletion_records_one_event_per_key() {
        let keys: Vec<MessageKey> = ["a", "b"]
            .iter()
            .map(|m| MessageKey::parse(&format!("{ORG}/{ENV}/ignore/2026/01/02/{m}.json")).unwrap())
            .collect();
        let events = ProcessedQueue::default()
            .decide(ProcessedQueueCommand::Delete(keys.clone()))
            .unwrap();
        assert_eq!(events.len(), 2);
        let ProcessedQueueEvent::Deleted { id, key, .. } = &events[1];
        assert_eq!((id, key), (&keys[1].id(), &keys[1].key));
    }
}
