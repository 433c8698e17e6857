//! `POST`, `PUT` and `DELETE` of every catalog resource (variables, models, system models, workflows,
//! workflow entities and their types, prompt templates, prompts): one implementation, parameterised by
//! the resource's [`Kind`].
//!
//! A write checks what the resource refers to (its organization, environment, model, entity type, the
//! entities a workflow uses) in one read of those streams' heads, then commits with each of them pinned
//! at the version it saw and a reference recorded, so a concurrent deletion of any of them either waits
//! for this write and then sees its reference (`409`), or wins and makes this write retry and find it
//! gone. Write-only values are sealed once those checks pass, and only their ciphertext enters events.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, StreamHead, WriteSet};
use domain::catalog::{
    merge_update, parse_fields, view, Document, DocumentCommand, DocumentData, Fields, Kind,
    Nested, Reference, Scope,
};
use domain::{Action, Actor, Aggregate, Loaded, Permission};
use http_layer::ApiError;
use serde_json::Value;
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::fields::claimant;
use crate::AppState;

/// Longest accepted write-only value (credentials and variable values).
pub const WRITE_ONLY_MAX_CHARS: usize = 10_000;

/// Write-only values of a request, by field: `None` clears one (updates only).
type WriteOnlyValues = BTreeMap<String, Option<String>>;

pub async fn create<K: Kind>(
    State(state): State<AppState>,
    write: Write,
) -> Result<Response, ApiError> {
    authorize_early::<K>(&write.actor, Action::Create)?;
    let mut input: Fields = write.parse()?;
    let values = take_write_only::<K>(&mut input, true)?;
    let (typed, fields) = parse_fields::<K>(input)?;
    let organization_id = organization_of(&fields);
    let permission = permission::<K>(organization_id, Action::Create);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(|e| match organization_id {
            Some(id) => ApiError::denied("Organization", id)(e),
            None => e.into(),
        })?;
    let id = Uuid::now_v7();
    let stream = Document::<K>::stream_id(id);
    let references = K::references(&typed);
    let claim = K::name_scope(&typed).map(|scope| (scope, name_key::<K>(&fields)));
    // The command may run more than once (module docs of `command`): it borrows what it needs.
    let (state, write, stream, fields, values, references, claim) = (
        &state,
        &write,
        &stream,
        &fields,
        &values,
        &references,
        &claim,
    );
    execute(state, write, move || async move {
        let heads = resolve(state, references, organization_id).await?;
        // Sealed once what it belongs to is known to exist (a data key is made on first use).
        let secrets = seal(state, organization_id, stream, values.clone())
            .await?
            .into_iter()
            .filter_map(|(field, sealed)| Some((field, sealed?)))
            .collect();
        let mut doc = Loaded::<Document<K>>::new_stream();
        let events = doc.state.decide(DocumentCommand::Create {
            id,
            fields: fields.clone(),
            secrets,
        })?;
        let events = doc.record(events, &write.metadata(role, organization_id), Utc::now());
        let mut changes = WriteSet::append(stream, 0, events);
        for head in &heads {
            changes = changes
                .require_version(&head.stream_id, head.version)
                .add_reference(&head.stream_id);
        }
        if let Some((scope, key)) = claim {
            let claimant = claimant(K::INFO.label, name_of::<K>(fields), scope.within);
            changes = changes.claim_name(&scope.scope, key, claimant);
        }
        let body = render(&doc, &heads)?;
        Ok(Outcome::new(201, body, changes.version_after())
            .located(format!("/api/{}/{id}", K::INFO.path))
            .appending(changes, permission))
    })
    .await
}

pub async fn update<K: Kind>(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    authorize_early::<K>(&write.actor, Action::Update)?;
    let mut patch: Fields = write.parse()?;
    let values = take_write_only::<K>(&mut patch, false)?;
    let (state, write, patch, values) = (&state, &write, &patch, &values);
    execute(state, write, move || async move {
        let (mut doc, live) = load::<K>(state, id).await?;
        let organization_id = organization_of(&live.fields);
        let permission = permission::<K>(organization_id, Action::Update);
        let role = write
            .actor
            .authorize(&permission)
            .map_err(ApiError::denied(K::INFO.label, id))?;
        write.check_if_match(doc.version)?;
        let expected = doc.version;
        let (old_typed, _) = parse_fields::<K>(live.fields.clone())?;
        let (typed, fields) = merge_update::<K>(&live.fields, patch.clone())?;
        let old_references: BTreeSet<Reference> = K::references(&old_typed).into_iter().collect();
        let references = K::references(&typed);
        let heads = resolve(state, &references, organization_id).await?;
        let stream = Document::<K>::stream_id(id);
        let secrets = seal(state, organization_id, &stream, values.clone()).await?;
        let events = doc.state.decide(DocumentCommand::Update {
            fields: fields.clone(),
            secrets,
        })?;
        if events.is_empty() {
            return Ok(Outcome::new(200, render(&doc, &heads)?, doc.version));
        }
        let events = doc.record(events, &write.metadata(role, organization_id), Utc::now());
        let mut changes = WriteSet::append(&stream, expected, events);
        // References already held keep their targets alive; only new ones are checked at commit.
        for head in &heads {
            if !old_references.iter().any(|r| r.stream == head.stream_id) {
                changes = changes
                    .require_version(&head.stream_id, head.version)
                    .add_reference(&head.stream_id);
            }
        }
        for old in &old_references {
            if !references.iter().any(|r| r.stream == old.stream) {
                changes = changes.remove_reference(&old.stream);
            }
        }
        let old_claim = K::name_scope(&old_typed).map(|s| (s, name_key::<K>(&live.fields)));
        let claim = K::name_scope(&typed).map(|s| (s, name_key::<K>(&fields)));
        if old_claim != claim {
            if let Some((scope, key)) = &old_claim {
                changes = changes.release_name(&scope.scope, key);
            }
            if let Some((scope, key)) = &claim {
                let claimant = claimant(K::INFO.label, name_of::<K>(&fields), scope.within);
                changes = changes.claim_name(&scope.scope, key, claimant);
            }
        }
        let body = render(&doc, &heads)?;
        Ok(Outcome::new(200, body, changes.version_after()).appending(changes, permission))
    })
    .await
}

pub async fn delete<K: Kind>(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    authorize_early::<K>(&write.actor, Action::Delete)?;
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let (mut doc, live) = load::<K>(state, id).await?;
        let organization_id = organization_of(&live.fields);
        let permission = permission::<K>(organization_id, Action::Delete);
        let role = write
            .actor
            .authorize(&permission)
            .map_err(ApiError::denied(K::INFO.label, id))?;
        write.check_if_match(doc.version)?;
        let expected = doc.version;
        let (typed, _) = parse_fields::<K>(live.fields.clone())?;
        let events = doc.state.decide(DocumentCommand::Delete)?;
        let events = doc.record(events, &write.metadata(role, organization_id), Utc::now());
        let mut changes = WriteSet::append(&Document::<K>::stream_id(id), expected, events)
            .refuse_if_referenced();
        for reference in K::references(&typed) {
            changes = changes.remove_reference(&reference.stream);
        }
        if let Some(scope) = K::name_scope(&typed) {
            changes = changes.release_name(&scope.scope, &name_key::<K>(&live.fields));
        }
        Ok(Outcome::deleted(id, changes.version_after()).appending(changes, permission))
    })
    .await
}

/// The check before the request's organization is known: refuses callers whose roles allow `action`
/// nowhere, before their input is looked at.
fn authorize_early<K: Kind>(actor: &Actor, action: Action) -> Result<(), ApiError> {
    match K::INFO.scope {
        Scope::Platform => actor.authorize_platform(K::INFO.resource, action).map(drop),
        Scope::Organization | Scope::Either => actor.authorize_anywhere(K::INFO.resource, action),
    }
    .map_err(Into::into)
}

/// What `action` on a resource of this kind in `organization_id` (`None`: platform-wide) needs.
fn permission<K: Kind>(organization_id: Option<Uuid>, action: Action) -> Permission {
    Permission {
        organization: organization_id,
        resource: K::INFO.resource,
        action,
    }
}

fn organization_of(fields: &Fields) -> Option<Uuid> {
    fields.get("organizationId")?.as_str()?.parse().ok()
}

/// The form names are unique in: case-folded.
fn name_key<K: Kind>(fields: &Fields) -> String {
    name_of::<K>(fields).to_lowercase()
}

fn name_of<K: Kind>(fields: &Fields) -> &str {
    fields
        .get(K::INFO.name_field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Takes the write-only fields out of a request body. On create, an absent or `null` optional value
/// means "not set"; on update, absent leaves it and `null` clears it. Values are never echoed in errors.
fn take_write_only<K: Kind>(
    input: &mut Fields,
    creating: bool,
) -> Result<WriteOnlyValues, ApiError> {
    let mut values = WriteOnlyValues::new();
    for slot in K::INFO.write_only {
        match input.remove(slot.field) {
            None if creating && slot.required => {
                return Err(ApiError::invalid(slot.field, "is required"))
            }
            None => {}
            Some(Value::Null) if slot.required => {
                return Err(ApiError::invalid(slot.field, "must not be null"))
            }
            Some(Value::Null) if !creating => {
                values.insert(slot.field.to_owned(), None);
            }
            Some(Value::Null) => {}
            Some(Value::String(value)) => {
                if value.is_empty() || value.chars().count() > WRITE_ONLY_MAX_CHARS {
                    return Err(ApiError::invalid(
                        slot.field,
                        format!("must be 1 to {WRITE_ONLY_MAX_CHARS} characters"),
                    ));
                }
                values.insert(slot.field.to_owned(), Some(value));
            }
            Some(_) => return Err(ApiError::invalid(slot.field, "must be a string")),
        }
    }
    Ok(values)
}

/// Seals each value for its owner (the organization, or the platform), bound to this stream and field.
async fn seal(
    state: &AppState,
    organization_id: Option<Uuid>,
    stream: &str,
    values: WriteOnlyValues,
) -> Result<WriteOnlyValues, ApiError> {
    let owner = organization_id.unwrap_or(Uuid::nil());
    let mut sealed = WriteOnlyValues::new();
    for (field, value) in values {
        let value = match value {
            Some(plain) => Some(
                state
                    .secrets
                    .seal(
                        state.executor.pool(),
                        owner,
                        &format!("{stream}/{field}"),
                        &plain,
                    )
                    .await
                    .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("sealing")))?,
            ),
            None => None,
        };
        sealed.insert(field, value);
    }
    Ok(sealed)
}

/// The heads of the referenced streams, each checked to exist and to belong to `organization_id`
/// (or to the platform). A missing organization is `404`, as for environments; anything else the
/// request names is a `400` on its field. Another tenant's resource answers like a missing one.
async fn resolve(
    state: &AppState,
    references: &[Reference],
    organization_id: Option<Uuid>,
) -> Result<Vec<StreamHead>, ApiError> {
    let streams: Vec<String> = references.iter().map(|r| r.stream.clone()).collect();
    let heads = state.executor.stream_heads(&streams).await?;
    for reference in references {
        let usable = heads.iter().any(|head| {
            head.stream_id == reference.stream
                && head.live
                && (head.organization_id.is_none() || head.organization_id == organization_id)
        });
        if usable {
            continue;
        }
        if reference.field == "organizationId" {
            return Err(ApiError::not_found("Organization", reference.id));
        }
        let kind = reference
            .stream
            .split_once('-')
            .map_or("resource", |(kind, _)| kind)
            .replace('_', " ");
        return Err(ApiError::invalid(
            reference.field,
            format!("no {kind} with id {} in this organization", reference.id),
        ));
    }
    Ok(heads)
}

/// Loads a live document, or answers `404`.
async fn load<K: Kind>(
    state: &AppState,
    id: Uuid,
) -> Result<(Loaded<Document<K>>, DocumentData), ApiError> {
    let doc = state.executor.load::<Document<K>>(id).await?;
    match doc.state.state.live.clone() {
        Some(live) => Ok((doc, live)),
        None => Err(ApiError::not_found(K::INFO.label, id)),
    }
}

/// The resource's read shape, with the names of what it refers to taken from their heads.
pub(crate) fn render<K: Kind>(
    doc: &Loaded<Document<K>>,
    heads: &[StreamHead],
) -> Result<Value, ApiError> {
    let live = doc.state.state.live.as_ref().ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("document state missing after a decision"))
    })?;
    let name_of = |kind: &str, id: Option<Uuid>| {
        let stream = format!("{kind}-{}", id?);
        heads
            .iter()
            .find(|h| h.stream_id == stream)
            .and_then(|h| h.name.clone())
    };
    let nested = Nested {
        organization: name_of("organization", live.organization_id()),
        environment: name_of("environment", live.environment_id()),
        model: name_of("model", live.model_id()),
    };
    Ok(view(&K::INFO, live, doc.version, &nested))
}
