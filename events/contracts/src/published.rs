//! What other teams receive on Kafka (contract §7, `events/docs/contract.md`): every logged event as a
//! CloudEvents 1.0 message in Kafka's binary mode, one topic per aggregate type, keyed by the aggregate
//! id; and the JSON Schema of every event type's message value, which `schemas/events/` holds.
//!
//! The value is the event's `data` without its write-only values: sealed values (ciphertext included)
//! never leave. The headers carry the CloudEvents attributes and two extensions that let a consumer
//! check each key's sequence: `ce_streamversion` (1, 2, 3… per aggregate) and `ce_logposition` (the
//! log position, in the consistency-token form write answers use).

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use serde_json::{json, Map, Value};

use domain::aggregate::Aggregate;
use domain::budget::{Budget, BudgetEvent};
use domain::catalog::{kinds, SEALED_VALUES, SENTIMENT_ANALYZED};
use domain::environment::{Environment, EnvironmentEvent};
use domain::execution::{Execution, ExecutionEvent};
use domain::feedback::{Feedback, FeedbackEvent};
use domain::job::{Job, JobEvent};
use domain::members::{Members, MembersEvent};
use domain::model_probe::{ModelProbe, ModelProbeEvent};
use domain::notification::{Notification, NotificationEvent};
use domain::organization::{Organization, OrganizationEvent};
use domain::processed_failures::{ProcessedFailures, ProcessedFailuresEvent};
use domain::processed_queue::{ProcessedQueue, ProcessedQueueEvent};
use domain::sentiment::SentimentAnalysis;
use domain::upcast::current_version;
use domain::user::{User, UserEvent};
use domain::RecordedEvent;

pub const SPEC_VERSION: &str = "1.0";

/// Header names, as CloudEvents' Kafka binding spells them.
pub mod header {
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const STREAM_VERSION: &str = "ce_streamversion";
    pub const LOG_POSITION: &str = "ce_logposition";
    pub const CONTENT_TYPE: &str = "content-type";
}

/// Every aggregate type the log holds streams of, hence every topic.
pub fn aggregate_types() -> Vec<&'static str> {
    let mut types = vec![
        Organization::TYPE,
        Environment::TYPE,
        User::TYPE,
        Members::TYPE,
        Execution::TYPE,
        ProcessedQueue::TYPE,
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

/// The topic of an aggregate type: `<prefix>.<type>`, with `-` for `_` (`….prompt-template`).
pub fn topic(prefix: &str, aggregate_type: &str) -> String {
    format!("{prefix}.{}", aggregate_type.replace('_', "-"))
}

/// One event, ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    /// The aggregate id.
    pub key: String,
    pub headers: Vec<(&'static str, String)>,
    pub value: Vec<u8>,
}

impl Message {
    /// The message for a logged event. `source` is the CloudEvents source of every message of this
    /// system (the topic prefix).
    pub fn of(event: &RecordedEvent, source: &str) -> Message {
        let (aggregate_type, aggregate_id) = event
            .stream_id
            .split_once('-')
            .unwrap_or((event.stream_id.as_str(), ""));
        let headers = vec![
            (header::SPEC_VERSION, SPEC_VERSION.to_owned()),
            (header::ID, event.event_id.to_string()),
            (header::SOURCE, format!("/{source}/{aggregate_type}")),
            (
                header::TYPE,
                ce_type(&event.event_type, event.schema_version),
            ),
            (
                header::TIME,
                event
                    .recorded_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            (header::SUBJECT, aggregate_id.to_owned()),
            (header::STREAM_VERSION, event.stream_version.to_string()),
            (header::LOG_POSITION, event.position().to_string()),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ];
        Message {
            topic: topic(source, aggregate_type),
            key: aggregate_id.to_owned(),
            headers,
            value: serde_json::to_vec(&value(&event.data)).expect("JSON values serialise"),
        }
    }
}

/// `ce_type`: the event type and its schema version, `prompt_template.updated.v1`.
pub fn ce_type(event_type: &str, schema_version: i32) -> String {
    format!("{event_type}.v{schema_version}")
}

/// The message value: the event's data without its sealed write-only values.
pub fn value(data: &Value) -> Value {
    let mut value = data.clone();
    if let Value::Object(fields) = &mut value {
        fields.remove(SEALED_VALUES);
    }
    value
}

/// The JSON Schema of each event type's message value, by file name (`<ce_type>.json`), generated from
/// the Rust types the events are made of.
pub fn schemas() -> BTreeMap<String, Value> {
    let mut schemas = BTreeMap::new();
    for root in [
        schemars::schema_for!(OrganizationEvent),
        schemars::schema_for!(EnvironmentEvent),
        schemars::schema_for!(UserEvent),
        schemars::schema_for!(MembersEvent),
        schemars::schema_for!(ExecutionEvent),
        schemars::schema_for!(ProcessedQueueEvent),
        schemars::schema_for!(FeedbackEvent),
        schemars::schema_for!(NotificationEvent),
        schemars::schema_for!(BudgetEvent),
        schemars::schema_for!(JobEvent),
        schemars::schema_for!(ModelProbeEvent),
        schemars::schema_for!(ProcessedFailuresEvent),
    ] {
        add_variants(&mut schemas, root.to_value());
    }
    for (event_type, version, schema) in domain::upcast::superseded_schemas() {
        insert_version(&mut schemas, event_type, version, schema.to_value());
    }
    for kind in kinds::ALL {
        add_catalog_kind(
            &mut schemas,
            kind.type_name,
            (kind.fields_schema)().to_value(),
        );
        if !kind.read_only_nulls.is_empty() {
            add_sentiment_analyzed(&mut schemas, kind.type_name, kind.read_only_nulls);
        }
    }
    schemas
}

/// Splits the schema of an adjacently tagged event enum (`oneOf` `{type, data}` objects) into one schema
/// per event type, each the schema of that variant's `data`.
fn add_variants(schemas: &mut BTreeMap<String, Value>, root: Value) {
    let definitions = root.get("$defs").cloned();
    let variants = root["oneOf"].as_array().cloned().unwrap_or_default();
    for variant in variants {
        let tag = &variant["properties"]["type"];
        let event_type = tag["const"]
            .as_str()
            .or_else(|| tag["enum"][0].as_str())
            .expect("every event variant has a type tag");
        let mut data = variant["properties"]["data"].clone();
        if let Some(definitions) = &definitions {
            data["$defs"] = definitions.clone();
        }
        insert(schemas, event_type, data);
    }
}

/// A catalog kind's three event types: `created` carries the id and every field, `updated` only the
/// fields that changed, `deleted` nothing.
fn add_catalog_kind(schemas: &mut BTreeMap<String, Value>, type_name: &str, fields: Value) {
    let mut created = fields.clone();
    let mut properties = Map::new();
    properties.insert("id".into(), json!({ "type": "string", "format": "uuid" }));
    properties.extend(
        fields["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    created["properties"] = Value::Object(properties);
    let mut required = vec![json!("id")];
    required.extend(fields["required"].as_array().cloned().unwrap_or_default());
    created["required"] = Value::Array(required);
    insert(schemas, &format!("{type_name}.created"), created);

    let mut updated = fields;
    if let Value::Object(schema) = &mut updated {
        schema.remove("required");
    }
    insert(schemas, &format!("{type_name}.updated"), updated);
    insert(
        schemas,
        &format!("{type_name}.deleted"),
        json!({ "type": "object" }),
    );
}

/// `<type>.sentiment_analyzed`: the analyses it sets, each an analysis object or `null`.
fn add_sentiment_analyzed(schemas: &mut BTreeMap<String, Value>, type_name: &str, fields: &[&str]) {
    let analysis = schemars::schema_for!(SentimentAnalysis).to_value();
    let mut properties = Map::new();
    for field in fields {
        properties.insert(
            (*field).into(),
            json!({ "anyOf": [{ "$ref": "#/$defs/SentimentAnalysis" }, { "type": "null" }] }),
        );
    }
    let mut definitions = analysis.get("$defs").cloned().unwrap_or_else(|| json!({}));
    let mut own = analysis;
    if let Value::Object(own) = &mut own {
        own.remove("$defs");
        own.remove("$schema");
    }
    definitions["SentimentAnalysis"] = own;
    insert(
        schemas,
        &format!("{type_name}.{SENTIMENT_ANALYZED}"),
        json!({ "type": "object", "properties": properties, "$defs": definitions }),
    );
}

/// Files the schema of the version of `event_type` written today.
fn insert(schemas: &mut BTreeMap<String, Value>, event_type: &str, data: Value) {
    insert_version(schemas, event_type, current_version(event_type), data)
}

/// Files the schema of one version of an event type: a closed object (a published value has exactly
/// the fields its type declares, so a stray field such as a sealed value fails validation), titled with
/// its `ce_type`.
fn insert_version(
    schemas: &mut BTreeMap<String, Value>,
    event_type: &str,
    version: i32,
    data: Value,
) {
    let ce_type = ce_type(event_type, version);
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema.insert("title".into(), json!(ce_type));
    if let Value::Object(data) = data {
        for (key, value) in data {
            if key != "$schema" && key != "title" {
                schema.insert(key, value);
            }
        }
    }
    schema
        .entry("additionalProperties")
        .or_insert(Value::Bool(false));
    schemas.insert(format!("{ce_type}.json"), Value::Object(schema));
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::LogPosition;
    use uuid::Uuid;

    #[test]
    fn a_message_carries_the_cloud_event_attributes_and_no_sealed_values() {
        let id = Uuid::now_v7();
        let event = RecordedEvent::fixture(
            &format!("prompt_template-{id}"),
            "prompt_template.updated",
            3,
            json!({ "name": "n", "secrets": { "token": "v1.abc" } }),
        );
        let message = Message::of(&event, "admin-platform");
        assert_eq!(message.topic, "admin-platform.prompt-template");
        assert_eq!(message.key, id.to_string());
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("ce_type"), Some("prompt_template.updated.v1"));
        assert_eq!(header("ce_subject"), Some(id.to_string().as_str()));
        assert_eq!(header("ce_streamversion"), Some("3"));
        assert_eq!(
            header("ce_logposition").map(|p| p.parse::<LogPosition>().unwrap()),
            Some(event.position())
        );
        let value: Value = serde_json::from_slice(&message.value).unwrap();
        assert_eq!(value, json!({ "name": "n" }));
    }

    #[test]
    fn every_event_type_has_a_closed_schema() {
        let schemas = schemas();
        for expected in [
            "organization.created.v1.json",
            "member.role_changed.v1.json",
            "member.role_changed.v2.json",
            "user.signed_in.v1.json",
            "prompt_template.updated.v1.json",
            "workflow_entity_type.deleted.v1.json",
        ] {
            let schema = &schemas[expected];
            assert_eq!(schema["additionalProperties"], json!(false), "{expected}");
        }
        assert_eq!(
            schemas["variable.created.v1.json"]["required"][0],
            json!("id")
        );
        assert!(schemas["variable.updated.v1.json"]
            .get("required")
            .is_none());
    }
}
