//! `PUT` and `DELETE` of `/api/users/{id}/system-role`: a System user grants or revokes the System
//! role. Subjects listed in `SYSTEM_ADMINS` hold it regardless of what is recorded here.
//!
//! `DELETE /api/users/{id}`: a System user erases a user. Its memberships are removed first (each an
//! ordinary `member.removed`, refused with `409` for an organization's last admin before anything is
//! removed); then `user.erased` is appended with the destruction of the key that seals the user's
//! personal data (`events::personal`), its access lookups and its sessions, in one transaction.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use events::store::WriteSet;
use events::user::{User, UserCommand};
use events::views::UserView;
use events::{Action, Aggregate, Permission, Resource};
use http_layer::ApiError;

use crate::command::{execute, Outcome};
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
        let view = |user: &events::Loaded<User>| {
            user.state.live.as_ref().map(UserView::from).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("user state missing after a decision"))
            })
        };
        if events.is_empty() {
            return Ok(Outcome::new(StatusCode::OK, view(&user)?, user.version));
        }
        let events = user.record(events, &write.metadata(role, None), Utc::now());
        let changes = WriteSet::append(&User::stream_id(id), expected, events);
        Outcome::new(StatusCode::OK, view(&user)?, changes.version_after())
            .commit(state, changes, write, permission)
            .await
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
        for removal in removals_of(state, write, role, id).await? {
            state.store.commit(removal).await?;
        }
        let expected = user.version;
        let events = user.state.decide(UserCommand::Erase)?;
        let events = user.record(events, &write.metadata(role, None), Utc::now());
        // Refused while a membership is left (one added meanwhile): the command then runs again.
        let changes = WriteSet::append(&User::stream_id(id), expected, events);
        Outcome::deleted(id, changes.version_after())
            .commit(state, changes, write, permission)
            .await
    })
    .await
}
