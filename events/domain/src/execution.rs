//! Executions: one run of a prompt template against a model, as its own stream (`execution-<id>`).
//!
//! An execution is requested (what was sent: the rendered prompt, the template version, the model,
//! its provider, the parameters and the prices in force), then either succeeds (the output, the
//! provider's reported usage, the cost at those prices, the latency) or fails (why, with the
//! provider's message scrubbed of credentials). Nothing else changes an execution. These records are
//! what usage and spend reporting is built on.
//!
//! Also here, because an execution starts with it: [`render`], which fills a template's `{{name}}`
//! placeholders strictly.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};
use crate::catalog::kinds::Provider;

/// Fills every `{{name}}` (spaces inside the braces allowed) of `text` with `values[name]`, in one
/// pass: a value is inserted as text and never rendered again, so a value containing `{{x}}` stays
/// literally so. Strings are inserted as they are, any other JSON value as its compact JSON text.
/// Braces around anything that is not a variable name (`{{7*7}}`, `{{}}`) are left as they are.
/// Values no placeholder uses are ignored. Fails with the names that have no value, sorted.
pub fn render(text: &str, values: &Map<String, Value>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let placeholder = after
            .find("}}")
            .map(|close| (after[..close].trim(), close))
            .filter(|(name, _)| is_variable_name(name));
        match placeholder {
            Some((name, close)) => {
                match values.get(name) {
                    Some(Value::String(text)) => out.push_str(text),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {
                        missing.insert(name.to_owned());
                    }
                }
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing.into_iter().collect())
    }
}

/// A placeholder's name: a letter or `_`, then letters, digits and `_` (as declared variables are).
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The sampling parameters a request may set; the provider's defaults apply to the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Parameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// The most tokens a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 1_000_000;
/// The most stop sequences, as OpenAI allows.
pub const STOP_SEQUENCES_MAX: usize = 4;

impl Parameters {
    pub fn check(&self) -> Result<(), DomainError> {
        let within = |field: &str, value: Option<f64>, max: f64| match value {
            Some(v) if !v.is_finite() || !(0.0..=max).contains(&v) => Err(DomainError::invalid(
                format!("parameters.{field}"),
                format!("must be a number from 0 to {max}"),
            )),
            _ => Ok(()),
        };
        within("temperature", self.temperature, 2.0)?;
        within("topP", self.top_p, 1.0)?;
        if let Some(max) = self.max_tokens {
            if max == 0 || max > MAX_TOKENS_LIMIT {
                return Err(DomainError::invalid(
                    "parameters.maxTokens",
                    format!("must be from 1 to {MAX_TOKENS_LIMIT}"),
                ));
            }
        }
        if self.stop.len() > STOP_SEQUENCES_MAX
            || self
                .stop
                .iter()
                .any(|s| s.is_empty() || s.chars().count() > 100)
        {
            return Err(DomainError::invalid(
                "parameters.stop",
                format!("at most {STOP_SEQUENCES_MAX} sequences of 1 to 100 characters"),
            ));
        }
        Ok(())
    }
}

/// Tokens as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens + output_tokens,
        }
    }
}

/// A model's prices when the call was made, per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    pub currency: String,
    pub input_per_million_tokens: f64,
    pub output_per_million_tokens: f64,
}

/// What an execution cost, in the price's currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub currency: String,
    pub input: f64,
    pub output: f64,
    pub total: f64,
}

impl Price {
    /// The cost of `usage` at this price, each amount rounded to 10 decimal places (a millionth of a
    /// cent is still exact at any realistic price).
    pub fn cost(&self, usage: &Usage) -> Cost {
        let round = |amount: f64| (amount * 1e10).round() / 1e10;
        let input = round(usage.input_tokens as f64 * self.input_per_million_tokens / 1e6);
        let output = round(usage.output_tokens as f64 * self.output_per_million_tokens / 1e6);
        Cost {
            currency: self.currency.clone(),
            input,
            output,
            total: round(input + output),
        }
    }
}

/// Why an execution failed, and the HTTP status it was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The provider refused the request (`4xx`): answered `502`.
    ProviderRefused,
    /// The provider kept answering `429`: answered `429`.
    RateLimited,
    /// The provider kept failing (`5xx`): answered `502`.
    ProviderFailed,
    /// No answer within the timeout: `504`.
    TimedOut,
    /// The provider could not be reached: `502`.
    Unreachable,
    /// The provider answered something that is not its wire format: `502`.
    MalformedResponse,
    /// The outbound guard refused the model's address: `502`.
    AddressRefused,
    /// The client went away before the answer was complete.
    Cancelled,
}

impl FailureReason {
    /// The status the API answers a failure with.
    pub fn status(self) -> u16 {
        match self {
            FailureReason::RateLimited => 429,
            FailureReason::TimedOut => 504,
            // Nobody is left to read it; recorded as nginx does for a closed client.
            FailureReason::Cancelled => 499,
            _ => 502,
        }
    }
}

/// Why an execution was run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `POST /api/prompt-templates/{id}/execute`.
    #[default]
    Execution,
    /// The `model` method of sentiment analysis asking the model for a verdict.
    SentimentAnalysis,
}

/// Which catalog kind the model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Model,
    SystemModel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ExecutionEvent {
    #[serde(rename = "execution.requested")]
    Requested {
        id: Uuid,
        organization_id: Uuid,
        environment_id: Uuid,
        template_id: Uuid,
        template_version: i64,
        model_id: Uuid,
        model_kind: ModelKind,
        provider: Provider,
        /// The model identifier sent to the provider.
        provider_model: String,
        rendered_prompt: String,
        parameters: Parameters,
        /// The model's prices when the call was made; `None` when it states none.
        price: Option<Price>,
        purpose: Purpose,
        streamed: bool,
        /// Who ran it: the user id (also the event's actor).
        requested_by: String,
    },
    #[serde(rename = "execution.succeeded")]
    Succeeded {
        output: String,
        finish_reason: Option<String>,
        /// As the provider reported it; `None` when it reported none.
        usage: Option<Usage>,
        cost: Option<Cost>,
        latency_ms: u64,
        time_to_first_token_ms: Option<u64>,
        /// Calls made, retries included.
        attempts: u32,
    },
    #[serde(rename = "execution.failed")]
    Failed {
        reason: FailureReason,
        /// What went wrong, credentials scrubbed.
        message: String,
        /// The provider's HTTP status, when it answered.
        provider_status: Option<u16>,
        /// What had streamed before the failure.
        output: String,
        latency_ms: u64,
        attempts: u32,
    },
}

/// The outcome of a finished call, as the execution records it.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionCommand {
    Request(Box<ExecutionEvent>),
    Finish(Box<ExecutionEvent>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
}

/// An execution's state, which is also its read model's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionData {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub template_id: Uuid,
    pub template_version: i64,
    pub model_id: Uuid,
    pub model_kind: ModelKind,
    pub provider: Provider,
    pub provider_model: String,
    pub rendered_prompt: String,
    pub parameters: Parameters,
    pub price: Option<Price>,
    pub purpose: Purpose,
    pub streamed: bool,
    pub status: Status,
    pub output: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub cost: Option<Cost>,
    pub latency_ms: Option<u64>,
    pub time_to_first_token_ms: Option<u64>,
    pub attempts: Option<u32>,
    pub failure: Option<Failure>,
    /// Who ran it: the user id.
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    pub provider_status: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub live: Option<ExecutionData>,
}

impl Aggregate for Execution {
    const TYPE: &'static str = "execution";
    type Event = ExecutionEvent;
    type Command = ExecutionCommand;

    fn apply(&mut self, event: &ExecutionEvent, at: DateTime<Utc>) {
        match event {
            ExecutionEvent::Requested {
                id,
                organization_id,
                environment_id,
                template_id,
                template_version,
                model_id,
                model_kind,
                provider,
                provider_model,
                rendered_prompt,
                parameters,
                price,
                purpose,
                streamed,
                requested_by,
            } => {
                self.live = Some(ExecutionData {
                    id: *id,
                    organization_id: *organization_id,
                    environment_id: *environment_id,
                    template_id: *template_id,
                    template_version: *template_version,
                    model_id: *model_id,
                    model_kind: *model_kind,
                    provider: *provider,
                    provider_model: provider_model.clone(),
                    rendered_prompt: rendered_prompt.clone(),
                    parameters: parameters.clone(),
                    price: price.clone(),
                    purpose: *purpose,
                    streamed: *streamed,
                    status: Status::Running,
                    output: None,
                    finish_reason: None,
                    usage: None,
                    cost: None,
                    latency_ms: None,
                    time_to_first_token_ms: None,
                    attempts: None,
                    failure: None,
                    requested_by: requested_by.clone(),
                    requested_at: at,
                    finished_at: None,
                })
            }
            ExecutionEvent::Succeeded {
                output,
                finish_reason,
                usage,
                cost,
                latency_ms,
                time_to_first_token_ms,
                attempts,
            } => {
                if let Some(live) = &mut self.live {
                    live.status = Status::Succeeded;
                    live.output = Some(output.clone());
                    live.finish_reason = finish_reason.clone();
                    live.usage = *usage;
                    live.cost = cost.clone();
                    live.latency_ms = Some(*latency_ms);
                    live.time_to_first_token_ms = *time_to_first_token_ms;
                    live.attempts = Some(*attempts);
                    live.finished_at = Some(at);
                }
            }
            ExecutionEvent::Failed {
                reason,
                message,
                provider_status,
                output,
                latency_ms,
                attempts,
            } => {
                if let Some(live) = &mut self.live {
                    live.status = Status::Failed;
                    live.output = (!output.is_empty()).then(|| output.clone());
                    live.latency_ms = Some(*latency_ms);
                    live.attempts = Some(*attempts);
                    live.failure = Some(Failure {
                        reason: *reason,
                        message: message.clone(),
                        provider_status: *provider_status,
                    });
                    live.finished_at = Some(at);
                }
            }
        }
    }

    fn decide(&self, command: ExecutionCommand) -> Result<Vec<ExecutionEvent>, DomainError> {
        match (command, &self.live) {
            (ExecutionCommand::Request(event), None) => match *event {
                requested @ ExecutionEvent::Requested { .. } => Ok(vec![requested]),
                _ => Err(DomainError::NotFound),
            },
            (ExecutionCommand::Request(_), Some(_)) => Err(DomainError::AlreadyExists),
            (ExecutionCommand::Finish(event), _)
                if matches!(*event, ExecutionEvent::Requested { .. }) =>
            {
                Err(DomainError::NotFound)
            }
            (ExecutionCommand::Finish(_), None) => Err(DomainError::NotFound),
            (ExecutionCommand::Finish(_), Some(live)) if live.status != Status::Running => {
                Err(DomainError::Conflict {
                    error: "Execution already finished",
                    details: format!("execution {} is {:?}", live.id, live.status),
                })
            }
            (ExecutionCommand::Finish(event), Some(_)) => Ok(vec![*event]),
        }
    }
}

fn timestamp(at: &DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The API's shape of an execution (the execute answer, `GET /api/executions/{id}` and the template's
/// executions), built the same way by command-api from the aggregate and by query-api from the read
/// model.
pub fn view(data: &ExecutionData) -> Value {
    let failure = data.failure.as_ref().map(|f| {
        json!({
            "reason": f.reason,
            "message": f.message,
            "providerStatus": f.provider_status,
        })
    });
    json!({
        "executionId": data.id,
        "templateId": data.template_id,
        "templateVersion": data.template_version,
        "organizationId": data.organization_id,
        "environmentId": data.environment_id,
        "modelId": data.model_id,
        "modelKind": data.model_kind,
        "provider": data.provider,
        "purpose": data.purpose,
        "renderedPrompt": data.rendered_prompt,
        "parameters": data.parameters,
        "output": data.output,
        "finishReason": data.finish_reason,
        "usage": data.usage,
        "cost": data.cost,
        "latencyMs": data.latency_ms,
        "timeToFirstTokenMs": data.time_to_first_token_ms,
        "status": data.status,
        "error": failure,
        "requestedBy": data.requested_by,
        "requestedAt": timestamp(&data.requested_at),
        "finishedAt": data.finished_at.as_ref().map(timestamp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given::at;

    fn values(pairs: Value) -> Map<String, Value> {
        pairs.as_object().unwrap().clone()
    }

    #[test]
    fn rendering_fills_every_placeholder_once_and_lists_what_is_missing() {
        let text = "Hi {{name}}, {{ name }} owes {{amount}} for {{items}}; {{7*7}} {{}} {{ unknown";
        let rendered = render(
            text,
            &values(
                json!({"name": "{{amount}} & <b>", "amount": 12.5, "items": ["a"], "extra": 1}),
            ),
        )
        .unwrap();
        assert_eq!(
            rendered,
            "Hi {{amount}} & <b>, {{amount}} & <b> owes 12.5 for [\"a\"]; {{7*7}} {{}} {{ unknown"
        );
        assert_eq!(
            render("{{b}} {{a}} {{b}} {{c}}", &values(json!({"c": ""}))),
            Err(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            render("no placeholders", &Map::new()).unwrap(),
            "no placeholders"
        );
    }

    #[test]
    fn cost_is_the_reported_usage_at_the_price_per_million() {
        let price = Price {
            currency: "USD".into(),
            input_per_million_tokens: 2.5,
            output_per_million_tokens: 10.0,
        };
        let cost = price.cost(&Usage::new(1_200, 300));
        assert_eq!(cost.input, 0.003);
        assert_eq!(cost.output, 0.003);
        assert_eq!(cost.total, 0.006);
        assert_eq!(cost.currency, "USD");
    }

    #[test]
    fn parameters_are_bounded() {
        let ok = Parameters {
            temperature: Some(2.0),
            max_tokens: Some(1),
            top_p: Some(0.0),
            stop: vec!["\n".into()],
        };
        assert!(ok.check().is_ok());
        for bad in [
            Parameters {
                temperature: Some(2.1),
                ..Default::default()
            },
            Parameters {
                top_p: Some(f64::NAN),
                ..Default::default()
            },
            Parameters {
                max_tokens: Some(0),
                ..Default::default()
            },
            Parameters {
                stop: vec!["a".into(); 5],
                ..Default::default()
            },
            Parameters {
                stop: vec![String::new()],
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_execution_finishes_once() {
        let requested = ExecutionEvent::Requested {
            id: Uuid::nil(),
            organization_id: Uuid::nil(),
            environment_id: Uuid::nil(),
            template_id: Uuid::nil(),
            template_version: 1,
            model_id: Uuid::nil(),
            model_kind: ModelKind::Model,
            provider: Provider::Openai,
            provider_model: "gpt".into(),
            rendered_prompt: "hi".into(),
            parameters: Parameters::default(),
            price: None,
            purpose: Purpose::Execution,
            streamed: false,
            requested_by: "user".into(),
        };
        let failed = ExecutionEvent::Failed {
            reason: FailureReason::TimedOut,
            message: "no answer".into(),
            provider_status: None,
            output: String::new(),
            latency_ms: 60_000,
            attempts: 1,
        };
        let mut execution = Execution::default();
        assert_eq!(
            execution.decide(ExecutionCommand::Finish(Box::new(failed.clone()))),
            Err(DomainError::NotFound)
        );
        let events = execution
            .decide(ExecutionCommand::Request(Box::new(requested)))
            .unwrap();
        execution.apply(&events[0], at(0));
        let events = execution
            .decide(ExecutionCommand::Finish(Box::new(failed.clone())))
            .unwrap();
        execution.apply(&events[0], at(1));
        let live = execution.live.as_ref().unwrap();
        assert_eq!(live.status, Status::Failed);
        assert_eq!(view(live)["error"]["reason"], "timed_out");
        assert!(matches!(
            execution.decide(ExecutionCommand::Finish(Box::new(failed))),
            Err(DomainError::Conflict { .. })
        ));
    }
}
