//! `POST /api/v1/admin/models/{id}/probe` (System only): sends a model, or a system model visible or
//! not, a minimal request (a one-word prompt, at most one token back) through the same outbound path
//! executions take (`crate::providers`, with its address guard and timeouts), and records what it
//! found on the model's `model_probe-<id>` stream: whether it answered, how fast, the provider's
//! status and its error, with credentials scrubbed as for executions. A probe is not an execution:
//! it counts toward no usage or budget. The model catalog's health shows each model's latest probe.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use commands::{Outcome, WriteSet};
use domain::execution::Parameters;
use domain::model_probe::{ModelProbe, ProbeResult};
use domain::{Action, Aggregate, Permission, Resource, Role};
use http_layer::ApiError;
use serde_json::json;
use tokio::sync::mpsc;

use crate::command::execute;
use crate::executions::load_model;
use crate::extract::{parse_id, Write};
use crate::providers::Call;
use crate::AppState;

/// What a probe asks.
const PROMPT: &str = "ping";

pub async fn probe(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let permission = Permission::platform(Resource::Operations, Action::Update);
    write.actor.authorize(&permission)?;
    let Some((target, organization_id, _)) = load_model(&state, id).await? else {
        return Err(ApiError::not_found("Model", id));
    };
    let parameters = Parameters {
        max_tokens: Some(1),
        ..Parameters::default()
    };
    let call = Call {
        provider: target.provider,
        url: target.url.clone(),
        model: &target.provider_model,
        credential: target.credential.as_deref(),
        prompt: PROMPT,
        parameters: &parameters,
        stream: false,
    };
    let (deltas, _ignored) = mpsc::channel(1);
    let started = Instant::now();
    let answered = state.executions.models.call(&call, &deltas).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let result = match answered {
        Ok(_) => ProbeResult {
            organization_id,
            ok: true,
            latency_ms,
            provider_status: None,
            error: None,
        },
        Err(failure) => ProbeResult {
            organization_id,
            ok: false,
            latency_ms,
            provider_status: failure.provider_status,
            error: Some(failure.message),
        },
    };
    let (state, write, result) = (&state, &write, &result);
    execute(state, write, || async move {
        let mut probes = state.executor.load::<ModelProbe>(id).await?;
        let expected = probes.version;
        let events = probes.state.decide(result.clone())?;
        let events = probes.record(events, &write.metadata(Role::System, organization_id), Utc::now());
        let changes = WriteSet::append(&ModelProbe::stream_id(id), expected, events);
        let body = json!({
            "modelId": id,
            "ok": result.ok,
            "latencyMs": result.latency_ms,
            "providerStatus": result.provider_status,
            "error": result.error,
            "probedAt": probes.state.probed_at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
        Ok(Outcome::new(200, body, probes.version).appending(changes, permission))
    })
    .await
}
