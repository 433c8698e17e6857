//! Organizations' budgets (System only): `PUT /api/v1/admin/organizations/{id}/budget` sets one
//! (`{monthlyLimit, currency, alertAt?, hardStop?}`), `DELETE …/budget` removes it. Each is recorded
//! on the organization's `budget-<id>` stream; the write path keeps what the hard stop reads
//! (`commands::lookups`) and the `notifications` projection raises the usage alerts.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use contracts::views::BudgetView;
use domain::budget::{Budget, BudgetCommand, Limits};
use domain::organization::Organization;
use domain::{Action, Aggregate, DomainError, Loaded, Permission, Resource, Role};
use http_layer::ApiError;
use uuid::Uuid;

use crate::command::execute;
use crate::extract::{parse_id, Write};
use crate::{organizations, AppState};

pub async fn set(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let limits = write.parse::<Limits>()?.checked()?;
    let (state, write, limits) = (&state, &write, &limits);
    execute(state, write, || async move {
        let command = BudgetCommand::Set {
            organization_id: id,
            limits: limits.clone(),
        };
        let (budget, changes) = decide(state, write, id, command).await?;
        let limits = budget.state.limits.as_ref().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("a budget missing after it was set"))
        })?;
        let updated_at = budget.state.updated_at.unwrap_or_else(Utc::now);
        let body = BudgetView::new(id, limits, updated_at);
        let outcome = Outcome::new(200, body, budget.version);
        Ok(match changes {
            Some(changes) => outcome.appending(changes, permission),
            None => outcome,
        })
    })
    .await
}

pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Delete);
    write.actor.authorize(&permission)?;
    let (state, write) = (&state, &write);
    execute(state, write, || async move {
        let (budget, changes) = decide(state, write, id, BudgetCommand::Remove).await?;
        let outcome = Outcome::deleted(id, budget.version);
        Ok(match changes {
            Some(changes) => outcome.appending(changes, permission),
            None => outcome,
        })
    })
    .await
}

/// Decides `command` on the organization's budget: the budget after it, and the write (none when
/// nothing changes). The organization must exist when the write commits: a deletion waits for it,
/// and takes the budget with it.
async fn decide(
    state: &AppState,
    write: &Write,
    id: Uuid,
    command: BudgetCommand,
) -> Result<(Loaded<Budget>, Option<WriteSet>), ApiError> {
    let org = organizations::load_pinned(state, id).await?;
    let mut budget = state.executor.load::<Budget>(id).await?;
    write.check_if_match(budget.version)?;
    let expected = budget.version;
    let events = budget.state.decide(command).map_err(|error| match error {
        DomainError::NotFound => ApiError::NotFound {
            error: "Budget not found".into(),
            details: format!("organization {id} has no budget"),
        },
        other => other.into(),
    })?;
    if events.is_empty() {
        return Ok((budget, None));
    }
    let events = budget.record(events, &write.metadata(Role::System, Some(id)), Utc::now());
    let changes = WriteSet::append(&Budget::stream_id(id), expected, events)
        .require_version(&Organization::stream_id(id), org.version);
    Ok((budget, Some(changes)))
}
