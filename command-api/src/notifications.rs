//! What operators do about platform alerts (System only): `POST
//! /api/v1/admin/notifications/{id}/acknowledge` and `…/resolve`, recorded on the alert's
//! `notification-<id>` stream with who and when. The alert must be one the operator can see (in the
//! `notifications` read model); both may be repeated, as an alert may fire again.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use domain::notification::{Notification, NotificationCommand};
use domain::{Action, Aggregate, Permission, Resource, Role};
use http_layer::ApiError;
use serde_json::json;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::AppState;

pub async fn acknowledge(
    state: State<AppState>,
    id: Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    handle(state, id, write, NotificationCommand::Acknowledge).await
}

pub async fn resolve(
    state: State<AppState>,
    id: Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    handle(state, id, write, NotificationCommand::Resolve).await
}

async fn handle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
    command: NotificationCommand,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM read_models.notifications WHERE id = $1)")
            .bind(id)
            .fetch_one(state.executor.pool())
            .await?;
    if !exists {
        return Err(ApiError::not_found("Notification", id));
    }
    let (state, write) = (&state, &write);
    execute(state, write, || async move {
        let mut alert = state.executor.load::<Notification>(id).await?;
        write.check_if_match(alert.version)?;
        let expected = alert.version;
        let events = alert.state.decide(command)?;
        let events = alert.record(events, &write.metadata(Role::System, None), Utc::now());
        let changes = WriteSet::append(&Notification::stream_id(id), expected, events);
        let body = json!({
            "id": id,
            "acknowledgedAt": alert.state.acknowledged_at.map(api_time),
            "resolvedAt": alert.state.resolved_at.map(api_time),
        });
        Ok(Outcome::new(200, body, changes.version_after()).appending(changes, permission))
    })
    .await
}

fn api_time(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
