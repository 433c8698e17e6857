//! `POST`, `PUT` and `DELETE` of `/api/organizations`.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::OrganizationView;
use domain::organization::{Organization, OrganizationChanges, OrganizationCommand};
use domain::values::{double_option, Description, Name};
use domain::{Action, Aggregate, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use serde::Deserialize;
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::fields::{
    claimant, optional_description, required_name, update_description, update_name,
};
use crate::AppState;

/// Organization names are unique platform-wide.
const NAME_SCOPE: &str = "organization";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateOrganization {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateOrganization {
    #[serde(default, with = "double_option")]
    name: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    description: Option<Option<String>>,
}

pub async fn create(State(state): State<AppState>, write: Write) -> Result<Response, ApiError> {
    let permission = Permission::platform(Resource::Organizations, Action::Create);
    let role = write.actor.authorize(&permission)?;
    let input: CreateOrganization = write.parse()?;
    let name = required_name(&input.name)?;
    let description = optional_description(input.description.as_deref())?;
    let id = Uuid::now_v7();
    execute(&state, &write, || {
        create_once(&write, (role, permission), id, &name, &description)
    })
    .await
}

async fn create_once(
    write: &Write,
    (role, permission): (Role, Permission),
    id: Uuid,
    name: &Name,
    description: &Option<Description>,
) -> Result<Outcome, ApiError> {
    let mut org = Loaded::<Organization>::new_stream();
    let events = org.state.decide(OrganizationCommand::Create {
        id,
        name: name.clone(),
        description: description.clone(),
    })?;
    let stream = Organization::stream_id(id);
    let events = org.record(events, &write.metadata(role, Some(id)), Utc::now());
    let changes = WriteSet::append(&stream, 0, events).claim_name(
        NAME_SCOPE,
        &name.unique_key(),
        claimant("Organization", name.as_str(), ""),
    );
    Ok(Outcome::new(201, view(&org)?, changes.version_after())
        .located(format!("/api/organizations/{id}"))
        .appending(changes, permission))
}

pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::within(id, Resource::Organizations, Action::Update);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", id))?;
    let input: UpdateOrganization = write.parse()?;
    let changes = OrganizationChanges {
        name: update_name(input.name.as_ref())?,
        description: update_description(input.description.as_ref())?,
    };
    execute(&state, &write, || {
        update_once(&state, &write, (role, permission), id, &changes)
    })
    .await
}

async fn update_once(
    state: &AppState,
    write: &Write,
    (role, permission): (Role, Permission),
    id: Uuid,
    changes: &OrganizationChanges,
) -> Result<Outcome, ApiError> {
    let mut org = load(state, id).await?;
    write.check_if_match(org.version)?;
    let expected = org.version;
    let old_name = view(&org)?.name;
    let events = org
        .state
        .decide(OrganizationCommand::Update(changes.clone()))?;
    if events.is_empty() {
        return Ok(Outcome::new(200, view(&org)?, org.version));
    }
    let events = org.record(events, &write.metadata(role, Some(id)), Utc::now());
    let body = view(&org)?;
    let stream = Organization::stream_id(id);
    let mut write_set = WriteSet::append(&stream, expected, events);
    if let Some(name) = &changes.name {
        write_set = write_set
            .release_name(NAME_SCOPE, &old_name.to_lowercase())
            .claim_name(
                NAME_SCOPE,
                &name.unique_key(),
                claimant("Organization", name.as_str(), ""),
            );
    }
    Ok(Outcome::new(200, body, write_set.version_after()).appending(write_set, permission))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::within(id, Resource::Organizations, Action::Delete);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", id))?;
    execute(&state, &write, || {
        delete_once(&state, &write, (role, permission), id)
    })
    .await
}

async fn delete_once(
    state: &AppState,
    write: &Write,
    (role, permission): (Role, Permission),
    id: Uuid,
) -> Result<Outcome, ApiError> {
    let mut org = load(state, id).await?;
    write.check_if_match(org.version)?;
    let expected = org.version;
    let name = view(&org)?.name;
    let events = org.state.decide(OrganizationCommand::Delete)?;
    let events = org.record(events, &write.metadata(role, Some(id)), Utc::now());
    let stream = Organization::stream_id(id);
    // Its write-only values go with it: they were sealed under its data key, which the deletion
    // destroys (`commands::lookups`). History still shows that they were set, never what they were.
    let changes = WriteSet::append(&stream, expected, events)
        .refuse_if_referenced()
        .release_name(NAME_SCOPE, &name.to_lowercase());
    Ok(Outcome::deleted(id, changes.version_after()).appending(changes, permission))
}

/// Loads a live organization, or answers `404`.
pub async fn load(state: &AppState, id: Uuid) -> Result<Loaded<Organization>, ApiError> {
    live(id, state.executor.load::<Organization>(id).await?)
}

/// As [`load`], for a command whose write requires the version returned (`require_version`): the
/// executor may answer from a state it folded earlier (`commands::Executor::load_pinned`).
pub async fn load_pinned(state: &AppState, id: Uuid) -> Result<Loaded<Organization>, ApiError> {
    live(id, state.executor.load_pinned::<Organization>(id).await?)
}

fn live(id: Uuid, org: Loaded<Organization>) -> Result<Loaded<Organization>, ApiError> {
    if org.state.live.is_none() {
        return Err(ApiError::not_found("Organization", id));
    }
    Ok(org)
}

fn view(org: &Loaded<Organization>) -> Result<OrganizationView, ApiError> {
    org.state
        .live
        .as_ref()
        .map(OrganizationView::from)
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "organization state missing after a successful decision"
            ))
        })
}
