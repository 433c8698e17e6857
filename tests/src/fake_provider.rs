//! A local fake AI model provider for development and tests: it speaks OpenAI's Chat Completions
//! (`POST /{scenario}/v1/chat/completions`) and Anthropic's Messages (`POST /{scenario}/v1/messages`)
//! wire formats, streaming included, answers deterministically (`"Echo: "` and the last user message),
//! misbehaves on request as the first path segment (the scenario) says, and records every request it
//! receives with how it ended (`GET /_requests` lists them, `DELETE /_requests` forgets them).
//!
//! Scenarios: `ok`, `rate-limited`, `rate-limited-once`, `server-error`, `flaky`, `slow-<ms>`,
//! `drip-<ms>`, `malformed`, `echo-credential`, `bad-request` and `verdict` (which answers a fixed
//! sentiment verdict, `{"label": "negative", "score": -0.6}`, as a model asked for one would); any
//! other answers 404. A token is a
//! word with the whitespace after it, so a stream's deltas concatenate to the non-streamed text; usage
//! counts whitespace-separated words. Sampling parameters (`temperature`, `top_p`, `stop`, ...) are
//! recorded but change nothing.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A fake provider serving on a random local port, stopped when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    state: ProviderState,
    server: JoinHandle<std::io::Result<()>>,
}

impl FakeProvider {
    /// Serves a fresh fake provider on `127.0.0.1` and a free port.
    pub async fn spawn() -> anyhow::Result<FakeProvider> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a local port")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let state = ProviderState::default();
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(FakeProvider {
            addr,
            state,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint of `provider` (`"openai"` or `"anthropic"`) in `scenario`, e.g.
    /// `http://127.0.0.1:PORT/ok/v1/chat/completions`. Panics on any other provider.
    pub fn url(&self, scenario: &str, provider: &str) -> String {
        let path = match provider {
            "openai" => Provider::OpenAi.path(),
            "anthropic" => Provider::Anthropic.path(),
            other => panic!("unknown provider {other:?}: expected \"openai\" or \"anthropic\""),
        };
        format!("http://{}/{scenario}{path}", self.addr)
    }

    /// The requests received so far, in the order they arrived.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves the fake provider on `listener` until the server fails.
pub async fn serve(listener: TcpListener, state: ProviderState) -> std::io::Result<()> {
    axum::serve(listener, app(state)).await
}

/// The fake provider's routes over `state`.
pub fn app(state: ProviderState) -> Router {
    Router::new()
        .route("/_requests", get(list_requests).delete(clear_requests))
        .route("/{scenario}/v1/chat/completions", post(chat_completions))
        .route("/{scenario}/v1/messages", post(messages))
        .with_state(state)
}

/// One request the provider received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub scenario: String,
    /// `"openai"` or `"anthropic"`.
    pub provider: String,
    /// The bearer token (OpenAI) or `x-api-key` (Anthropic), if one was sent.
    pub credential: Option<String>,
    /// The `anthropic-version` header, if one was sent.
    pub anthropic_version: Option<String>,
    /// The request's JSON body (`null` when it was not JSON).
    pub body: Value,
    pub outcome: Outcome,
}

/// How a recorded request ended, or where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Received, not answered yet (e.g. waiting in a `slow-<ms>` scenario).
    Pending,
    /// A stream is being written.
    Streaming,
    /// The whole response was written.
    Answered,
    /// Answered with an error status.
    Rejected,
    /// The client went away before the whole response was written.
    Cancelled,
}

/// What the provider remembers: the requests it received and the texts it has already refused once.
#[derive(Clone, Default)]
pub struct ProviderState {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    next_id: u64,
    requests: Vec<(u64, RecordedRequest)>,
    /// (scenario, provider, last user message) of the requests a `-once`/`flaky` scenario refused.
    refused: HashSet<(String, &'static str, String)>,
}

impl ProviderState {
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let recorded = self.lock();
        recorded.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Forgets the recorded requests and which texts were already refused once.
    pub fn clear(&self) {
        let mut recorded = self.lock();
        recorded.requests.clear();
        recorded.refused.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panicking test must not make every later request (or a Drop) panic too.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: RecordedRequest) -> Recording {
        let mut recorded = self.lock();
        recorded.next_id += 1;
        let id = recorded.next_id;
        recorded.requests.push((id, request));
        Recording {
            state: self.clone(),
            id,
            finished: false,
        }
    }

    fn set_outcome(&self, id: u64, outcome: Outcome) {
        let mut recorded = self.lock();
        if let Some((_, request)) = recorded.requests.iter_mut().find(|(i, _)| *i == id) {
            request.outcome = outcome;
        }
    }

    /// Whether this is the first time `key` is seen (and remembers it).
    fn first_time(&self, key: (String, &'static str, String)) -> bool {
        self.lock().refused.insert(key)
    }
}

/// A recorded request still being answered: dropped before [`Recording::finish`] (the handler or the
/// response stream dropped because the client went away), it marks the request cancelled.
struct Recording {
    state: ProviderState,
    id: u64,
    finished: bool,
}

impl Recording {
    fn set(&self, outcome: Outcome) {
        self.state.set_outcome(self.id, outcome);
    }

    fn finish(mut self, outcome: Outcome) {
        self.set(outcome);
        self.finished = true;
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.finished {
            self.set(Outcome::Cancelled);
        }
    }
}

async fn list_requests(State(state): State<ProviderState>) -> Json<Vec<RecordedRequest>> {
    Json(state.requests())
}

async fn clear_requests(State(state): State<ProviderState>) -> StatusCode {
    state.clear();
    StatusCode::NO_CONTENT
}

async fn chat_completions(
    State(state): State<ProviderState>,
    Path(scenario): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, Provider::OpenAi, scenario, headers, body).await
}

async fn messages(
    State(state): State<ProviderState>,
    Path(scenario): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, Provider::Anthropic, scenario, headers, body).await
}

/// Records the request, answers it and records how that went.
async fn handle(
    state: ProviderState,
    provider: Provider,
    scenario: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let recording = state.record(RecordedRequest {
        scenario: scenario.clone(),
        provider: provider.name().into(),
        credential: provider.credential(&headers),
        anthropic_version: header_text(&headers, "anthropic-version"),
        body: body.clone(),
        outcome: Outcome::Pending,
    });
    match answer(&state, provider, &scenario, &headers, &body).await {
        Err(rejection) => {
            recording.finish(Outcome::Rejected);
            rejection.into_response(provider)
        }
        Ok(Answer::Json(value)) => {
            recording.finish(Outcome::Answered);
            Json(value).into_response()
        }
        Ok(Answer::NotJson(text)) => {
            recording.finish(Outcome::Answered);
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Ok(Answer::Stream(events)) => {
            recording.set(Outcome::Streaming);
            event_stream(events, recording)
        }
    }
}

/// What a request gets when it is not rejected.
enum Answer {
    Json(Value),
    /// A 200 labelled JSON whose body is not.
    NotJson(&'static str),
    /// Server-sent events, each written whole.
    Stream(Vec<Event>),
}

/// One server-sent event, written after `pause`.
struct Event {
    pause: Duration,
    text: String,
}

impl Event {
    fn now(text: String) -> Event {
        Event {
            pause: Duration::ZERO,
            text,
        }
    }
}

/// The answer to a request in `scenario_name`: the scenario first (404 when unknown), then
/// authentication, then the body, then the scenario's behaviour.
async fn answer(
    state: &ProviderState,
    provider: Provider,
    scenario_name: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Answer, Rejection> {
    let scenario = Scenario::parse(scenario_name).ok_or_else(|| {
        Rejection::new(
            Failure::NotFound,
            format!("Unknown scenario '{scenario_name}'"),
        )
    })?;
    let Some(credential) = provider.credential(headers) else {
        return Err(Rejection::new(
            Failure::Authentication,
            provider.pick(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "x-api-key header is required",
            ),
        ));
    };
    if provider == Provider::Anthropic && header_text(headers, "anthropic-version").is_none() {
        return Err(Rejection::new(
            Failure::InvalidRequest,
            "anthropic-version: header is required",
        ));
    }
    let prompt = Prompt::read(provider, body)?;
    let once_key = || {
        (
            scenario_name.to_owned(),
            provider.name(),
            prompt.last_user_text.clone(),
        )
    };
    match scenario {
        Scenario::RateLimited => return Err(rate_limited(provider)),
        Scenario::RateLimitedOnce if state.first_time(once_key()) => {
            return Err(rate_limited(provider))
        }
        Scenario::ServerError => {
            return Err(Rejection::new(
                Failure::ServerError,
                provider.pick(
                    "The server had an error while processing your request. Sorry about that!",
                    "Internal server error",
                ),
            ))
        }
        Scenario::Flaky if state.first_time(once_key()) => {
            return Err(Rejection::new(
                Failure::Overloaded,
                provider.pick("The server is overloaded or not ready yet.", "Overloaded"),
            ))
        }
        Scenario::EchoCredential => {
            return Err(Rejection::new(
                Failure::InvalidRequest,
                format!("Incorrect API key provided: {credential}"),
            ))
        }
        Scenario::BadRequest => {
            return Err(Rejection::new(
                Failure::InvalidRequest,
                "max_tokens: must be at most 4096",
            ))
        }
        Scenario::Slow(wait) => tokio::time::sleep(wait).await,
        Scenario::Drip(wait) if !prompt.stream => tokio::time::sleep(wait).await,
        Scenario::Malformed if prompt.stream => {
            let event = provider.pick(
                "data: {\"choices\": [\n\n",
                "event: message_start\ndata: {\"type\": \"message_start\", \"message\": {\n\n",
            );
            return Ok(Answer::Stream(vec![Event::now(event.into())]));
        }
        Scenario::Malformed => return Ok(Answer::NotJson("{\"choices\": [")),
        _ => {}
    }
    let drip = match scenario {
        Scenario::Drip(wait) => wait,
        _ => Duration::ZERO,
    };
    let reply = match scenario {
        Scenario::Verdict => Reply::of(VERDICT, prompt.max_tokens),
        _ => Reply::to(&prompt),
    };
    Ok(match (provider, prompt.stream) {
        (Provider::OpenAi, false) => Answer::Json(openai_completion(&prompt, &reply)),
        (Provider::OpenAi, true) => Answer::Stream(openai_stream(&prompt, &reply, drip)),
        (Provider::Anthropic, false) => Answer::Json(anthropic_message(&prompt, &reply)),
        (Provider::Anthropic, true) => Answer::Stream(anthropic_stream(&prompt, &reply, drip)),
    })
}

fn rate_limited(provider: Provider) -> Rejection {
    Rejection::new(
        Failure::RateLimited,
        provider.pick(
            "Rate limit reached",
            "This request would exceed the rate limit for your organization",
        ),
    )
}

/// The behaviour the first path segment selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Ok,
    RateLimited,
    RateLimitedOnce,
    ServerError,
    Flaky,
    Slow(Duration),
    Drip(Duration),
    Malformed,
    EchoCredential,
    BadRequest,
    Verdict,
}

impl Scenario {
    fn parse(name: &str) -> Option<Scenario> {
        let millis = |prefix: &str| {
            let ms = name.strip_prefix(prefix)?.parse().ok()?;
            Some(Duration::from_millis(ms))
        };
        Some(match name {
            "ok" => Scenario::Ok,
            "rate-limited" => Scenario::RateLimited,
            "rate-limited-once" => Scenario::RateLimitedOnce,
            "server-error" => Scenario::ServerError,
            "flaky" => Scenario::Flaky,
            "malformed" => Scenario::Malformed,
            "echo-credential" => Scenario::EchoCredential,
            "bad-request" => Scenario::BadRequest,
            "verdict" => Scenario::Verdict,
            _ => match (millis("slow-"), millis("drip-")) {
                (Some(wait), _) => Scenario::Slow(wait),
                (_, Some(wait)) => Scenario::Drip(wait),
                _ => return None,
            },
        })
    }
}

/// The wire format a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    fn name(self) -> &'static str {
        self.pick("openai", "anthropic")
    }

    fn path(self) -> &'static str {
        self.pick("/v1/chat/completions", "/v1/messages")
    }

    /// `openai` or `anthropic`, whichever is this provider's.
    fn pick<T>(self, openai: T, anthropic: T) -> T {
        match self {
            Provider::OpenAi => openai,
            Provider::Anthropic => anthropic,
        }
    }

    /// The non-empty credential the request carries: a bearer token or an `x-api-key`.
    fn credential(self, headers: &HeaderMap) -> Option<String> {
        let credential = match self {
            Provider::OpenAi => header_text(headers, "authorization")?
                .strip_prefix("Bearer ")?
                .trim()
                .to_owned(),
            Provider::Anthropic => header_text(headers, "x-api-key")?,
        };
        Some(credential).filter(|c| !c.is_empty())
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(value.to_owned())
}

/// The kinds of error the provider answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Authentication,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    Overloaded,
}

/// An error answer, shaped as its provider shapes errors.
struct Rejection {
    failure: Failure,
    message: String,
}

impl Rejection {
    fn new(failure: Failure, message: impl Into<String>) -> Rejection {
        Rejection {
            failure,
            message: message.into(),
        }
    }

    fn into_response(self, provider: Provider) -> Response {
        let (status, body) = match provider {
            Provider::OpenAi => {
                let (status, kind, code) = match self.failure {
                    Failure::Authentication => {
                        (401, "invalid_request_error", Some("invalid_api_key"))
                    }
                    Failure::InvalidRequest => (400, "invalid_request_error", None),
                    Failure::NotFound => (404, "invalid_request_error", Some("unknown_url")),
                    Failure::RateLimited => (429, "requests", Some("rate_limit_exceeded")),
                    Failure::ServerError => (500, "server_error", None),
                    Failure::Overloaded => (503, "server_error", None),
                };
                let error =
                    json!({ "message": self.message, "type": kind, "param": null, "code": code });
                (status, json!({ "error": error }))
            }
            Provider::Anthropic => {
                let (status, kind) = match self.failure {
                    Failure::Authentication => (401, "authentication_error"),
                    Failure::InvalidRequest => (400, "invalid_request_error"),
                    Failure::NotFound => (404, "not_found_error"),
                    Failure::RateLimited => (429, "rate_limit_error"),
                    Failure::ServerError => (500, "api_error"),
                    Failure::Overloaded => (529, "overloaded_error"),
                };
                let error = json!({ "type": kind, "message": self.message });
                (status, json!({ "type": "error", "error": error }))
            }
        };
        let status = StatusCode::from_u16(status).expect("a valid status code");
        let mut response = (status, Json(body)).into_response();
        if self.failure == Failure::RateLimited {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// What the provider reads from a request body.
struct Prompt {
    model: String,
    last_user_text: String,
    /// Whitespace-separated words across every message (and the system prompt).
    input_tokens: usize,
    max_tokens: Option<usize>,
    stream: bool,
    /// OpenAI's `stream_options.include_usage`.
    include_usage: bool,
}

impl Prompt {
    fn read(provider: Provider, body: &Value) -> Result<Prompt, Rejection> {
        let invalid = |message: &str| Rejection::new(Failure::InvalidRequest, message);
        if !body.is_object() {
            return Err(invalid(provider.pick(
                "We could not parse the JSON body of your request.",
                "The request body is not valid JSON.",
            )));
        }
        let model = body["model"].as_str().ok_or_else(|| {
            invalid(provider.pick(
                "Missing required parameter: 'model'.",
                "model: Field required",
            ))
        })?;
        let messages = body["messages"].as_array().ok_or_else(|| {
            invalid(provider.pick(
                "Missing required parameter: 'messages'.",
                "messages: Field required",
            ))
        })?;
        let max_tokens = match provider {
            Provider::OpenAi => [&body["max_completion_tokens"], &body["max_tokens"]]
                .into_iter()
                .find(|v| !v.is_null()),
            Provider::Anthropic => Some(&body["max_tokens"]).filter(|v| !v.is_null()),
        };
        let max_tokens = match max_tokens {
            None if provider == Provider::Anthropic => {
                return Err(invalid("max_tokens: Field required"))
            }
            None => None,
            Some(value) => match value.as_u64() {
                Some(max) if max >= 1 => Some(usize::try_from(max).unwrap_or(usize::MAX)),
                _ => return Err(invalid("max_tokens: must be a positive integer")),
            },
        };
        let texts: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
        let last_user_text = messages
            .iter()
            .zip(&texts)
            .rev()
            .find(|(m, _)| m["role"] == "user")
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        let system_words = text_of(&body["system"]).split_whitespace().count();
        let message_words: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
        Ok(Prompt {
            model: model.to_owned(),
            last_user_text,
            input_tokens: system_words + message_words,
            max_tokens,
            stream: body["stream"].as_bool().unwrap_or(false),
            include_usage: body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
        })
    }
}

/// The text of a message's content: a string, or the text parts of an array of parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The reply to a prompt, in tokens.
struct Reply {
    text: String,
    tokens: Vec<String>,
    /// Whether `max_tokens` cut it short.
    truncated: bool,
}

/// What the `verdict` scenario answers.
pub const VERDICT: &str = r#"{"label": "negative", "score": -0.6}"#;

impl Reply {
    fn to(prompt: &Prompt) -> Reply {
        Reply::of(
            &format!("Echo: {}", prompt.last_user_text),
            prompt.max_tokens,
        )
    }

    fn of(text: &str, max_tokens: Option<usize>) -> Reply {
        let mut tokens = split_tokens(text);
        let truncated = max_tokens.is_some_and(|max| tokens.len() > max);
        if let Some(max) = max_tokens {
            tokens.truncate(max);
        }
        Reply {
            text: tokens.concat(),
            tokens,
            truncated,
        }
    }
}

/// `text` as words, each with the whitespace that follows it, so that the tokens concatenate to
/// `text` (leading whitespace, if any, stays with the first word).
fn split_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut after_word = false;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = after_word;
        } else {
            if in_space {
                tokens.push(text[start..i].to_owned());
                start = i;
                in_space = false;
            }
            after_word = true;
        }
    }
    if start < text.len() {
        tokens.push(text[start..].to_owned());
    }
    tokens
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn openai_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

fn openai_finish_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "length"
    } else {
        "stop"
    }
}

fn openai_usage(prompt: &Prompt, reply: &Reply) -> Value {
    let (input, output) = (prompt.input_tokens, reply.tokens.len());
    json!({ "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output })
}

fn openai_completion(prompt: &Prompt, reply: &Reply) -> Value {
    json!({
        "id": openai_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": prompt.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": reply.text },
            "logprobs": null,
            "finish_reason": openai_finish_reason(reply),
        }],
        "usage": openai_usage(prompt, reply),
    })
}

/// A stream chunk's `choices`: the one choice, with `delta` and `finish_reason`.
fn openai_choice(delta: Value, finish_reason: Value) -> Value {
    json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }])
}

/// A chat completion as chunks: the role, one chunk per token, the finish reason, the usage (only
/// with `stream_options.include_usage`, which also puts `"usage": null` on every other chunk), then
/// `[DONE]`.
fn openai_stream(prompt: &Prompt, reply: &Reply, drip: Duration) -> Vec<Event> {
    let (id, created) = (openai_id(), unix_now());
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": prompt.model,
            "choices": choices,
        });
        if prompt.include_usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    };
    let mut events = vec![Event::now(chunk(
        openai_choice(json!({ "role": "assistant", "content": "" }), Value::Null),
        Value::Null,
    ))];
    for token in &reply.tokens {
        events.push(Event {
            pause: drip,
            text: chunk(
                openai_choice(json!({ "content": token }), Value::Null),
                Value::Null,
            ),
        });
    }
    events.push(Event::now(chunk(
        openai_choice(json!({}), json!(openai_finish_reason(reply))),
        Value::Null,
    )));
    if prompt.include_usage {
        events.push(Event::now(chunk(json!([]), openai_usage(prompt, reply))));
    }
    events.push(Event::now("data: [DONE]\n\n".into()));
    events
}

fn anthropic_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

fn anthropic_stop_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_message(prompt: &Prompt, reply: &Reply) -> Value {
    json!({
        "id": anthropic_id(),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [{ "type": "text", "text": reply.text }],
        "stop_reason": anthropic_stop_reason(reply),
        "stop_sequence": null,
        "usage": { "input_tokens": prompt.input_tokens, "output_tokens": reply.tokens.len() },
    })
}

/// A message as Anthropic streams it: `message_start`, `content_block_start`, `ping`, one
/// `content_block_delta` per token, `content_block_stop`, `message_delta`, `message_stop`.
fn anthropic_stream(prompt: &Prompt, reply: &Reply, drip: Duration) -> Vec<Event> {
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap_or("")
        )
    };
    let message = json!({
        "id": anthropic_id(),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
        "usage": { "input_tokens": prompt.input_tokens, "output_tokens": 1 },
    });
    let mut events = vec![
        Event::now(event(
            json!({ "type": "message_start", "message": message }),
        )),
        Event::now(event(json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": { "type": "text", "text": "" },
        }))),
        Event::now(event(json!({ "type": "ping" }))),
    ];
    for token in &reply.tokens {
        events.push(Event {
            pause: drip,
            text: event(json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": { "type": "text_delta", "text": token },
            })),
        });
    }
    events.push(Event::now(event(
        json!({ "type": "content_block_stop", "index": 0 }),
    )));
    events.push(Event::now(event(json!({
        "type": "message_delta",
        "delta": { "stop_reason": anthropic_stop_reason(reply), "stop_sequence": null },
        "usage": { "output_tokens": reply.tokens.len() },
    }))));
    events.push(Event::now(event(json!({ "type": "message_stop" }))));
    events
}

/// `events` as a `text/event-stream` response. The recording moves into the body: the request is
/// answered once the last event is taken, and cancelled if the body is dropped before (the client
/// went away).
fn event_stream(events: Vec<Event>, recording: Recording) -> Response {
    let body = futures::stream::unfold(
        (events.into_iter(), recording),
        |(mut events, recording)| async move {
            let Some(event) = events.next() else {
                recording.finish(Outcome::Answered);
                return None;
            };
            if !event.pause.is_zero() {
                tokio::time::sleep(event.pause).await;
            }
            Some((
                Ok::<_, Infallible>(Bytes::from(event.text)),
                (events, recording),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Posts `body` to `provider`'s endpoint in `scenario` with valid credentials.
    async fn post(
        fake: &FakeProvider,
        scenario: &str,
        provider: &str,
        body: Value,
    ) -> reqwest::Response {
        let request = reqwest::Client::new()
            .post(fake.url(scenario, provider))
            .json(&body);
        let request = match provider {
            "openai" => request.bearer_auth("sk-test"),
            _ => request
                .header("x-api-key", "sk-ant-test")
                .header("anthropic-version", "2023-06-01"),
        };
        request.send().await.expect("sending the request")
    }

    fn chat(text: &str) -> Value {
        json!({
            "model": "test-model",
            "max_tokens": 100,
            "messages": [{ "role": "user", "content": text }],
        })
    }

    fn with(mut body: Value, key: &str, value: Value) -> Value {
        body[key] = value;
        body
    }

    /// A stream's events as (event name, data).
    async fn read_events(response: reqwest::Response) -> Vec<(Option<String>, String)> {
        assert_eq!(response.status(), 200);
        let content_type = &response.headers()[header::CONTENT_TYPE];
        assert!(content_type
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = response.text().await.unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = value.to_owned();
                    } else {
                        panic!("unexpected line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    fn json_of(data: &str) -> Value {
        serde_json::from_str(data).unwrap_or_else(|e| panic!("{data:?}: {e}"))
    }

    #[tokio::test]
    async fn openai_answers_with_the_echo_and_its_usage() {
        let fake = FakeProvider::spawn().await.unwrap();
        let body = json!({
            "model": "gpt-test",
            "messages": [
                { "role": "system", "content": "Be brief" },
                { "role": "user", "content": "hello there world" },
            ],
        });
        let response = post(&fake, "ok", "openai", body.clone()).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(answer["object"], "chat.completion");
        assert!(answer["created"].as_u64().unwrap() > 0);
        assert_eq!(answer["model"], "gpt-test");
        assert_eq!(answer["choices"][0]["index"], 0);
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "Echo: hello there world"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            answer["usage"],
            json!({ "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 })
        );

        let truncated = with(body.clone(), "max_completion_tokens", json!(2));
        let answer: Value = post(&fake, "ok", "openai", truncated)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "Echo: hello ");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert_eq!(answer["usage"]["completion_tokens"], 2);

        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].scenario, "ok");
        assert_eq!(requests[0].provider, "openai");
        assert_eq!(requests[0].credential.as_deref(), Some("sk-test"));
        assert_eq!(requests[0].anthropic_version, None);
        assert_eq!(requests[0].body, body);
        assert_eq!(requests[0].outcome, Outcome::Answered);
    }

    #[tokio::test]
    async fn stream_deltas_concatenate_to_the_non_streamed_text() {
        let fake = FakeProvider::spawn().await.unwrap();
        let text = "the  quick\nbrown fox";
        for max_tokens in [100, 3] {
            let body = chat(text);
            let body = with(body, "max_tokens", json!(max_tokens));

            // OpenAI: role first, one chunk per token, the finish reason, [DONE].
            let answer: Value = post(&fake, "ok", "openai", body.clone())
                .await
                .json()
                .await
                .unwrap();
            let expected = answer["choices"][0]["message"]["content"].as_str().unwrap();
            let stream = with(body.clone(), "stream", json!(true));
            let events = read_events(post(&fake, "ok", "openai", stream).await).await;
            let (last, chunks) = events.split_last().unwrap();
            assert_eq!(last.1, "[DONE]");
            let chunks: Vec<Value> = chunks.iter().map(|(_, d)| json_of(d)).collect();
            assert_eq!(
                chunks[0]["choices"][0]["delta"],
                json!({ "role": "assistant", "content": "" })
            );
            let streamed: String = chunks[1..chunks.len() - 1]
                .iter()
                .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
                .collect();
            assert_eq!(streamed, expected);
            let end = chunks.last().unwrap();
            assert_eq!(end["choices"][0]["delta"], json!({}));
            assert_eq!(
                end["choices"][0]["finish_reason"],
                answer["choices"][0]["finish_reason"]
            );
            for chunk in &chunks {
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assert_eq!(chunk["id"], chunks[0]["id"]);
                assert_eq!(chunk["model"], "test-model");
            }

            // Anthropic: the events in their order, the deltas, the stop reason and usage.
            let answer: Value = post(&fake, "ok", "anthropic", body.clone())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(answer["type"], "message");
            let expected = answer["content"][0]["text"].as_str().unwrap();
            let stream = with(body, "stream", json!(true));
            let events = read_events(post(&fake, "ok", "anthropic", stream).await).await;
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
            let deltas = names.len() - 6;
            let mut expected_names = vec!["message_start", "content_block_start", "ping"];
            expected_names.extend(std::iter::repeat_n("content_block_delta", deltas));
            expected_names.extend(["content_block_stop", "message_delta", "message_stop"]);
            assert_eq!(names, expected_names);
            let data: Vec<Value> = events.iter().map(|(_, d)| json_of(d)).collect();
            assert_eq!(
                data[0]["message"]["usage"],
                json!({ "input_tokens": answer["usage"]["input_tokens"], "output_tokens": 1 })
            );
            let streamed: String = data[3..3 + deltas]
                .iter()
                .map(|d| d["delta"]["text"].as_str().unwrap())
                .collect();
            assert_eq!(streamed, expected);
            assert_eq!(
                data[deltas + 4]["delta"],
                json!({ "stop_reason": answer["stop_reason"], "stop_sequence": null })
            );
            assert_eq!(
                data[deltas + 4]["usage"]["output_tokens"],
                answer["usage"]["output_tokens"]
            );
        }
        assert_eq!(
            post(&fake, "ok", "anthropic", chat(text))
                .await
                .json::<Value>()
                .await
                .unwrap()["content"][0]["text"],
            "Echo: the  quick\nbrown fox"
        );
        let outcomes: Vec<Outcome> = fake.requests().iter().map(|r| r.outcome).collect();
        assert!(
            outcomes.iter().all(|o| *o == Outcome::Answered),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn the_usage_chunk_comes_only_with_include_usage() {
        let fake = FakeProvider::spawn().await.unwrap();
        let stream = with(chat("count these words"), "stream", json!(true));

        let events = read_events(post(&fake, "ok", "openai", stream.clone()).await).await;
        for (_, data) in &events[..events.len() - 1] {
            let chunk = json_of(data);
            assert!(chunk.get("usage").is_none(), "{chunk}");
            assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
        }

        let with_usage = with(stream, "stream_options", json!({ "include_usage": true }));
        let events = read_events(post(&fake, "ok", "openai", with_usage).await).await;
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|(_, d)| json_of(d))
            .collect();
        let (usage, others) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({ "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7 })
        );
        for chunk in others {
            assert_eq!(chunk["usage"], Value::Null);
            assert!(chunk.get("usage").is_some());
        }
        assert_eq!(events.last().unwrap().1, "[DONE]");
    }

    #[tokio::test]
    async fn requests_without_credentials_are_refused() {
        let fake = FakeProvider::spawn().await.unwrap();
        let client = reqwest::Client::new();

        let response = client
            .post(fake.url("ok", "openai"))
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["param"], Value::Null);

        let response = client
            .post(fake.url("ok", "anthropic"))
            .header("anthropic-version", "2023-06-01")
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");

        let response = client
            .post(fake.url("ok", "anthropic"))
            .header("x-api-key", "sk-ant-test")
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");

        let requests = fake.requests();
        assert_eq!(requests.len(), 3);
        assert!(requests.iter().all(|r| r.outcome == Outcome::Rejected));
        assert_eq!(requests[0].credential, None);
        assert_eq!(requests[2].credential.as_deref(), Some("sk-ant-test"));
    }

    #[tokio::test]
    async fn rate_limited_once_refuses_a_text_once_then_answers() {
        let fake = FakeProvider::spawn().await.unwrap();
        for provider in ["openai", "anthropic"] {
            let first = post(&fake, "rate-limited-once", provider, chat("again")).await;
            assert_eq!(first.status(), 429);
            assert_eq!(first.headers()[header::RETRY_AFTER], "1");
            let body: Value = first.json().await.unwrap();
            match provider {
                "openai" => assert_eq!(
                    body,
                    json!({ "error": {
                        "message": "Rate limit reached",
                        "type": "requests",
                        "param": null,
                        "code": "rate_limit_exceeded",
                    } })
                ),
                _ => assert_eq!(body["error"]["type"], "rate_limit_error"),
            }
            let second = post(&fake, "rate-limited-once", provider, chat("again")).await;
            assert_eq!(second.status(), 200);
            let other = post(&fake, "rate-limited-once", provider, chat("other")).await;
            assert_eq!(other.status(), 429);
        }
        let outcomes: Vec<Outcome> = fake.requests().iter().map(|r| r.outcome).collect();
        use Outcome::{Answered, Rejected};
        assert_eq!(
            outcomes,
            [Rejected, Answered, Rejected, Rejected, Answered, Rejected]
        );
    }

    #[tokio::test]
    async fn a_dropped_stream_is_recorded_as_cancelled() {
        let fake = FakeProvider::spawn().await.unwrap();
        let long = vec!["word"; 40].join(" ");
        let stream = with(chat(&long), "stream", json!(true));
        let mut response = post(&fake, "drip-50", "openai", stream).await;
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.unwrap().expect("a first chunk");
        assert!(first.starts_with(b"data: "));
        assert_eq!(fake.requests()[0].outcome, Outcome::Streaming);
        drop(response);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let outcome = fake.requests()[0].outcome;
            if outcome == Outcome::Cancelled {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {outcome:?} after the client went away"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
