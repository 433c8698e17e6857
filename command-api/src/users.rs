//! `PUT` and `DELETE` of `/api/users/{id}/system-role`: a System user grants or revokes the System
//! role. Subjects listed in `SYSTEM_ADMINS` hold it regardless of what is recorded here.
//!
//! `DELETE /api/users/{id}`: a System user erases a user. Its memberships are removed first (each an
//! ordinary `member.removed`, refused with `409` for an organization's last admin before anything is
//! removed); then `user.erased` is appended with the destruction of the key that seals the user's
//! personal data (`event_log::personal`), its access lookups and its sessions, in one transaction.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::UserView;
use domain::user::{User, UserCommand};
use domain::{Action, Aggregate, Permission, Resource};
use http_layer::ApiError;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::members::{load_user, removals_of};
use crate::AppState;

pub async fn grant_system_role(
    state: State<AppState>,
    id: Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    change_system_role(state, id, write, || UserCommand::GrantSystemRole).await
}

pub async fn revoke_system_role(
    state: State<AppState>,
    id: Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    change_system_role(state, id, write, || UserCommand::RevokeSystemRole).await
}

async fn change_system_role(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
    command: fn() -> UserCommand,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Users, Action::Update);
    let role = write.actor.authorize(&permission)?;
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let mut user = load_user(state, id).await?;
        write.check_if_match(user.version)?;
        let expected = user.version;
        let events = user.state.decide(command())?;
        let view = |user: &domain::Loaded<User>| {
            user.state.live.as_ref().map(UserView::from).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("user state missing after a decision"))
            })
        };
        if events.is_empty() {
            return Ok(Outcome::new(200, view(&user)?, user.version));
        }
        let events = user.record(events, &write.metadata(role, None), Utc::now());
        let changes = WriteSet::append(&User::stream_id(id), expected, events);
        Ok(Outcome::new(200, view(&user)?, changes.version_after()).appending(changes, permission))
    })
    .await
}

pub async fn erase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Users, Action::Delete);
    let role = write.actor.authorize(&permission)?;
    let (state, write) = (&state, &write);
    execute(state, write, move || async move {
        let mut user = load_user(state, id).await?;
        write.check_if_match(user.version)?;
        let removals = removals_of(state, write, role, id).await?;
        let expected = user.version;
        let events = user.state.decide(UserCommand::Erase)?;
        let events = user.record(events, &write.metadata(role, None), Utc::now());
        // Refused while a membership is left (one added meanwhile): the command then runs again.
        let changes = WriteSet::append(&User::stream_id(id), expected, events);
        Ok(Outcome::deleted(id, changes.version_after())
            .preceded_by(removals)
            .appending(changes, permission))
    })
    .await
}
