//! `POST`, `PUT` and `DELETE` of `/api/environments`.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::EnvironmentView;
use domain::environment::{Environment, EnvironmentChanges, EnvironmentCommand};
use domain::organization::Organization;
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
use crate::{organizations, AppState};

/// Environment names are unique within their organization.
fn name_scope(organization_id: Uuid) -> String {
    format!("environment:{organization_id}")
}

const WITHIN: &str = " in this organization";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateEnvironment {
    organization_id: Uuid,
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateEnvironment {
    #[serde(default, with = "double_option")]
    name: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    description: Option<Option<String>>,
}

pub async fn create(State(state): State<AppState>, write: Write) -> Result<Response, ApiError> {
    write
        .actor
        .authorize_anywhere(Resource::Environments, Action::Create)?;
    let input: CreateEnvironment = write.parse()?;
    let organization_id = input.organization_id;
    let permission = Permission::within(organization_id, Resource::Environments, Action::Create);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", organization_id))?;
    let name = required_name(&input.name)?;
    let description = optional_description(input.description.as_deref())?;
    let id = Uuid::now_v7();
    execute(&state, &write, || {
        create_once(
            &state,
            &write,
            (role, permission),
            id,
            organization_id,
            &name,
            &description,
        )
    })
    .await
}

async fn create_once(
    state: &AppState,
    write: &Write,
    (role, permission): (Role, Permission),
    id: Uuid,
    organization_id: Uuid,
    name: &Name,
    description: &Option<Description>,
) -> Result<Outcome, ApiError> {
    let org = organizations::load_pinned(state, organization_id).await?;
    let organization_name = name_of(&org);
    let mut env = Loaded::<Environment>::new_stream();
    let events = env.state.decide(EnvironmentCommand::Create {
        id,
        organization_id,
        name: name.clone(),
        description: description.clone(),
    })?;
    let events = env.record(
        events,
        &write.metadata(role, Some(organization_id)),
        Utc::now(),
    );
    let stream = Environment::stream_id(id);
    let org_stream = Organization::stream_id(organization_id);
    // The organization must still be the one we loaded (in particular, not deleted) at commit.
    let changes = WriteSet::append(&stream, 0, events)
        .require_version(&org_stream, org.version)
        .claim_name(
            &name_scope(organization_id),
            &name.unique_key(),
            claimant("Environment", name.as_str(), WITHIN),
        )
        .add_reference(&org_stream);
    Ok(
        Outcome::new(201, view(&env, organization_name)?, changes.version_after())
            .located(format!("/api/environments/{id}"))
            .appending(changes, permission),
    )
}

pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    write
        .actor
        .authorize_anywhere(Resource::Environments, Action::Update)?;
    let input: UpdateEnvironment = write.parse()?;
    let changes = EnvironmentChanges {
        name: update_name(input.name.as_ref())?,
        description: update_description(input.description.as_ref())?,
    };
    execute(&state, &write, || update_once(&state, &write, id, &changes)).await
}

async fn update_once(
    state: &AppState,
    write: &Write,
    id: Uuid,
    changes: &EnvironmentChanges,
) -> Result<Outcome, ApiError> {
    let (mut env, organization_id) = load(state, id).await?;
    let permission = Permission::within(organization_id, Resource::Environments, Action::Update);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Environment", id))?;
    write.check_if_match(env.version)?;
    let expected = env.version;
    let old_name = view(&env, String::new())?.name;
    let events = env
        .state
        .decide(EnvironmentCommand::Update(changes.clone()))?;
    if events.is_empty() {
        return Ok(Outcome::new(
            200,
            view(&env, organization_name(state, organization_id).await?)?,
            env.version,
        ));
    }
    // The answer names the organization: the write requires the version that name was read at.
    let org = organizations::load_pinned(state, organization_id).await?;
    let organization_name = name_of(&org);
    let events = env.record(
        events,
        &write.metadata(role, Some(organization_id)),
        Utc::now(),
    );
    let body = view(&env, organization_name)?;
    let stream = Environment::stream_id(id);
    let scope = name_scope(organization_id);
    let mut write_set = WriteSet::append(&stream, expected, events)
        .require_version(&Organization::stream_id(organization_id), org.version);
    if let Some(name) = &changes.name {
        write_set = write_set
            .release_name(&scope, &old_name.to_lowercase())
            .claim_name(
                &scope,
                &name.unique_key(),
                claimant("Environment", name.as_str(), WITHIN),
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
    write
        .actor
        .authorize_anywhere(Resource::Environments, Action::Delete)?;
    execute(&state, &write, || delete_once(&state, &write, id)).await
}

async fn delete_once(state: &AppState, write: &Write, id: Uuid) -> Result<Outcome, ApiError> {
    let (mut env, organization_id) = load(state, id).await?;
    let permission = Permission::within(organization_id, Resource::Environments, Action::Delete);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Environment", id))?;
    write.check_if_match(env.version)?;
    let expected = env.version;
    let name = view(&env, String::new())?.name;
    let events = env.state.decide(EnvironmentCommand::Delete)?;
    let events = env.record(
        events,
        &write.metadata(role, Some(organization_id)),
        Utc::now(),
    );
    let stream = Environment::stream_id(id);
    let org_stream = Organization::stream_id(organization_id);
    let changes = WriteSet::append(&stream, expected, events)
        .refuse_if_referenced()
        .release_name(&name_scope(organization_id), &name.to_lowercase())
        .remove_reference(&org_stream);
    Ok(Outcome::deleted(id, changes.version_after()).appending(changes, permission))
}

/// Loads a live environment and its organization's id, or answers `404`.
async fn load(state: &AppState, id: Uuid) -> Result<(Loaded<Environment>, Uuid), ApiError> {
    let env = state.executor.load::<Environment>(id).await?;
    match env.state.live.as_ref().map(|e| e.organization_id) {
        Some(organization_id) => Ok((env, organization_id)),
        None => Err(ApiError::not_found("Environment", id)),
    }
}

async fn organization_name(state: &AppState, organization_id: Uuid) -> Result<String, ApiError> {
    Ok(name_of(&organizations::load(state, organization_id).await?))
}

fn name_of(org: &Loaded<Organization>) -> String {
    org.state
        .live
        .as_ref()
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

fn view(env: &Loaded<Environment>, organization_name: String) -> Result<EnvironmentView, ApiError> {
    env.state
        .live
        .as_ref()
        .map(|e| EnvironmentView::new(e, organization_name))
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "environment state missing after a successful decision"
            ))
        })
}
