//! Calling a model over its provider's wire format: OpenAI-compatible Chat Completions
//! (`Authorization: Bearer`) or Anthropic Messages (`x-api-key`, `anthropic-version`), each with and
//! without streaming (Server-Sent Events), through the outbound guard ([`crate::outbound`]).
//!
//! [`ModelClient::call`] makes one call with its retries: a `429` is retried after the provider's
//! `Retry-After` (when it is short enough), a `5xx` after a short backoff, each a bounded number of
//! times and only before anything has streamed. Every failure is classified ([`FailureReason`]) and
//! its message scrubbed of the credential, also when the provider echoes it back. The timeout bounds
//! each wait: for the response head, and for each piece of the body.

use std::time::{Duration, Instant};

use domain::catalog::kinds::Provider;
use domain::execution::{FailureReason, Parameters, Usage};
use reqwest::header::RETRY_AFTER;
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::outbound::{refusal, Guard};
use crate::sse::{SseBuffer, SseEvent};

/// The Anthropic API version requests are made with.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic's API: this is sent when the request sets none.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 1024;
/// Retries after a `429` or a `5xx`, each.
const RETRIES: u32 = 2;
/// The longest `Retry-After` waited for; a longer one is passed on to the client.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// The largest response body read (non-streamed answers and error bodies).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How much of a provider's error message is kept.
const MESSAGE_MAX_CHARS: usize = 500;

/// One call to make.
pub struct Call<'a> {
    pub provider: Provider,
    pub url: Url,
    /// The model identifier the provider expects.
    pub model: &'a str,
    /// The API key, when the model has one.
    pub credential: Option<&'a str>,
    pub prompt: &'a str,
    pub parameters: &'a Parameters,
    pub stream: bool,
}

/// A model's answer.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub output: String,
    pub finish_reason: Option<String>,
    /// As the provider reported it; `None` when it reported none.
    pub usage: Option<Usage>,
    /// Since the call started, when the first text streamed in.
    pub time_to_first_token: Option<Duration>,
    pub attempts: u32,
}

/// Why a call failed, ready to record and to answer.
#[derive(Debug, Clone)]
pub struct CallFailure {
    pub reason: FailureReason,
    /// Scrubbed of the credential.
    pub message: String,
    pub provider_status: Option<u16>,
    /// For `RateLimited`: when the client may try again, in seconds.
    pub retry_after: Option<u64>,
    /// What streamed before the failure.
    pub output: String,
    pub attempts: u32,
}

impl CallFailure {
    fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        CallFailure {
            reason,
            message: message.into(),
            provider_status: None,
            retry_after: None,
            output: String::new(),
            attempts: 0,
        }
    }
}

/// One attempt's failure: whether, and after how long, it may be tried again.
struct AttemptFailure {
    failure: CallFailure,
    retry_after: Option<Duration>,
}

impl From<CallFailure> for AttemptFailure {
    fn from(failure: CallFailure) -> Self {
        AttemptFailure {
            failure,
            retry_after: None,
        }
    }
}

/// Calls models under the outbound guard.
#[derive(Clone)]
pub struct ModelClient {
    client: reqwest::Client,
    guard: Guard,
    timeout: Duration,
}

impl ModelClient {
    /// `timeout` bounds every wait on the provider (`PROVIDER_TIMEOUT_SECS`).
    pub fn new(guard: Guard, timeout: Duration) -> Self {
        ModelClient {
            client: guard.client(timeout),
            guard,
            timeout,
        }
    }

    /// Makes the call, retrying as the module docs say; streamed text goes to `deltas` as it arrives.
    pub async fn call(
        &self,
        call: &Call<'_>,
        deltas: &mpsc::Sender<String>,
    ) -> Result<Reply, CallFailure> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self.attempt(call, deltas, started).await;
            let scrub = |text: &str| scrub(text, call.credential);
            match result {
                Ok(mut reply) => {
                    reply.attempts = attempts;
                    reply.output = scrub(&reply.output);
                    return Ok(reply);
                }
                Err(AttemptFailure {
                    retry_after: Some(wait),
                    ..
                }) if attempts <= RETRIES && wait <= MAX_RETRY_WAIT => {
                    tokio::time::sleep(wait).await;
                }
                Err(AttemptFailure { mut failure, .. }) => {
                    failure.attempts = attempts;
                    failure.message = scrub(&failure.message);
                    failure.output = scrub(&failure.output);
                    return Err(failure);
                }
            }
        }
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        deltas: &mpsc::Sender<String>,
        started: Instant,
    ) -> Result<Reply, AttemptFailure> {
        self.guard
            .check_url(&call.url)
            .map_err(|refused| CallFailure::new(FailureReason::AddressRefused, refused.0))?;
        let response =
            match tokio::time::timeout(self.timeout, request(&self.client, call).send()).await {
                Err(_) => return Err(self.timed_out().into()),
                Ok(Err(error)) => return Err(send_failure(error, self.timeout).into()),
                Ok(Ok(response)) => response,
            };
        let status = response.status();
        if !status.is_success() {
            return Err(self.refusal(status, response).await);
        }
        if call.stream {
            self.read_stream(call.provider, response, deltas, started)
                .await
                .map_err(Into::into)
        } else {
            let body = self.read_body(response).await?;
            parse_reply(call.provider, &body).map_err(Into::into)
        }
    }

    fn timed_out(&self) -> CallFailure {
        CallFailure::new(
            FailureReason::TimedOut,
            format!(
                "the model did not answer within {} s",
                self.timeout.as_secs()
            ),
        )
    }

    /// A non-success answer, classified: `429` and `5xx` may be retried.
    async fn refusal(&self, status: StatusCode, response: Response) -> AttemptFailure {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = self.read_body(response).await.unwrap_or_default();
        let message = provider_message(&body);
        let (reason, retry_after) = match status.as_u16() {
            429 => (
                FailureReason::RateLimited,
                Some(retry_after.unwrap_or(Duration::from_secs(1))),
            ),
            500..=599 => (
                FailureReason::ProviderFailed,
                Some(Duration::from_millis(250)),
            ),
            _ => (FailureReason::ProviderRefused, None),
        };
        let mut failure = CallFailure::new(reason, message);
        failure.provider_status = Some(status.as_u16());
        failure.retry_after = retry_after.map(|wait| wait.as_secs().max(1));
        AttemptFailure {
            failure,
            retry_after,
        }
    }

    /// The whole body, each piece within the timeout, at most [`MAX_BODY_BYTES`].
    async fn read_body(&self, mut response: Response) -> Result<Vec<u8>, CallFailure> {
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.timeout, response.chunk()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(error)) => return Err(send_failure(error, self.timeout)),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(chunk))) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(CallFailure::new(
                            FailureReason::MalformedResponse,
                            format!("the provider's answer is larger than {MAX_BODY_BYTES} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    async fn read_stream(
        &self,
        provider: Provider,
        mut response: Response,
        deltas: &mpsc::Sender<String>,
        started: Instant,
    ) -> Result<Reply, CallFailure> {
        let mut reply = Reply::default();
        let mut events = SseBuffer::default();
        let mut finished = false;
        let mut input_tokens = None;
        let mut output_tokens = None;
        let fail = |reason, message: String, output: &str| CallFailure {
            output: output.to_owned(),
            ..CallFailure::new(reason, message)
        };
        while !finished {
            let chunk = match tokio::time::timeout(self.timeout, response.chunk()).await {
                Err(_) => {
                    return Err(fail(
                        FailureReason::TimedOut,
                        self.timed_out().message,
                        &reply.output,
                    ))
                }
                Ok(Err(error)) => {
                    let failure = send_failure(error, self.timeout);
                    return Err(fail(failure.reason, failure.message, &reply.output));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            for event in events.push(&chunk) {
                let step = match provider {
                    Provider::Openai => openai_stream_event(&event),
                    Provider::Anthropic => anthropic_stream_event(&event),
                }
                .map_err(|(reason, message)| fail(reason, message, &reply.output))?;
                if let Some(text) = step.text.filter(|t| !t.is_empty()) {
                    reply
                        .time_to_first_token
                        .get_or_insert_with(|| started.elapsed());
                    reply.output.push_str(&text);
                    // A client that went away is noticed by the execution, which cancels this call.
                    let _ = deltas.send(text).await;
                }
                reply.finish_reason = step.finish_reason.or(reply.finish_reason.take());
                input_tokens = step.input_tokens.or(input_tokens);
                output_tokens = step.output_tokens.or(output_tokens);
                finished |= step.done;
            }
        }
        if !finished {
            return Err(fail(
                FailureReason::MalformedResponse,
                "the provider's stream ended before it finished".into(),
                &reply.output,
            ));
        }
        reply.usage = match (input_tokens, output_tokens) {
            (None, None) => None,
            (input, output) => Some(Usage::new(input.unwrap_or(0), output.unwrap_or(0))),
        };
        Ok(reply)
    }
}

/// The request for `call`, in its provider's format.
fn request(client: &reqwest::Client, call: &Call<'_>) -> RequestBuilder {
    let p = call.parameters;
    let message = json!([{ "role": "user", "content": call.prompt }]);
    let (mut body, builder) = match call.provider {
        Provider::Openai => {
            let mut body = json!({ "model": call.model, "messages": message });
            if call.stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({ "include_usage": true });
            }
            set(&mut body, "max_tokens", p.max_tokens.map(Value::from));
            set(
                &mut body,
                "stop",
                (!p.stop.is_empty()).then(|| json!(p.stop)),
            );
            let builder = client.post(call.url.clone());
            let builder = match call.credential {
                Some(key) => builder.bearer_auth(key),
                None => builder,
            };
            (body, builder)
        }
        Provider::Anthropic => {
            let max_tokens = p.max_tokens.unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS);
            let mut body =
                json!({ "model": call.model, "messages": message, "max_tokens": max_tokens });
            if call.stream {
                body["stream"] = json!(true);
            }
            set(
                &mut body,
                "stop_sequences",
                (!p.stop.is_empty()).then(|| json!(p.stop)),
            );
            let builder = client
                .post(call.url.clone())
                .header("anthropic-version", ANTHROPIC_VERSION);
            let builder = match call.credential {
                Some(key) => builder.header("x-api-key", key),
                None => builder,
            };
            (body, builder)
        }
    };
    set(&mut body, "temperature", p.temperature.map(Value::from));
    set(&mut body, "top_p", p.top_p.map(Value::from));
    builder.json(&body)
}

fn set(body: &mut Value, field: &str, value: Option<Value>) {
    if let Some(value) = value {
        body[field] = value;
    }
}

/// A failure to send or to read: the guard's refusal, a timeout, or an unreachable provider. The
/// message leaves out the URL.
fn send_failure(error: reqwest::Error, timeout: Duration) -> CallFailure {
    if let Some(refused) = refusal(&error) {
        return CallFailure::new(FailureReason::AddressRefused, refused.0.clone());
    }
    if error.is_timeout() {
        return CallFailure::new(
            FailureReason::TimedOut,
            format!("the model did not answer within {} s", timeout.as_secs()),
        );
    }
    let error = error.without_url();
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        message = format!("{message}: {inner}");
        cause = inner.source();
    }
    CallFailure::new(
        FailureReason::Unreachable,
        format!("the provider could not be reached ({message})"),
    )
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or_default())
}

/// The message of a provider's error body (`{"error": {"message"}}` in both formats), or its text.
fn provider_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    });
    let text = match message {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let text: String = text.chars().take(MESSAGE_MAX_CHARS).collect();
    if text.is_empty() {
        "the provider gave no reason".into()
    } else {
        text
    }
}

/// `text` with every occurrence of the credential replaced.
pub fn scrub(text: &str, credential: Option<&str>) -> String {
    match credential {
        Some(key) if !key.is_empty() => text.replace(key, "[redacted]"),
        _ => text.to_owned(),
    }
}

fn malformed(what: impl std::fmt::Display) -> (FailureReason, String) {
    (
        FailureReason::MalformedResponse,
        format!("the provider's answer is not in its format: {what}"),
    )
}

/// A non-streamed answer.
fn parse_reply(provider: Provider, body: &[u8]) -> Result<Reply, CallFailure> {
    let fail = |(reason, message)| CallFailure::new(reason, message);
    let value: Value = serde_json::from_slice(body).map_err(|e| fail(malformed(e)))?;
    let tokens = |pointer: &str| value.pointer(pointer).and_then(Value::as_u64);
    let (output, finish_reason, usage) = match provider {
        Provider::Openai => {
            let choice = value
                .pointer("/choices/0")
                .ok_or_else(|| fail(malformed("no choices")))?;
            let output = choice
                .pointer("/message/content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let usage = tokens("/usage/prompt_tokens")
                .zip(tokens("/usage/completion_tokens"))
                .map(|(input, output)| Usage::new(input, output));
            (output.to_owned(), choice.get("finish_reason"), usage)
        }
        Provider::Anthropic => {
            let blocks = value
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| fail(malformed("no content")))?;
            let output: String = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            let usage = tokens("/usage/input_tokens")
                .zip(tokens("/usage/output_tokens"))
                .map(|(input, output)| Usage::new(input, output));
            (output, value.get("stop_reason"), usage)
        }
    };
    Ok(Reply {
        output,
        finish_reason: finish_reason.and_then(Value::as_str).map(str::to_owned),
        usage,
        ..Reply::default()
    })
}

/// What one streamed event says.
#[derive(Default)]
struct StreamStep {
    text: Option<String>,
    finish_reason: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    /// The provider's end-of-stream marker.
    done: bool,
}

fn json_data(event: &SseEvent) -> Result<Value, (FailureReason, String)> {
    serde_json::from_str(&event.data).map_err(|e| malformed(format!("a streamed event: {e}")))
}

/// Chat Completions chunks: `choices[0].delta.content`, `finish_reason`, a final `usage` chunk
/// (asked for with `stream_options.include_usage`), then `[DONE]`.
fn openai_stream_event(event: &SseEvent) -> Result<StreamStep, (FailureReason, String)> {
    if event.data.trim() == "[DONE]" {
        return Ok(StreamStep {
            done: true,
            ..StreamStep::default()
        });
    }
    let value = json_data(event)?;
    if let Some(error) = value.get("error") {
        return Err((
            FailureReason::ProviderFailed,
            provider_message(json!({ "error": error }).to_string().as_bytes()),
        ));
    }
    let choice = value.pointer("/choices/0");
    let text = |pointer: &str| {
        choice
            .and_then(|c| c.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(StreamStep {
        text: text("/delta/content"),
        finish_reason: text("/finish_reason"),
        input_tokens: value
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64),
        output_tokens: value
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64),
        done: false,
    })
}

/// Messages events: `message_start` (input tokens), `content_block_delta` (text), `message_delta`
/// (stop reason, output tokens), `message_stop`; an `error` event fails the call.
fn anthropic_stream_event(event: &SseEvent) -> Result<StreamStep, (FailureReason, String)> {
    let name = event.name.as_deref().unwrap_or("message");
    if matches!(name, "ping") {
        return Ok(StreamStep::default());
    }
    let value = json_data(event)?;
    let number = |pointer: &str| value.pointer(pointer).and_then(Value::as_u64);
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(match name {
        "message_start" => StreamStep {
            input_tokens: number("/message/usage/input_tokens"),
            ..StreamStep::default()
        },
        "content_block_delta" => StreamStep {
            text: text("/delta/text"),
            ..StreamStep::default()
        },
        "message_delta" => StreamStep {
            finish_reason: text("/delta/stop_reason"),
            output_tokens: number("/usage/output_tokens"),
            ..StreamStep::default()
        },
        "message_stop" => StreamStep {
            done: true,
            ..StreamStep::default()
        },
        "error" => {
            return Err((
                FailureReason::ProviderFailed,
                provider_message(event.data.as_bytes()),
            ))
        }
        _ => StreamStep::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let wait = parse_retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_messages_are_read_from_either_format_and_scrubbed() {
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-123","type":"invalid_request_error"}}"#;
        assert_eq!(
            scrub(&provider_message(openai), Some("sk-123")),
            "Incorrect API key provided: [redacted]"
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(provider_message(anthropic), "Overloaded");
        assert_eq!(
            provider_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }
}
