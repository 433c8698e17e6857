//! `POST /api/prompt-templates/{id}/execute`: a template, filled with a variable set and the request's
//! values, sent to a model, answered as JSON or as Server-Sent Events, and recorded.
//!
//! The edge parses and authorises (`entities:read` in the template's organization), renders the
//! template's text at the requested version strictly ([`domain::execution::render`]) and resolves the
//! model: the request's `modelId` or the template's, a model of the same organization or a visible
//! system model. The model's credential is unsealed here, for this call only, and lives in no event,
//! answer or log line. Then the execution is recorded as requested (through the executor, with the
//! request's idempotency key), the call runs in a task of its own ([`crate::providers`]), and its end
//! is recorded as succeeded or failed. Without an idempotency key the request is committed while the
//! call runs, so that its commit adds no latency ([`start`]). The task watches the client: when the client goes away (the
//! response is dropped), the call is cancelled and the execution recorded as cancelled.
//!
//! Each organization may run at most `EXECUTIONS_PER_ORGANIZATION` executions at once in this
//! process; past that, `429`.
//!
//! An organization whose budget has a hard stop may start an execution only while what its finished
//! executions cost this UTC month, in the budget's currency, is below the limit; past it, `402`. The
//! spend is committed with each execution's end (`commands::lookups`), so the check sees every
//! finished execution. Executions already running when the limit is reached finish and count: the
//! overspend is at most what the executions in flight at that moment cost, one per slot of the cap
//! above in each command-api process.
//!
//! A request repeated with the same `Idempotency-Key` does not call the model again: it gets the
//! recorded execution's answer, or `409` while it is still running.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::{ACCEPT, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use commands::executor::CONSISTENCY_TOKEN;
use commands::{Answer, Caller, Outcome, WriteSet};
use domain::budget;
use domain::catalog::kinds::{Model, PromptTemplate, PromptTemplateFields, Provider, SystemModel};
use domain::catalog::{Change, Document, DocumentData, DocumentState, Kind};
use domain::execution::{
    self, render, Execution, ExecutionCommand, ExecutionData, ExecutionEvent, FailureReason,
    ModelKind, Parameters, Price, Purpose,
};
use domain::{Action, Actor, Aggregate, Loaded, Permission, Resource, Role};
use futures::Stream;
use http_layer::ApiError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::extract::{parse_id, Write};
use crate::providers::{Call, CallFailure, ModelClient, Reply};
use crate::AppState;

/// The request body; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecuteRequest {
    /// A variable set of the template, by name.
    pub variable_set: Option<String>,
    /// Values that override the set's.
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// The template version to run (default: the current one).
    pub version: Option<i64>,
    /// Another model of the organization, or a visible system model.
    pub model_id: Option<Uuid>,
    #[serde(default)]
    pub parameters: Parameters,
    /// Answer with Server-Sent Events (as `Accept: text/event-stream` does).
    pub stream: Option<bool>,
}

/// What executions need at run time: the model client and the per-organization cap.
#[derive(Clone)]
pub struct Executions {
    pub models: ModelClient,
    running: Running,
}

impl Executions {
    pub fn new(models: ModelClient, per_organization: usize) -> Self {
        Executions {
            models,
            running: Running {
                counts: Arc::default(),
                cap: per_organization,
            },
        }
    }
}

/// Executions running in this process, per organization.
#[derive(Clone)]
struct Running {
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
    cap: usize,
}

/// One running execution's place under its organization's cap, given back when dropped.
struct Slot {
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
    organization: Uuid,
}

impl Running {
    fn try_start(&self, organization: Uuid) -> Result<Slot, ApiError> {
        let mut counts = self
            .counts
            .lock()
            .expect("the running counts are never poisoned");
        let count = counts.entry(organization).or_default();
        if *count >= self.cap {
            return Err(ApiError::TooManyRequests {
                details: format!(
                    "this organization already runs {} executions, the most it may run at once",
                    self.cap
                ),
                retry_after_seconds: 1,
            });
        }
        *count += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            organization,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .expect("the running counts are never poisoned");
        if let Some(count) = counts.get_mut(&self.organization) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.organization);
            }
        }
    }
}

/// A model ready to call.
pub struct Target {
    pub id: Uuid,
    pub kind: ModelKind,
    pub provider: Provider,
    pub provider_model: String,
    pub url: reqwest::Url,
    pub price: Option<Price>,
    /// Unsealed for this call only.
    pub credential: Option<String>,
}

/// Everything an execution is run from, checked.
pub struct Prepared {
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub template_id: Uuid,
    pub template_version: i64,
    pub prompt: String,
    pub parameters: Parameters,
    pub target: Target,
    pub purpose: Purpose,
    pub role: Role,
}

pub async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    write
        .actor
        .authorize_anywhere(Resource::Entities, Action::Read)?;
    let request: ExecuteRequest = write.parse_or_default()?;
    request.parameters.check()?;
    if request.version.is_some_and(|n| n < 1) {
        return Err(ApiError::invalid("version", "must be a positive integer"));
    }
    let stream = request
        .stream
        .unwrap_or_else(|| accepts_event_stream(&headers));
    let (template, role) = load_template(&state, &write.actor, id).await?;
    let fields = template_at(&state, id, &template, request.version).await?;
    let version = request
        .version
        .unwrap_or(template.data.content_version(template.version));
    let values = values(&fields, &request)?;
    let prompt = render(&fields.prompt_text, &values).map_err(|missing| {
        ApiError::invalid("variables", format!("no value for {}", missing.join(", ")))
    })?;
    let model_id = request
        .model_id
        .or(fields.model_id)
        .ok_or_else(|| ApiError::invalid("modelId", "the template names no model; give one"))?;
    let target = resolve_model(&state, fields.organization_id, model_id).await?;
    let prepared = Prepared {
        organization_id: fields.organization_id,
        environment_id: fields.environment_id,
        template_id: id,
        template_version: version,
        prompt,
        parameters: request.parameters,
        target,
        purpose: Purpose::Execution,
        role,
    };
    let started = start(&state, &write, write.caller(), prepared, stream).await?;
    Ok(match started {
        Started::Replayed(response) => response,
        Started::Running(running) if stream => running.into_event_stream().into_response(),
        Started::Running(running) => running.finish().await.into_response(),
    })
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// A live prompt template, as loaded.
pub struct Template {
    pub data: DocumentData,
    /// The stream version it was loaded at.
    pub version: i64,
}

pub async fn load_template(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<(Template, Role), ApiError> {
    let doc = state.executor.load::<Document<PromptTemplate>>(id).await?;
    let data = doc
        .state
        .state
        .live
        .ok_or_else(|| ApiError::not_found(PromptTemplate::INFO.label, id))?;
    let permission = read_permission(data.organization_id());
    let role = actor
        .authorize(&permission)
        .map_err(ApiError::denied(PromptTemplate::INFO.label, id))?;
    Ok((
        Template {
            data,
            version: doc.version,
        },
        role,
    ))
}

/// Running a template, or reading its executions: `entities:read` in its organization.
pub fn read_permission(organization_id: Option<Uuid>) -> Permission {
    Permission {
        organization: organization_id,
        resource: Resource::Entities,
        action: Action::Read,
    }
}

/// The template's fields at `version` (the current ones when `None`), folded from its stream when
/// an older version is asked for.
async fn template_at(
    state: &AppState,
    id: Uuid,
    template: &Template,
    version: Option<i64>,
) -> Result<PromptTemplateFields, ApiError> {
    let current = template.data.content_version(template.version);
    let fields = match version {
        None => template.data.fields.clone(),
        Some(n) if n == current => template.data.fields.clone(),
        Some(n) if n < 1 || n > current => {
            return Err(ApiError::NotFound {
                error: "Version not found".into(),
                details: format!(
                    "prompt template {id} has {current} versions; there is no version {n}"
                ),
            })
        }
        Some(n) => {
            let stream = Document::<PromptTemplate>::stream_id(id);
            let (state, _) =
                fold_document(state, &stream, PromptTemplate::INFO.type_name, n).await?;
            state
                .live
                .map(|live| live.fields)
                .ok_or_else(|| ApiError::not_found(PromptTemplate::INFO.label, id))?
        }
    };
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("stored template fields")))
}

/// A catalog stream folded up to its `content_version`-th created or updated event (all of it with
/// `i64::MAX`), with the sealed write-only values it then held, by field.
async fn fold_document(
    state: &AppState,
    stream: &str,
    type_name: &str,
    content_version: i64,
) -> Result<(DocumentState, BTreeMap<String, String>), ApiError> {
    let events = event_log::read_stream(state.executor.pool(), stream, 0).await?;
    let mut folded = DocumentState::default();
    let mut sealed = BTreeMap::new();
    let mut versions = 0;
    for event in events {
        let action = event
            .event_type
            .strip_prefix(type_name)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_default();
        let change = Change::from_stored(action, &event.data)
            .map_err(|reason| ApiError::Internal(anyhow::anyhow!("{stream}: {reason}")))?;
        match &change {
            Change::Created { secrets, .. } => sealed = secrets.clone(),
            Change::Updated { secrets, .. } => {
                for (field, value) in secrets {
                    match value {
                        Some(value) => sealed.insert(field.clone(), value.clone()),
                        None => sealed.remove(field),
                    };
                }
            }
            Change::Deleted | Change::SentimentAnalyzed { .. } => {}
        }
        let is_version = matches!(change, Change::Created { .. } | Change::Updated { .. });
        change.apply_to(&mut folded, event.recorded_at);
        if is_version {
            versions += 1;
            if versions == content_version {
                break;
            }
        }
    }
    Ok((folded, sealed))
}

/// The named variable set's values, overridden by the request's.
fn values(
    fields: &PromptTemplateFields,
    request: &ExecuteRequest,
) -> Result<Map<String, Value>, ApiError> {
    let mut values = match &request.variable_set {
        None => Map::new(),
        Some(name) => fields
            .variable_sets
            .iter()
            .find(|set| set.name.eq_ignore_ascii_case(name))
            .map(|set| set.values.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    "variableSet",
                    format!("the template has no variable set named {name:?}"),
                )
            })?,
    };
    values.extend(request.variables.clone());
    Ok(values)
}

/// What executions read of a model's or system model's stored fields: how it is called and what it
/// costs (both kinds store them under the same names), and whether a system model is visible.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallingFields {
    name: String,
    model_url: String,
    provider: Option<Provider>,
    provider_model: Option<String>,
    input_price_per_million_tokens: Option<f64>,
    output_price_per_million_tokens: Option<f64>,
    currency: Option<String>,
    #[serde(default)]
    visible: bool,
}

/// The model to call: a live model of `organization_id`, or a visible system model; its credential
/// (`token`) unsealed.
pub async fn resolve_model(
    state: &AppState,
    organization_id: Uuid,
    id: Uuid,
) -> Result<Target, ApiError> {
    let unknown = || {
        ApiError::invalid(
            "modelId",
            format!("no model or visible system model with id {id} in this organization"),
        )
    };
    match load_model(state, id).await? {
        Some((target, owner, visible))
            if owner == Some(organization_id) || (owner.is_none() && visible) =>
        {
            Ok(target)
        }
        _ => Err(unknown()),
    }
}

/// Any live model or system model by id, with its credential unsealed: the target, its organization
/// (none for a system model) and whether it is visible to organizations.
pub async fn load_model(
    state: &AppState,
    id: Uuid,
) -> Result<Option<(Target, Option<Uuid>, bool)>, ApiError> {
    let model_stream = Document::<Model>::stream_id(id);
    let (model, sealed) =
        fold_document(state, &model_stream, Model::INFO.type_name, i64::MAX).await?;
    let (live, kind, owner, stream, sealed) = match model.live {
        Some(live) => {
            let Some(organization_id) = live.organization_id() else {
                return Ok(None);
            };
            (
                live,
                ModelKind::Model,
                organization_id,
                model_stream,
                sealed,
            )
        }
        None => {
            let stream = Document::<SystemModel>::stream_id(id);
            let (system, sealed) =
                fold_document(state, &stream, SystemModel::INFO.type_name, i64::MAX).await?;
            let Some(live) = system.live else {
                return Ok(None);
            };
            // Platform-wide values are sealed for the nil owner (`catalog::seal`).
            (live, ModelKind::SystemModel, Uuid::nil(), stream, sealed)
        }
    };
    let fields: CallingFields = stored_fields(live)?;
    let credential = match sealed.get("token") {
        Some(value) => Some(
            state
                .secrets
                .open(
                    state.executor.pool(),
                    owner,
                    &format!("{stream}/token"),
                    value,
                )
                .await
                .map_err(|e| {
                    ApiError::Internal(
                        anyhow::Error::new(e).context("unsealing a model credential"),
                    )
                })?,
        ),
        None => None,
    };
    let (input, output) = (
        fields.input_price_per_million_tokens,
        fields.output_price_per_million_tokens,
    );
    let price = fields
        .currency
        .filter(|_| input.is_some() || output.is_some())
        .map(|currency| Price {
            currency,
            input_per_million_tokens: input.unwrap_or(0.0),
            output_per_million_tokens: output.unwrap_or(0.0),
        });
    let target = Target {
        id,
        kind,
        provider: fields
            .provider
            .unwrap_or_else(|| Provider::inferred_from(&fields.model_url)),
        provider_model: fields.provider_model.unwrap_or(fields.name),
        url: reqwest::Url::parse(&fields.model_url)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("stored model URL")))?,
        price,
        credential,
    };
    let owner = (kind == ModelKind::Model).then_some(owner);
    Ok(Some((target, owner, fields.visible)))
}

fn stored_fields<T: serde::de::DeserializeOwned>(live: DocumentData) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(live.fields))
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("stored model fields")))
}

/// An execution once recorded as requested, or the kept answer of an earlier request with the same
/// idempotency key.
pub enum Started {
    Replayed(Response),
    Running(RunningExecution),
}

/// A call in flight: its streamed text, then how it ended.
pub struct RunningExecution {
    pub id: Uuid,
    deltas: mpsc::Receiver<String>,
    finished: oneshot::Receiver<Finished>,
}

/// How an execution ended: the executor's answer to recording it (its body is the execution's
/// view), and the failure, if it failed.
pub struct Finished {
    pub answer: Result<Answer, ApiError>,
    pub failure: Option<CallFailure>,
}

/// Records the execution as requested and starts its call (module docs). Without an idempotency
/// key, the call starts at once and the request is committed meanwhile, so that the commit costs no
/// latency; should that commit fail, the call is cancelled and the failure answered. With a key, the
/// request is committed first: a repeat must find it before anything is called.
pub async fn start(
    state: &AppState,
    write: &Write,
    caller: Caller<'_>,
    prepared: Prepared,
    stream: bool,
) -> Result<Started, ApiError> {
    let slot = state
        .executions
        .running
        .try_start(prepared.organization_id)?;
    check_budget(state, prepared.organization_id).await?;
    let id = Uuid::now_v7();
    let metadata = write.metadata(prepared.role, Some(prepared.organization_id));
    let requested = ExecutionEvent::Requested {
        id,
        organization_id: prepared.organization_id,
        environment_id: prepared.environment_id,
        template_id: prepared.template_id,
        template_version: prepared.template_version,
        model_id: prepared.target.id,
        model_kind: prepared.target.kind,
        provider: prepared.target.provider,
        provider_model: prepared.target.provider_model.clone(),
        rendered_prompt: prepared.prompt.clone(),
        parameters: prepared.parameters.clone(),
        price: prepared.target.price.clone(),
        purpose: prepared.purpose,
        streamed: stream,
        requested_by: write.actor.user_id.to_string(),
    };
    // A new stream: decided and recorded once, whatever the commit's retries.
    let mut execution = Loaded::<Execution>::new_stream();
    let events = execution
        .state
        .decide(ExecutionCommand::Request(Box::new(requested)))?;
    let events = execution.record(events, &metadata, Utc::now());
    let mut task = CallTask {
        state: state.clone(),
        actor: write.actor.clone(),
        metadata,
        permission: read_permission(Some(prepared.organization_id)),
        execution,
        requested: Some(WriteSet::append(&Execution::stream_id(id), 0, events)),
        prepared,
        stream,
    };
    if caller.idempotency.is_some() {
        let write = task
            .requested
            .take()
            .expect("the request is not committed yet");
        let answer = commit_request(state, caller, id, &write, task.permission).await?;
        if answer.replayed {
            return replayed(state, &answer).await.map(Started::Replayed);
        }
    }

    let (delta_sender, deltas) = mpsc::channel(64);
    let (finish_sender, finished) = oneshot::channel();
    tokio::spawn(async move {
        let finished = task.run(delta_sender).await;
        drop(slot);
        let _ = finish_sender.send(finished);
    });
    Ok(Started::Running(RunningExecution {
        id,
        deltas,
        finished,
    }))
}

/// Refuses an execution (`402`) while its organization's hard-stopped budget is spent (module docs).
async fn check_budget(state: &AppState, organization: Uuid) -> Result<(), ApiError> {
    let spent: Option<(f64, String, f64)> = sqlx::query_as(
        "SELECT b.monthly_limit::float8, b.currency, s.spent::float8 \
         FROM organization_budgets b JOIN organization_spend s \
           ON s.organization_id = b.organization_id AND s.period = $2 AND s.currency = b.currency \
         WHERE b.organization_id = $1 AND b.hard_stop AND s.spent >= b.monthly_limit",
    )
    .bind(organization)
    .bind(budget::period(Utc::now()))
    .fetch_optional(state.executor.pool())
    .await?;
    match spent {
        None => Ok(()),
        Some((limit, currency, spent)) => Err(ApiError::BudgetExhausted {
            details: format!(
                "this organization has spent {spent} {currency} of its monthly budget of {limit} {currency}, \
                 which stops executions until the next month or a raised limit"
            ),
        }),
    }
}

/// Commits an execution's request; the answer kept under the caller's key names the execution.
async fn commit_request(
    state: &AppState,
    caller: Caller<'_>,
    id: Uuid,
    write: &WriteSet,
    permission: Permission,
) -> Result<Answer, ApiError> {
    state
        .executor
        .run(caller, move || async move {
            Ok::<_, ApiError>(
                Outcome::new(202, json!({ "executionId": id }), 1)
                    .located(format!("/api/executions/{id}"))
                    .appending(write.clone(), permission),
            )
        })
        .await
}

/// The answer to a repeated request: the recorded execution, finished or still running.
async fn replayed(state: &AppState, kept: &Answer) -> Result<Response, ApiError> {
    let id: Uuid = serde_json::from_str::<Value>(&kept.body)
        .ok()
        .and_then(|body| body["executionId"].as_str()?.parse().ok())
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("a kept execution answer without its id"))
        })?;
    let execution = state.executor.load::<Execution>(id).await?;
    let data = execution
        .state
        .live
        .ok_or_else(|| ApiError::not_found("Execution", id))?;
    if data.status == execution::Status::Running {
        return Err(ApiError::Conflict {
            error: "Execution in progress".into(),
            details: format!(
                "execution {id}, started by an earlier request with this Idempotency-Key, has not finished; see GET /api/executions/{id}"
            ),
        });
    }
    let mut response = recorded_answer(&data).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

/// A recorded, finished execution as the execute endpoint answers it.
fn recorded_answer(data: &ExecutionData) -> Response {
    let view = execution::view(data);
    match &data.failure {
        None => (StatusCode::OK, axum::Json(view)).into_response(),
        Some(failure) => failure_response(failure.reason, &failure.message, data.id, None),
    }
}

/// The call, run apart from the request so that it is always recorded, whatever the client does.
struct CallTask {
    state: AppState,
    actor: Actor,
    metadata: domain::EventMetadata,
    permission: Permission,
    /// The execution as requested (version 1).
    execution: Loaded<Execution>,
    /// The request's write set, until it is committed.
    requested: Option<WriteSet>,
    prepared: Prepared,
    stream: bool,
}

impl CallTask {
    async fn run(mut self, deltas: mpsc::Sender<String>) -> Finished {
        let models = self.state.executions.models.clone();
        let target = &self.prepared.target;
        let call = Call {
            provider: target.provider,
            url: target.url.clone(),
            model: &target.provider_model,
            credential: target.credential.as_deref(),
            prompt: &self.prepared.prompt,
            parameters: &self.prepared.parameters,
            stream: self.stream,
        };
        let started = Instant::now();
        let calling = async {
            tokio::select! {
                result = models.call(&call, &deltas) => Some(result),
                () = deltas.closed() => None,
            }
        };
        // The request is committed while the call runs; a failed commit cancels the call.
        let result = match self.requested.take() {
            None => calling.await,
            Some(write) => {
                let actor = self.actor.clone();
                let state = self.state.clone();
                let permission = self.permission;
                let id = self.id();
                let committing = async move {
                    let caller = Caller {
                        actor: &actor,
                        idempotency: None,
                    };
                    commit_request(&state, caller, id, &write, permission).await
                };
                tokio::pin!(committing, calling);
                let (committed, result) = tokio::select! {
                    // Returning on a failed commit drops `calling`, which cancels the call.
                    committed = &mut committing => match committed {
                        Ok(_) => (Ok(()), calling.await),
                        Err(error) => (Err(error), None),
                    },
                    result = &mut calling => (committing.await.map(drop), result),
                };
                if let Err(error) = committed {
                    return Finished {
                        answer: Err(error),
                        failure: None,
                    };
                }
                result
            }
        };
        drop(deltas);
        let latency_ms = started.elapsed().as_millis() as u64;
        let (event, failure) = match result {
            Some(Ok(reply)) => (self.succeeded(reply, latency_ms), None),
            Some(Err(failure)) => (failed(&failure, latency_ms), Some(failure)),
            None => {
                let failure = CallFailure {
                    reason: FailureReason::Cancelled,
                    message: "the client went away before the answer was complete".into(),
                    provider_status: None,
                    retry_after: None,
                    output: String::new(),
                    attempts: 1,
                };
                (failed(&failure, latency_ms), Some(failure))
            }
        };
        let answer = self.record(event).await;
        if let Err(error) = &answer {
            tracing::error!(execution = %self.id(), error = %error, "recording an execution's end failed");
        }
        Finished { answer, failure }
    }

    fn succeeded(&self, reply: Reply, latency_ms: u64) -> ExecutionEvent {
        let cost = match (&self.prepared.target.price, &reply.usage) {
            (Some(price), Some(usage)) => Some(price.cost(usage)),
            _ => None,
        };
        ExecutionEvent::Succeeded {
            output: reply.output,
            finish_reason: reply.finish_reason,
            usage: reply.usage,
            cost,
            latency_ms,
            time_to_first_token_ms: reply.time_to_first_token.map(|t| t.as_millis() as u64),
            attempts: reply.attempts,
        }
    }

    /// Appends the execution's end to the requested execution (nothing else writes its stream, so
    /// it is not loaded again); the answer's body is the finished execution's view.
    async fn record(&self, event: ExecutionEvent) -> Result<Answer, ApiError> {
        let caller = Caller {
            actor: &self.actor,
            idempotency: None,
        };
        let stream = Execution::stream_id(self.id());
        let (event, stream) = (&event, &stream);
        self.state
            .executor
            .run(caller, move || async move {
                let mut execution = self.execution.clone();
                let expected = execution.version;
                let events = execution
                    .state
                    .decide(ExecutionCommand::Finish(Box::new(event.clone())))?;
                let events = execution.record(events, &self.metadata, Utc::now());
                let data = execution.state.live.as_ref().ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("execution state missing after a decision"))
                })?;
                Ok::<_, ApiError>(
                    Outcome::new(200, execution::view(data), execution.version)
                        .appending(WriteSet::append(stream, expected, events), self.permission),
                )
            })
            .await
    }

    fn id(&self) -> Uuid {
        self.execution
            .state
            .live
            .as_ref()
            .map(|live| live.id)
            .expect("a requested execution has its state")
    }
}

fn failed(failure: &CallFailure, latency_ms: u64) -> ExecutionEvent {
    ExecutionEvent::Failed {
        reason: failure.reason,
        message: failure.message.clone(),
        provider_status: failure.provider_status,
        output: failure.output.clone(),
        latency_ms,
        attempts: failure.attempts,
    }
}

impl RunningExecution {
    /// Waits for the end, ignoring streamed text (the answer carries all of it).
    pub async fn wait(mut self) -> Finished {
        while self.deltas.recv().await.is_some() {}
        self.finished.await.unwrap_or_else(|_| Finished {
            answer: Err(ApiError::Internal(anyhow::anyhow!(
                "the execution task ended without an answer"
            ))),
            failure: None,
        })
    }

    /// The JSON answer: the execution, or the failure's status and `{error, details, executionId}`.
    async fn finish(self) -> Response {
        let id = self.id;
        let finished = self.wait().await;
        let answer = match finished.answer {
            Ok(answer) => answer,
            Err(error) => return error.into_response(),
        };
        let mut response = match &finished.failure {
            None => (
                StatusCode::OK,
                [("content-type", "application/json")],
                answer.body.clone(),
            )
                .into_response(),
            Some(failure) => {
                failure_response(failure.reason, &failure.message, id, failure.retry_after)
            }
        };
        if let Some((_, token)) = answer
            .headers
            .iter()
            .find(|(name, _)| name == CONSISTENCY_TOKEN)
        {
            if let Ok(value) = HeaderValue::from_str(token) {
                response.headers_mut().insert(CONSISTENCY_TOKEN, value);
            }
        }
        response
    }

    /// Server-Sent Events: `delta` events as text arrives, then `done` with the execution (or
    /// `error`). Dropping the stream (the client went away) cancels the call.
    fn into_event_stream(self) -> impl IntoResponse {
        let events = futures::stream::unfold(Some(self), |running| async move {
            let mut running = running?;
            match running.deltas.recv().await {
                Some(text) => {
                    let event = Event::default()
                        .event("delta")
                        .json_data(json!({ "text": text }));
                    Some((event, Some(running)))
                }
                None => {
                    let id = running.id;
                    let finished = running.wait().await;
                    Some((end_event(id, finished), None))
                }
            }
        });
        let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
            Box::pin(futures::StreamExt::map(events, |event| {
                Ok(event.unwrap_or_else(|_| Event::default().event("error")))
            }));
        (
            [("x-accel-buffering", "no"), ("cache-control", "no-cache")],
            Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
        )
    }
}

/// The last event of a stream: `done` with the execution's view, or `error`.
fn end_event(id: Uuid, finished: Finished) -> Result<Event, axum::Error> {
    match (finished.answer, finished.failure) {
        (Ok(answer), None) => Ok(Event::default().event("done").data(answer.body)),
        (_, Some(failure)) => Event::default().event("error").json_data(json!({
            "status": failure.reason.status(),
            "error": failure_title(failure.reason),
            "details": failure.message,
            "executionId": id,
        })),
        (Err(_), None) => Event::default().event("error").json_data(json!({
            "status": 500,
            "error": "Internal Server Error",
            "executionId": id,
        })),
    }
}

fn failure_title(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::ProviderRefused => "The model provider refused the request",
        FailureReason::RateLimited => "Too Many Requests",
        FailureReason::ProviderFailed => "The model provider failed",
        FailureReason::TimedOut => "Gateway Timeout",
        FailureReason::Unreachable => "The model provider could not be reached",
        FailureReason::MalformedResponse => "The model provider's answer could not be read",
        FailureReason::AddressRefused => "The model's address is not allowed",
        FailureReason::Cancelled => "Cancelled",
    }
}

/// A failed execution's answer: its status, `{error, details, executionId}`, and `Retry-After` for `429`.
pub(crate) fn failure_response(
    reason: FailureReason,
    message: &str,
    id: Uuid,
    retry_after: Option<u64>,
) -> Response {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = json!({
        "error": failure_title(reason),
        "details": message,
        "executionId": id,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if reason == FailureReason::RateLimited {
        let seconds = retry_after.unwrap_or(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
    }
    response
}
