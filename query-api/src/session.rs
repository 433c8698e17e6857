//! `GET /api/auth/session`: who the caller is, whether it holds the System role, and its memberships
//! with their organizations' names (contract §2, `events/docs/contract.md`).

use axum::extract::State;
use axum::Json;
use contracts::read_models::TENANTS;
use http_layer::ApiError;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::Caller;
use crate::AppState;

pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    consistency: ReadConsistency,
) -> Result<Json<Value>, ApiError> {
    // Memberships come from the caller's access lookups (current); names from the read model.
    state.consistency.wait(TENANTS, consistency).await?;
    let organizations: Vec<Uuid> = caller.actor.memberships.keys().copied().collect();
    let names: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, name FROM read_models.organizations WHERE id = ANY($1) ORDER BY lower(name), id",
    )
    .bind(&organizations)
    .fetch_all(&state.pool)
    .await?;
    let memberships: Vec<Value> = names
        .into_iter()
        .filter_map(|(id, name)| {
            let role = caller.actor.memberships.get(&id)?;
            Some(json!({ "organizationId": id, "organizationName": name, "role": role }))
        })
        .collect();
    Ok(Json(json!({
        "user": {
            "id": caller.actor.user_id,
            "email": caller.email,
            "name": caller.name,
        },
        "systemRole": caller.actor.system,
        "memberships": memberships,
    })))
}
