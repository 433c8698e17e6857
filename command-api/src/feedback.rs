//! Feedback writes: `POST /api/feedback` (any member of the organization reports something), and the
//! operator surface's workflow moves, `POST /api/v1/admin/feedback/{id}/transitions` for one
//! submission and `POST /api/v1/admin/feedback/groups/{id}/transitions` for a whole group
//! (System only).

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::FeedbackItem;
use domain::feedback::{Feedback, FeedbackCommand, Severity, Source, Submission, TriageState};
use domain::user::User;
use domain::{Action, Aggregate, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::{organizations, AppState};

/// The most submissions one group move changes; the answer says how many remain.
pub const GROUP_MOVE_MAX: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubmitFeedback {
    organization_id: Uuid,
    message: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Transition {
    to: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    assignee_id: Option<Uuid>,
}

pub async fn submit(State(state): State<AppState>, write: Write) -> Result<Response, ApiError> {
    write
        .actor
        .authorize_anywhere(Resource::Feedback, Action::Create)?;
    let input: SubmitFeedback = write.parse()?;
    let organization_id = input.organization_id;
    let permission = Permission::within(organization_id, Resource::Feedback, Action::Create);
    let role = write
        .actor
        .authorize(&permission)
        .map_err(ApiError::denied("Organization", organization_id))?;
    let severity = input
        .severity
        .as_deref()
        .map(|text| {
            Severity::parse(text).ok_or_else(|| {
                ApiError::invalid("severity", "must be one of low, medium, high, critical")
            })
        })
        .transpose()?;
    let submission = Submission {
        id: Uuid::now_v7(),
        organization_id: Some(organization_id),
        source: Source::User,
        message: input.message,
        category: input.category,
        severity,
        page: input.page,
        metadata: input.metadata,
        classify: state.classify_feedback,
    };
    execute(&state, &write, || async {
        // A System user may name any organization: it must exist.
        organizations::load(&state, organization_id).await?;
        let metadata = write.metadata(role, Some(organization_id));
        let mut item = Loaded::<Feedback>::new_stream();
        let events = item
            .state
            .decide(FeedbackCommand::Submit(submission.clone()))?;
        let events = item.record(events, &metadata, Utc::now());
        let data = item.state.live.as_ref().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("feedback missing after its submission"))
        })?;
        let changes = WriteSet::append(&Feedback::stream_id(submission.id), 0, events);
        Ok(Outcome::new(
            201,
            FeedbackItem::new(data, &metadata),
            changes.version_after(),
        )
        .located(format!("/api/v1/admin/feedback/{}", submission.id))
        .appending(changes, permission))
    })
    .await
}

pub async fn transition(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let (to, note, assignee_id) = parse_transition(&state, &write).await?;
    execute(&state, &write, || async {
        let mut item = load(&state, id).await?;
        write.check_if_match(item.version)?;
        let expected = item.version;
        let events = item.state.decide(FeedbackCommand::Transition {
            to,
            note: note.clone(),
            assignee_id,
        })?;
        let events = item.record(events, &write.metadata(Role::System, None), Utc::now());
        let changes = WriteSet::append(&Feedback::stream_id(id), expected, events);
        Ok(
            Outcome::new(200, moved_view(&item)?, changes.version_after())
                .appending(changes, permission),
        )
    })
    .await
}

/// Moves every submission of a group that is not already there. Archived submissions stay archived
/// unless the group is reopened (`to: open`); if any other submission cannot make the move, nothing
/// moves (`409`). At most [`GROUP_MOVE_MAX`] move per request: `remaining` says how many are left.
pub async fn transition_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let group_id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let (to, note, assignee_id) = parse_transition(&state, &write).await?;
    let members: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM read_models.feedback WHERE group_id = $1 ORDER BY created_at, id",
    )
    .bind(group_id)
    .fetch_all(state.executor.pool())
    .await?;
    if members.is_empty() {
        return Err(ApiError::not_found("Feedback group", group_id));
    }
    let write = write.without_if_match();
    execute(&state, &write, || async {
        let metadata = write.metadata(Role::System, None);
        let mut writes = Vec::new();
        let mut moved = Vec::new();
        let mut skipped = Vec::new();
        let mut refused = Vec::new();
        for id in &members {
            let mut item = load(&state, *id).await?;
            let current = item.state.live.as_ref().map(|i| i.state);
            let stays = current == Some(to)
                || (current == Some(TriageState::Archived) && to != TriageState::Open);
            if stays {
                skipped.push(*id);
                continue;
            }
            if moved.len() == GROUP_MOVE_MAX {
                continue;
            }
            let expected = item.version;
            match item.state.decide(FeedbackCommand::Transition {
                to,
                note: note.clone(),
                assignee_id,
            }) {
                Ok(events) => {
                    let events = item.record(events, &metadata, Utc::now());
                    writes.push(WriteSet::append(
                        &Feedback::stream_id(*id),
                        expected,
                        events,
                    ));
                    moved.push(*id);
                }
                Err(_) => refused.push(format!(
                    "{id} is {}",
                    current.map_or("missing", TriageState::as_str)
                )),
            }
        }
        if !refused.is_empty() {
            return Err(ApiError::Conflict {
                error: "Invalid transition".into(),
                details: format!("cannot move to {}: {}", to.as_str(), refused.join(", ")),
            });
        }
        let remaining = members.len() - moved.len() - skipped.len();
        let body = json!({
            "groupId": group_id,
            "to": to,
            "moved": moved,
            "skipped": skipped,
            "remaining": remaining,
        });
        let Some(last) = writes.pop() else {
            return Ok(Outcome::new(200, body, 0));
        };
        Ok(Outcome::new(200, body, last.version_after())
            .preceded_by(writes)
            .appending(last, permission))
    })
    .await
}

/// The move a transition request asks for; an assignee must be a user of the platform.
async fn parse_transition(
    state: &AppState,
    write: &Write,
) -> Result<(TriageState, Option<String>, Option<Uuid>), ApiError> {
    let input: Transition = write.parse()?;
    let to = TriageState::parse(&input.to).ok_or_else(|| {
        ApiError::invalid(
            "to",
            "must be one of open, triaged, in_progress, done, archived",
        )
    })?;
    if let Some(assignee) = input.assignee_id {
        let user = state.executor.load::<User>(assignee).await?;
        if user.state.live.is_none() {
            return Err(ApiError::invalid(
                "assigneeId",
                format!("{assignee} is not a user of the platform"),
            ));
        }
    }
    Ok((to, input.note, input.assignee_id))
}

async fn load(state: &AppState, id: Uuid) -> Result<Loaded<Feedback>, ApiError> {
    let item = state.executor.load::<Feedback>(id).await?;
    if item.state.live.is_none() {
        return Err(ApiError::not_found("Feedback", id));
    }
    Ok(item)
}

/// The answer to a move: the submission's workflow fields after it.
fn moved_view(item: &Loaded<Feedback>) -> Result<Value, ApiError> {
    let data = item
        .state
        .live
        .as_ref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("feedback missing after a move")))?;
    Ok(json!({
        "id": data.id,
        "state": data.state,
        "assigneeId": data.assignee_id,
        "updatedAt": data.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}
