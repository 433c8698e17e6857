//! `POST /api/prompt-templates/{id}/analyze-sentiment`: the sentiment of a template's current text
//! (`rawSentimentAnalysis`) and of an execution's output (`resultSentimentAnalysis`: the named
//! execution's, or the template's latest successful one), recorded on the template as a
//! `prompt_template.sentiment_analyzed` event. It is an annotation, not an edit: the template's
//! `version` does not move (see `domain::catalog`).
//!
//! Two methods: `lexicon` (the default), VADER's lexicon and rules, offline and deterministic
//! (`domain::sentiment`); and `model`, which asks the template's model for a JSON verdict, through an
//! execution like any other (so it is recorded, counted and billed), and validates the answer.
//!
//! The latest successful execution is read from the `executions` read model once it has applied every
//! event logged before the request (as a default read of query-api would), so an execution answered
//! before the request is seen.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use commands::{Caller, Outcome, WriteSet};
use contracts::read_models::EXECUTIONS;
use domain::catalog::kinds::PromptTemplate;
use domain::catalog::{Document, DocumentCommand, Fields};
use domain::execution::{Execution, ExecutionData, Parameters, Purpose, Status};
use domain::sentiment::{self, Verdict};
use domain::{Action, Aggregate, LogPosition, Resource};
use http_layer::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::catalog::render;
use crate::command::execute;
use crate::executions::{
    failure_response, load_template, read_permission, resolve_model, start, Prepared, Started,
    Template,
};
use crate::extract::{parse_id, Write};
use crate::AppState;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Lexicon,
    Model,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Lexicon => "lexicon",
            Method::Model => "model",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalyzeRequest {
    #[serde(default)]
    pub method: Method,
    /// The execution whose output to analyse (default: the latest successful one).
    pub execution_id: Option<Uuid>,
}

/// What the model is asked; its answer must be this JSON object and nothing else.
pub const MODEL_INSTRUCTION: &str = "Classify the sentiment of the text between the markers. \
Answer with only a JSON object: {\"label\": \"positive\" | \"neutral\" | \"negative\", \"score\": \
a number from -1 (most negative) to 1 (most positive)}.";

pub async fn analyze(
    State(state): State<AppState>,
    Path(id): Path<String>,
    write: Write,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    write
        .actor
        .authorize_anywhere(Resource::Entities, Action::Read)?;
    let request: AnalyzeRequest = write.parse_or_default()?;
    let (template, role) = load_template(&state, &write.actor, id).await?;
    let version = template.data.content_version(template.version);
    let execution = analysed_execution(&state, id, request.execution_id).await?;
    let text = template.data.fields["promptText"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let raw = match verdict(&state, &write, &template, role, request.method, &text).await? {
        Ok(verdict) => analysis(verdict, request.method, version, None),
        Err(response) => return Ok(response),
    };
    let result = match &execution {
        None => Value::Null,
        Some(execution) => {
            let output = execution.output.clone().unwrap_or_default();
            match verdict(&state, &write, &template, role, request.method, &output).await? {
                Ok(verdict) => analysis(
                    verdict,
                    request.method,
                    execution.template_version,
                    Some(execution.id),
                ),
                Err(response) => return Ok(response),
            }
        }
    };
    let mut analyses = Fields::new();
    analyses.insert("rawSentimentAnalysis".into(), raw);
    analyses.insert("resultSentimentAnalysis".into(), result);

    let organization_id = template.data.organization_id();
    let permission = read_permission(organization_id);
    let (state, write, analyses, permission) = (&state, &write, &analyses, &permission);
    execute(state, write, move || async move {
        let mut doc = state.executor.load::<Document<PromptTemplate>>(id).await?;
        let expected = doc.version;
        let events = doc.state.decide(DocumentCommand::AnalyzeSentiment {
            analyses: analyses.clone(),
        })?;
        let events = doc.record(events, &write.metadata(role, organization_id), Utc::now());
        // The answer nests the names of what the template refers to, as an update's does.
        let live = doc.state.state.live.as_ref().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("template state missing after a decision"))
        })?;
        let referred: Vec<String> = [
            live.organization_id()
                .map(|id| format!("organization-{id}")),
            live.environment_id().map(|id| format!("environment-{id}")),
            live.model_id().map(|id| format!("model-{id}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let heads = state.executor.stream_heads(&referred).await?;
        let body = render(&doc, &heads)?;
        let stream = Document::<PromptTemplate>::stream_id(id);
        Ok(Outcome::new(200, body, doc.version)
            .appending(WriteSet::append(&stream, expected, events), *permission))
    })
    .await
}

/// The execution whose output is analysed: the named one, which must be a successful execution of
/// this template, or the newest successful one the read model holds.
async fn analysed_execution(
    state: &AppState,
    template_id: Uuid,
    named: Option<Uuid>,
) -> Result<Option<ExecutionData>, ApiError> {
    let Some(id) = named else {
        executions_caught_up(state).await?;
        let latest: Option<sqlx::types::Json<ExecutionData>> = sqlx::query_scalar(
            "SELECT data FROM read_models.executions \
             WHERE template_id = $1 AND status = 'succeeded' AND data->>'purpose' = 'execution' \
             ORDER BY requested_at DESC, id DESC LIMIT 1",
        )
        .bind(template_id)
        .fetch_optional(state.executor.pool())
        .await?;
        return Ok(latest.map(|data| data.0));
    };
    let execution = state.executor.load::<Execution>(id).await?;
    match execution.state.live {
        Some(data) if data.template_id == template_id && data.status == Status::Succeeded => {
            Ok(Some(data))
        }
        Some(data) if data.template_id == template_id => Err(ApiError::invalid(
            "executionId",
            format!("execution {id} did not succeed; only an output can be analysed"),
        )),
        _ => Err(ApiError::invalid(
            "executionId",
            format!("no execution {id} of this template"),
        )),
    }
}

/// How long a request waits for the `executions` read model to catch up with the log.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Waits until the `executions` projection has applied every event logged before this call.
async fn executions_caught_up(state: &AppState) -> Result<(), ApiError> {
    let pool = state.executor.pool();
    let head = event_log::log_head(pool).await?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let checkpoint: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1",
        )
        .bind(EXECUTIONS)
        .fetch_optional(pool)
        .await?;
        let (transaction_id, global_position) = checkpoint.unwrap_or_default();
        let position = LogPosition {
            transaction_id,
            global_position,
        };
        if position >= head {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "the executions read model did not catch up within {} s; name the execution with executionId, or retry",
                CATCH_UP.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The verdict on `text` by `method`; a failed model call is answered as the execute endpoint would.
async fn verdict(
    state: &AppState,
    write: &Write,
    template: &Template,
    role: domain::Role,
    method: Method,
    text: &str,
) -> Result<Result<Verdict, Response>, ApiError> {
    if method == Method::Lexicon {
        return Ok(Ok(sentiment::lexicon(text)));
    }
    let organization_id = template.data.organization_id().unwrap_or_default();
    let model_id = template.data.model_id().ok_or_else(|| {
        ApiError::invalid(
            "method",
            "the model method needs the template to name a model",
        )
    })?;
    let prepared = Prepared {
        organization_id,
        environment_id: template.data.environment_id().unwrap_or_default(),
        template_id: template.data.id,
        template_version: template.data.content_version(template.version),
        prompt: format!("{MODEL_INSTRUCTION}\n<<<\n{text}\n>>>"),
        parameters: Parameters {
            temperature: Some(0.0),
            ..Parameters::default()
        },
        target: resolve_model(state, organization_id, model_id).await?,
        purpose: Purpose::SentimentAnalysis,
        role,
    };
    let caller = Caller {
        actor: &write.actor,
        idempotency: None,
    };
    let running = match start(state, write, caller, prepared, false).await? {
        Started::Running(running) => running,
        Started::Replayed(response) => return Ok(Err(response)),
    };
    let id = running.id;
    let finished = running.wait().await;
    if let Some(failure) = finished.failure {
        return Ok(Err(failure_response(
            failure.reason,
            &failure.message,
            id,
            failure.retry_after,
        )));
    }
    let answer = finished.answer?;
    let output = serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|view| view["output"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(sentiment::parse_model_verdict(&output).map_err(|problem| {
        ApiError::BadGateway {
            error: "The model's verdict could not be read".into(),
            details: format!("execution {id}: {problem}"),
        }
        .into_response()
    }))
}

/// A recorded analysis: the verdict, how and when it was made, and of what.
fn analysis(
    verdict: Verdict,
    method: Method,
    template_version: i64,
    execution: Option<Uuid>,
) -> Value {
    let mut analysis = json!({
        "label": verdict.label,
        "score": verdict.score,
        "scores": verdict.scores,
        "method": method.name(),
        "analyzedAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "templateVersion": template_version,
    });
    if let Some(id) = execution {
        analysis["executionId"] = json!(id);
    }
    analysis
}
