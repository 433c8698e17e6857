//! The catalog: the resources product teams build AI workflows from (variables, models, system
//! models, workflows, workflow entities and their types, prompt templates, prompts).
//!
//! They share one life cycle, so they share one aggregate, [`Document`], parameterised by a [`Kind`]
//! that says what differs: the fields and their rules, which fields are write-only, what a name must be
//! unique within, and what the resource refers to. Each kind keeps its own streams (`<type>-<id>`) and
//! event types (`<type>.created`, `<type>.updated`, `<type>.deleted`).
//!
//! A document's fields are held as the JSON object of its kind's typed field struct, normalised (every
//! field present, validated, trimmed): a request is parsed into that struct at the edge
//! ([`parse_fields`], [`merge_update`]), so the aggregate never sees unchecked input, and an update event
//! carries exactly the fields whose normalised value changed. Write-only values never appear in the
//! fields: events carry them sealed (see `commands::secrets`) under `secrets`, and the state only
//! remembers which ones are set.
//!
//! Prompt templates also carry annotations: the sentiment analyses of their text and of an
//! execution's output (`rawSentimentAnalysis`, `resultSentimentAnalysis`), recorded by
//! `<type>.sentiment_analyzed` events. An annotation is not an edit: it changes neither the fields nor
//! `updatedAt`, and the template's `version` counts its created and updated events only, so the
//! stream version (the `ETag`) runs ahead of `version` by the number of annotations.

pub mod kinds;

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::access::Resource;
use crate::aggregate::{Aggregate, DomainError};

/// The fields of a document, as a JSON object in its kind's camelCase.
pub type Fields = Map<String, Value>;

/// The key of an event's `data` that holds its sealed write-only values, by field.
pub const SEALED_VALUES: &str = "secrets";

/// A write-only field: the request field that sets it, and the flag reads show instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOnly {
    pub field: &'static str,
    pub flag: &'static str,
    /// Must be given on create, and cannot be cleared.
    pub required: bool,
}

/// Where a kind's documents live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inside one organization (`organizationId` required).
    Organization,
    /// Platform-wide, managed by System users.
    Platform,
    /// Either: platform-wide when `organizationId` is null.
    Either,
}

/// What a kind is, as every crate needs to know it at run time.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// Stream prefix and event-type prefix, e.g. `prompt_template`.
    pub type_name: &'static str,
    /// The JSON Schema of the kind's field struct (see `contracts::published`).
    pub fields_schema: fn() -> schemars::Schema,
    /// For messages: `Prompt template`.
    pub label: &'static str,
    /// The collection's path under `/api`.
    pub path: &'static str,
    pub resource: Resource,
    pub scope: Scope,
    pub write_only: &'static [WriteOnly],
    /// Fields fixed at creation: a `PUT` naming them is refused.
    pub immutable: &'static [&'static str],
    /// The field `search` matches and uniqueness applies to: `name`, or `title` for prompts.
    pub name_field: &'static str,
    /// Whether reads show `version` (prompt templates: every change is a version).
    pub versioned: bool,
    /// Fields reads show as `null` that no request sets (filled by later features).
    pub read_only_nulls: &'static [&'static str],
    /// Whether list requests must name `organizationId`.
    pub list_requires_organization: bool,
}

/// A stream this document refers to: it must exist (and belong to the same organization) while the
/// reference is held, and cannot be deleted meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// The request field that names it, for error messages.
    pub field: &'static str,
    pub stream: String,
    pub id: Uuid,
}

impl Reference {
    pub fn new(field: &'static str, type_name: &str, id: Uuid) -> Self {
        Reference {
            field,
            stream: format!("{type_name}-{id}"),
            id,
        }
    }
}

/// Where a name must be unique: the claim's scope, and how a `409` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameScope {
    pub scope: String,
    /// Completes "a model named "X" already exists…", e.g. ` in this organization`.
    pub within: &'static str,
}

impl NameScope {
    pub fn new(scope: String, within: &'static str) -> Self {
        NameScope { scope, within }
    }
}

/// One kind of catalog resource.
pub trait Kind: Default + Clone + Send + Sync + Unpin + 'static {
    const INFO: KindInfo;

    /// The validated field set, camelCase, refusing unknown fields.
    type Fields: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync;

    /// Checks and normalises fields beyond their types (lengths, URLs, trees, declared variables).
    fn check(fields: &mut Self::Fields) -> Result<(), DomainError>;

    /// The other resources these fields refer to (the organization included).
    fn references(fields: &Self::Fields) -> Vec<Reference>;

    /// Where the name must be unique, if names of this kind are unique.
    fn name_scope(_fields: &Self::Fields) -> Option<NameScope> {
        None
    }
}

/// The JSON Schema of a kind's field struct, with the definitions it refers to.
pub fn fields_schema<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

/// Parses a create request's fields (write-only values already taken out) into the kind's typed,
/// normalised form; `400` names the offending field.
pub fn parse_fields<K: Kind>(input: Fields) -> Result<(K::Fields, Fields), DomainError> {
    let mut typed: K::Fields = serde_path_to_error::deserialize(Value::Object(input))
        .map_err(|e| DomainError::invalid(field_path(e.path()), e.into_inner().to_string()))?;
    K::check(&mut typed)?;
    let normalised = match serde_json::to_value(&typed) {
        Ok(Value::Object(map)) => map,
        // Field structs are plain structs of JSON values; anything else is a programming error.
        _ => unreachable!("catalog field structs serialise to JSON objects"),
    };
    Ok((typed, normalised))
}

/// Applies a partial update to current fields: fields absent from `patch` keep their value, immutable
/// ones may not be sent, and the result must still be a valid field set.
pub fn merge_update<K: Kind>(
    current: &Fields,
    patch: Fields,
) -> Result<(K::Fields, Fields), DomainError> {
    let mut merged = current.clone();
    for (field, value) in patch {
        if K::INFO.immutable.contains(&field.as_str()) {
            return Err(DomainError::invalid(field, "cannot be changed"));
        }
        merged.insert(field, value);
    }
    parse_fields::<K>(merged)
}

fn field_path(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        "body".into()
    } else {
        path
    }
}

/// A document's state while it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentData {
    pub id: Uuid,
    pub fields: Fields,
    /// Which write-only fields hold a value.
    pub secrets: BTreeSet<String>,
    /// Read-only fields set by annotation events (sentiment analyses), by field.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub annotations: Fields,
    /// How many annotation events the stream holds: its version minus this is the content version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub annotation_events: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl DocumentData {
    fn uuid_field(&self, field: &str) -> Option<Uuid> {
        self.fields.get(field)?.as_str()?.parse().ok()
    }

    pub fn organization_id(&self) -> Option<Uuid> {
        self.uuid_field("organizationId")
    }

    pub fn environment_id(&self) -> Option<Uuid> {
        self.uuid_field("environmentId")
    }

    pub fn model_id(&self) -> Option<Uuid> {
        self.uuid_field("modelId")
    }

    /// The version a versioned kind shows at stream version `stream_version`: its created and
    /// updated events, annotations not counted.
    pub fn content_version(&self, stream_version: i64) -> i64 {
        stream_version - self.annotation_events
    }

    /// The value `search` matches and names are unique by.
    pub fn name(&self, info: &KindInfo) -> String {
        self.fields
            .get(info.name_field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// What happened to a document; the same for every kind (see [`DocumentEvent`] for the types).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Created {
        id: Uuid,
        fields: Fields,
        /// Sealed write-only values, by field.
        secrets: BTreeMap<String, String>,
    },
    /// Only what changed: fields with their new value; write-only fields sealed, or `None` when cleared.
    Updated {
        fields: Fields,
        secrets: BTreeMap<String, Option<String>>,
    },
    Deleted,
    /// Read-only annotation fields set (`rawSentimentAnalysis`, `resultSentimentAnalysis`).
    SentimentAnalyzed {
        analyses: Fields,
    },
}

/// The action of [`Change::SentimentAnalyzed`] events.
pub const SENTIMENT_ANALYZED: &str = "sentiment_analyzed";

impl Change {
    /// The stored `data` of the event.
    pub fn data(&self) -> Value {
        let mut data = Map::new();
        let secrets: Map<String, Value> = match self {
            Change::Created {
                id,
                fields,
                secrets,
            } => {
                data.insert("id".into(), Value::String(id.to_string()));
                data.extend(fields.clone());
                secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect()
            }
            Change::Updated { fields, secrets } => {
                data.extend(fields.clone());
                secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
                    .collect()
            }
            Change::Deleted => Map::new(),
            Change::SentimentAnalyzed { analyses } => {
                data.extend(analyses.clone());
                Map::new()
            }
        };
        if !secrets.is_empty() {
            data.insert(SEALED_VALUES.into(), Value::Object(secrets));
        }
        Value::Object(data)
    }

    /// Reads an event of a catalog stream back: `action` is what follows the type prefix.
    pub fn from_stored(action: &str, data: &Value) -> Result<Change, String> {
        let mut data = match data {
            Value::Object(map) => map.clone(),
            _ => return Err("event data is not an object".into()),
        };
        let secrets = match data.remove(SEALED_VALUES) {
            Some(Value::Object(secrets)) => secrets,
            None => Map::new(),
            Some(_) => return Err("secrets is not an object".into()),
        };
        match action {
            "created" => {
                let id = data
                    .remove("id")
                    .and_then(|id| id.as_str()?.parse().ok())
                    .ok_or("created event without an id")?;
                let secrets = secrets
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
                    .collect();
                Ok(Change::Created {
                    id,
                    fields: data,
                    secrets,
                })
            }
            "updated" => Ok(Change::Updated {
                fields: data,
                secrets: secrets
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().map(str::to_owned)))
                    .collect(),
            }),
            "deleted" => Ok(Change::Deleted),
            SENTIMENT_ANALYZED => Ok(Change::SentimentAnalyzed { analyses: data }),
            other => Err(format!("unknown action {other:?}")),
        }
    }

    /// Folds this change into a document's state (shared by every kind, and by the projector).
    pub fn apply_to(&self, state: &mut DocumentState, at: DateTime<Utc>) {
        match self {
            Change::Created {
                id,
                fields,
                secrets,
            } => {
                state.live = Some(DocumentData {
                    id: *id,
                    fields: fields.clone(),
                    secrets: secrets.keys().cloned().collect(),
                    annotations: Fields::new(),
                    annotation_events: 0,
                    created_at: at,
                    updated_at: at,
                })
            }
            Change::Updated { fields, secrets } => {
                if let Some(live) = &mut state.live {
                    live.fields
                        .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                    for (field, sealed) in secrets {
                        match sealed {
                            Some(_) => live.secrets.insert(field.clone()),
                            None => live.secrets.remove(field),
                        };
                    }
                    live.updated_at = at;
                }
            }
            Change::Deleted => {
                state.live = None;
                state.deleted_at = Some(at);
            }
            Change::SentimentAnalyzed { analyses } => {
                if let Some(live) = &mut state.live {
                    live.annotations
                        .extend(analyses.iter().map(|(k, v)| (k.clone(), v.clone())));
                    live.annotation_events += 1;
                }
            }
        }
    }
}

/// A document's state, whatever its kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocumentState {
    /// `None` before creation and after deletion.
    pub live: Option<DocumentData>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A [`Change`] of a document of kind `K`: stored as `<type>.created` and so on.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentEvent<K> {
    pub change: Change,
    kind: PhantomData<K>,
}

impl<K: Kind> DocumentEvent<K> {
    pub fn new(change: Change) -> Self {
        DocumentEvent {
            change,
            kind: PhantomData,
        }
    }

    pub fn event_type(&self) -> String {
        let action = match self.change {
            Change::Created { .. } => "created",
            Change::Updated { .. } => "updated",
            Change::Deleted => "deleted",
            Change::SentimentAnalyzed { .. } => SENTIMENT_ANALYZED,
        };
        format!("{}.{action}", K::INFO.type_name)
    }
}

/// The adjacently tagged form every domain event has (`{"type", "data"}`).
impl<K: Kind> Serialize for DocumentEvent<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({ "type": self.event_type(), "data": self.change.data() })
            .serialize(serializer)
    }
}

impl<'de, K: Kind> Deserialize<'de> for DocumentEvent<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            event_type: String,
            data: Value,
        }
        let tagged = Tagged::deserialize(deserializer)?;
        let action = tagged
            .event_type
            .strip_prefix(K::INFO.type_name)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{} is not a {}",
                    tagged.event_type,
                    K::INFO.label
                ))
            })?;
        Change::from_stored(action, &tagged.data)
            .map(DocumentEvent::new)
            .map_err(serde::de::Error::custom)
    }
}

pub enum DocumentCommand {
    Create {
        id: Uuid,
        fields: Fields,
        secrets: BTreeMap<String, String>,
    },
    /// `fields` is the whole normalised field set after the update; write-only fields map to a new
    /// sealed value or `None` to clear.
    Update {
        fields: Fields,
        secrets: BTreeMap<String, Option<String>>,
    },
    Delete,
    /// Sets read-only annotation fields of kinds that have them (prompt templates' sentiment).
    AnalyzeSentiment {
        analyses: Fields,
    },
}

/// A catalog resource of kind `K`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Document<K> {
    pub state: DocumentState,
    #[serde(skip)]
    kind: PhantomData<K>,
}

impl<K> Default for Document<K> {
    fn default() -> Self {
        Document {
            state: DocumentState::default(),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> Aggregate for Document<K> {
    const TYPE: &'static str = K::INFO.type_name;
    type Event = DocumentEvent<K>;
    type Command = DocumentCommand;

    fn apply(&mut self, event: &DocumentEvent<K>, at: DateTime<Utc>) {
        event.change.apply_to(&mut self.state, at);
    }

    fn decide(&self, command: DocumentCommand) -> Result<Vec<DocumentEvent<K>>, DomainError> {
        let change = match (command, &self.state.live) {
            (DocumentCommand::Create { .. }, Some(_)) => return Err(DomainError::AlreadyExists),
            (DocumentCommand::Create { .. }, None) if self.state.deleted_at.is_some() => {
                return Err(DomainError::AlreadyExists)
            }
            (
                DocumentCommand::Create {
                    id,
                    fields,
                    secrets,
                },
                None,
            ) => Change::Created {
                id,
                fields,
                secrets,
            },
            (DocumentCommand::Update { fields, secrets }, Some(live)) => {
                let fields: Fields = fields
                    .into_iter()
                    .filter(|(k, v)| live.fields.get(k) != Some(v))
                    .collect();
                // A new value always counts as a change (it cannot be compared); clearing only
                // when one is set.
                let secrets: BTreeMap<String, Option<String>> = secrets
                    .into_iter()
                    .filter(|(k, v)| v.is_some() || live.secrets.contains(k))
                    .collect();
                if fields.is_empty() && secrets.is_empty() {
                    return Ok(vec![]);
                }
                Change::Updated { fields, secrets }
            }
            (DocumentCommand::Delete, Some(_)) => Change::Deleted,
            (DocumentCommand::AnalyzeSentiment { analyses }, Some(_)) => {
                if let Some(field) = analyses
                    .keys()
                    .find(|f| !K::INFO.read_only_nulls.contains(&f.as_str()))
                {
                    return Err(DomainError::invalid(
                        field.clone(),
                        format!("a {} has no such annotation", K::INFO.label),
                    ));
                }
                Change::SentimentAnalyzed { analyses }
            }
            (
                DocumentCommand::Update { .. }
                | DocumentCommand::Delete
                | DocumentCommand::AnalyzeSentiment { .. },
                None,
            ) => return Err(DomainError::NotFound),
        };
        Ok(vec![DocumentEvent::new(change)])
    }
}

/// Names of the resources a read nests (`organization.name`, `environment.name`, `model.name`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nested {
    pub organization: Option<String>,
    pub environment: Option<String>,
    pub model: Option<String>,
}

fn timestamp(at: &DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The read shape of a document (contract §8): its id, its fields, a `has…` flag per write-only field,
/// `version` for versioned kinds, the nested names of what it refers to, and its timestamps. Built the
/// same way by command-api from aggregate state and by query-api from read-model rows.
pub fn view(info: &KindInfo, data: &DocumentData, version: i64, nested: &Nested) -> Value {
    let mut view = Map::new();
    view.insert("id".into(), Value::String(data.id.to_string()));
    view.extend(data.fields.clone());
    for slot in info.write_only {
        view.insert(
            slot.flag.into(),
            Value::Bool(data.secrets.contains(slot.field)),
        );
    }
    if info.versioned {
        view.insert("version".into(), Value::from(data.content_version(version)));
    }
    let named = |name: &Option<String>| match name {
        Some(name) => serde_json::json!({ "name": name }),
        None => Value::Null,
    };
    if data.fields.contains_key("modelId") {
        view.insert(
            "model".into(),
            match (data.model_id(), &nested.model) {
                (Some(id), Some(name)) => serde_json::json!({ "id": id, "name": name }),
                _ => Value::Null,
            },
        );
    }
    if data.fields.contains_key("organizationId") && data.organization_id().is_some() {
        view.insert("organization".into(), named(&nested.organization));
    }
    if data.fields.contains_key("environmentId") {
        view.insert("environment".into(), named(&nested.environment));
    }
    for field in info.read_only_nulls {
        let value = data.annotations.get(*field).cloned();
        view.insert((*field).into(), value.unwrap_or(Value::Null));
    }
    view.insert("createdAt".into(), timestamp(&data.created_at));
    view.insert("updatedAt".into(), timestamp(&data.updated_at));
    Value::Object(view)
}

#[cfg(test)]
mod tests {
    use super::kinds::{Model, PromptTemplate};
    use super::*;
    use serde_json::json;

    use crate::aggregate::given::at;

    fn model_fields(name: &str) -> Fields {
        let input = json!({
            "organizationId": Uuid::nil(),
            "name": name,
            "modelUrl": "https://api.openai.com/v1/chat/completions",
        });
        parse_fields::<Model>(input.as_object().unwrap().clone())
            .unwrap()
            .1
    }

    fn created(secrets: &[(&str, &str)]) -> Document<Model> {
        let mut doc = Document::<Model>::default();
        let events = doc
            .decide(DocumentCommand::Create {
                id: Uuid::max(),
                fields: model_fields("GPT-4"),
                secrets: secrets
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .unwrap();
        doc.apply(&events[0], at(0));
        doc
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let doc = created(&[("token", "v1.sealed")]);
        let event = DocumentEvent::<Model>::new(Change::Updated {
            fields: model_fields("Renamed"),
            secrets: BTreeMap::from([("token".into(), None)]),
        });
        let stored = serde_json::to_value(&event).unwrap();
        assert_eq!(stored["type"], "model.updated");
        assert_eq!(stored["data"]["secrets"]["token"], Value::Null);
        let back: DocumentEvent<Model> = serde_json::from_value(stored).unwrap();
        assert_eq!(back, event);
        let live = doc.state.live.unwrap();
        assert!(live.secrets.contains("token"));
        assert_eq!(live.fields["name"], "GPT-4");
        let wrong: Result<DocumentEvent<PromptTemplate>, _> =
            serde_json::from_value(json!({ "type": "model.deleted", "data": {} }));
        assert!(wrong.is_err());
    }

    #[test]
    fn an_update_carries_only_what_changed_and_nothing_when_nothing_did() {
        let doc = created(&[]);
        let same = doc
            .decide(DocumentCommand::Update {
                fields: model_fields("GPT-4"),
                // Clearing a value that is not set changes nothing either.
                secrets: BTreeMap::from([("token".into(), None)]),
            })
            .unwrap();
        assert!(same.is_empty());
        let renamed = doc
            .decide(DocumentCommand::Update {
                fields: model_fields("GPT-4o"),
                secrets: BTreeMap::from([("clientKey".into(), Some("v1.x".into()))]),
            })
            .unwrap();
        assert_eq!(
            renamed[0].change,
            Change::Updated {
                fields: json!({ "name": "GPT-4o" }).as_object().unwrap().clone(),
                secrets: BTreeMap::from([("clientKey".into(), Some("v1.x".into()))]),
            }
        );
    }

    #[test]
    fn immutable_fields_and_unknown_fields_are_refused_with_their_name() {
        let current = model_fields("GPT-4");
        let moved = json!({ "organizationId": Uuid::max() });
        match merge_update::<Model>(&current, moved.as_object().unwrap().clone()) {
            Err(DomainError::Invalid { field, .. }) => assert_eq!(field, "organizationId"),
            other => panic!("{other:?}"),
        }
        let unknown = json!({ "colour": "red" });
        match merge_update::<Model>(&current, unknown.as_object().unwrap().clone()) {
            Err(DomainError::Invalid { message, .. }) => assert!(message.contains("colour")),
            other => panic!("{other:?}"),
        }
        let null_name = json!({ "name": null });
        match merge_update::<Model>(&current, null_name.as_object().unwrap().clone()) {
            Err(DomainError::Invalid { field, .. }) => assert_eq!(field, "name"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deleted_documents_refuse_every_command() {
        let mut doc = created(&[]);
        let events = doc.decide(DocumentCommand::Delete).unwrap();
        doc.apply(&events[0], at(1));
        assert_eq!(
            doc.decide(DocumentCommand::Delete),
            Err(DomainError::NotFound)
        );
        assert!(doc
            .decide(DocumentCommand::Create {
                id: Uuid::max(),
                fields: model_fields("again"),
                secrets: BTreeMap::new(),
            })
            .is_err());
    }

    #[test]
    fn the_view_shows_flags_for_write_only_fields_and_nests_names() {
        let doc = created(&[("token", "v1.sealed")]);
        let nested = Nested {
            organization: Some("Acme Corp".into()),
            ..Nested::default()
        };
        let view = view(&Model::INFO, doc.state.live.as_ref().unwrap(), 1, &nested);
        assert_eq!(view["hasToken"], true);
        assert_eq!(view["hasClientKey"], false);
        assert_eq!(view["organization"]["name"], "Acme Corp");
        assert!(view.get("token").is_none());
        assert_eq!(view["createdAt"], "2023-11-14T22:13:20.000Z");
    }
}
