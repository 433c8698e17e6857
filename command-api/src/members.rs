//! `POST /api/organizations/{id}/members`, and `PUT` and `DELETE` of
//! `/api/organizations/{id}/members/{userId}`: who belongs to an organization, in which role.
//!
//! All of an organization's memberships are one stream, so its version is the `ETag` of every member
//! write, and the last-admin rule is decided against the whole membership (see `domain::members`).

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::MemberView;
use domain::members::{Members, MembersCommand};
use domain::organization::Organization;
use domain::user::{User, UserData};
use domain::{Action, Aggregate, DomainError, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use serde::Deserialize;
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::{organizations, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddMember {
    #[serde(default)]
    user_id: Option<Uuid>,
    #[serde(default)]
    email: Option<String>,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangeRole {
    role: String,
}

pub async fn add(
    State(state): State<AppState>,
    Path(organization_id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let organization_id = parse_id(&organization_id)?;
    let (role, permission) = authorize(&write, organization_id, Action::Create)?;
    let input: AddMember = write.parse()?;
    let member_role = assignable_role(&input.role)?;
    let user_id = match (input.user_id, input.email.as_deref()) {
        (Some(user_id), None) => user_id,
        (None, Some(email)) => user_by_email(&state, email).await?,
        _ => {
            return Err(ApiError::invalid(
                "userId",
                "send either userId or email, not both",
            ))
        }
    };
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let user = load_user(state, user_id).await?;
        let command = MembersCommand::Add {
            user_id,
            role: member_role,
        };
        let (members, changes) = decide(state, write, role, organization_id, command).await?;
        let changes = changes
            .expect("adding a member always appends")
            .require_version(&User::stream_id(user_id), user.version);
        Ok(Outcome::new(
            201,
            view(organization_id, &user, &members)?,
            changes.version_after(),
        )
        .located(format!(
            "/api/organizations/{organization_id}/members/{user_id}"
        ))
        .appending(changes, permission))
    })
    .await
}

pub async fn change_role(
    State(state): State<AppState>,
    Path((organization_id, user_id)): Path<(String, String)>,
    write: Write,
) -> Result<Response, ApiError> {
    let organization_id = parse_id(&organization_id)?;
    let user_id = parse_id(&user_id)?;
    let (role, permission) = authorize(&write, organization_id, Action::Update)?;
    let input: ChangeRole = write.parse()?;
    let member_role = assignable_role(&input.role)?;
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let user = load_user(state, user_id).await?;
        let command = MembersCommand::ChangeRole {
            user_id,
            role: member_role,
        };
        let (members, changes) = decide(state, write, role, organization_id, command).await?;
        let body = view(organization_id, &user, &members)?;
        match changes {
            None => Ok(Outcome::new(200, body, members.version)),
            Some(changes) => {
                Ok(Outcome::new(200, body, changes.version_after()).appending(changes, permission))
            }
        }
    })
    .await
}

pub async fn remove(
    State(state): State<AppState>,
    Path((organization_id, user_id)): Path<(String, String)>,
    write: Write,
) -> Result<Response, ApiError> {
    let organization_id = parse_id(&organization_id)?;
    let user_id = parse_id(&user_id)?;
    let (role, permission) = authorize(&write, organization_id, Action::Delete)?;
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let command = MembersCommand::Remove { user_id };
        let (_, changes) = decide(state, write, role, organization_id, command).await?;
        let changes = changes.expect("removing a member always appends");
        Ok(Outcome::deleted(user_id, changes.version_after()).appending(changes, permission))
    })
    .await
}

/// The writes that remove `user_id` from every organization it belongs to (for erasing the user), all
/// decided before any is committed, so that a refusal (the user is an organization's last admin)
/// changes nothing.
pub async fn removals_of(
    state: &AppState,
    write: &Write,
    role: Role,
    user_id: Uuid,
) -> Result<Vec<WriteSet>, ApiError> {
    let organizations: Vec<Uuid> = sqlx::query_scalar(
        "SELECT organization_id FROM access_memberships WHERE user_id = $1 ORDER BY organization_id",
    )
    .bind(user_id)
    .fetch_all(state.executor.pool())
    .await?;
    // The erasure's `If-Match` pins the user, not the memberships it removes.
    let write = &write.without_if_match();
    let mut removals = Vec::with_capacity(organizations.len());
    for organization_id in organizations {
        let command = MembersCommand::Remove { user_id };
        let (_, changes) = decide(state, write, role, organization_id, command)
            .await
            .map_err(|error| match error {
                ApiError::Conflict { error, .. } => ApiError::Conflict {
                    error,
                    details: format!(
                        "user {user_id} is the last admin of organization {organization_id}: make \
                         another member an admin first, or delete the organization"
                    ),
                },
                other => other,
            })?;
        removals.extend(changes);
    }
    Ok(removals)
}

/// Loads the organization's memberships (the organization must exist; `If-Match` pins their version)
/// and decides `command`. The write, if the command changes anything, appends to the memberships at
/// the version loaded and requires the organization to be still alive when it commits.
async fn decide(
    state: &AppState,
    write: &Write,
    role: Role,
    organization_id: Uuid,
    command: MembersCommand,
) -> Result<(Loaded<Members>, Option<WriteSet>), ApiError> {
    let user_id = match &command {
        MembersCommand::Add { user_id, .. }
        | MembersCommand::ChangeRole { user_id, .. }
        | MembersCommand::Remove { user_id } => *user_id,
    };
    let org = organizations::load_pinned(state, organization_id).await?;
    let mut members = state.executor.load::<Members>(organization_id).await?;
    write.check_if_match(members.version)?;
    let expected = members.version;
    let events = members.state.decide(command).map_err(|error| match error {
        DomainError::AlreadyExists => ApiError::Conflict {
            error: "Already a member".into(),
            details: format!(
                "user {user_id} is already a member of this organization; change the role with PUT"
            ),
        },
        DomainError::NotFound => ApiError::not_found("Member", user_id),
        other => other.into(),
    })?;
    if events.is_empty() {
        return Ok((members, None));
    }
    let metadata = write.metadata(role, Some(organization_id));
    let events = members.record(events, &metadata, Utc::now());
    let changes = WriteSet::append(&Members::stream_id(organization_id), expected, events)
        .require_version(&Organization::stream_id(organization_id), org.version);
    Ok((members, Some(changes)))
}

/// The caller's role for `action` on the organization's members, and the permission that granted it.
fn authorize(
    write: &Write,
    organization_id: Uuid,
    action: Action,
) -> Result<(Role, Permission), ApiError> {
    let permission = Permission::within(organization_id, Resource::Members, action);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", organization_id))?;
    Ok((role, permission))
}

/// `admin`, `user` or `guest`; System is granted platform-wide, not through a membership.
fn assignable_role(raw: &str) -> Result<Role, ApiError> {
    Role::ASSIGNABLE
        .into_iter()
        .find(|role| role.to_string() == raw)
        .ok_or_else(|| {
            ApiError::invalid("role", format!("{raw:?} is not one of admin, user, guest"))
        })
}

/// The one user who signed in with `email` (compared case-insensitively).
async fn user_by_email(state: &AppState, email: &str) -> Result<Uuid, ApiError> {
    let users: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM access_users WHERE lower(email) = lower($1) ORDER BY user_id LIMIT 2",
    )
    .bind(email.trim())
    .fetch_all(state.executor.pool())
    .await?;
    match users.as_slice() {
        [user_id] => Ok(*user_id),
        [] => Err(ApiError::NotFound {
            error: "User not found".into(),
            details: format!("email: no user with email {email:?} has signed in yet; a user is known from their first sign-in"),
        }),
        _ => Err(ApiError::Conflict {
            error: "Ambiguous email".into(),
            details: format!("email: several users signed in with {email:?}; add the member by userId"),
        }),
    }
}

/// Loads a registered user, or answers `404`.
pub async fn load_user(state: &AppState, id: Uuid) -> Result<Loaded<User>, ApiError> {
    let user = state.executor.load::<User>(id).await?;
    if user.state.live.is_none() {
        return Err(ApiError::not_found("User", id));
    }
    Ok(user)
}

fn view(
    organization_id: Uuid,
    user: &Loaded<User>,
    members: &Loaded<Members>,
) -> Result<MemberView, ApiError> {
    let missing = || ApiError::Internal(anyhow::anyhow!("member state missing after a decision"));
    let user: &UserData = user.state.live.as_ref().ok_or_else(missing)?;
    let membership = members.state.members.get(&user.id).ok_or_else(missing)?;
    Ok(MemberView::new(organization_id, user, membership))
}
