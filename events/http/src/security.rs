//! Refused requests as security signals: every answer that refuses a token, a permission, another
//! tenant's resource, a rate limit or a sign-in, and every refused request whose input looks like an
//! attack (a probe), is observed by [`observe`] and recorded, aggregated, in `security_refusals`
//! (migration 0018), which the operator surface's security events read and the projector's probe
//! intake turns into triage reports.
//!
//! Recording never slows the refusal and never lets a flood grow storage without bound:
//! - the middleware only hands the observation (with at most [`INPUT_MAX`] bytes of input) to a
//!   bounded channel without waiting; when the channel is full the observation is dropped and
//!   counted (`security_observations_dropped_total`);
//! - a background task classifies the input, and aggregates per minute, kind, source address and
//!   caller: one row with a count and the first request's sample, written once a second with an
//!   upsert that adds to the count, so several API processes share the rows;
//! - at most [`SOURCES_PER_MINUTE`] sources per minute and kind get rows of their own in a process;
//!   the rest are counted together under the source `*`.
//!
//! Samples are bounded excerpts: values of credential-like fields (`token`, `secret`, `password`,
//! `value`, keys …) are replaced by `[redacted]` before anything is kept, and headers are never kept.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, DurationRound, Utc};
use domain::feedback::classify::{classify, ProbeGroup};
use domain::RequestContext;
use regex::Regex;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::ApiError;

/// The most input (query and body) an observation carries for classification.
pub const INPUT_MAX: usize = 8 * 1024;
/// The longest excerpt kept with a sample, in characters.
pub const EXCERPT_MAX: usize = 300;
/// Sources per minute and kind that get rows of their own, in one process.
pub const SOURCES_PER_MINUTE: usize = 1000;
/// Bodies up to this size (by `Content-Length`) are looked at; larger ones are not buffered.
const BODY_LOOKED_AT: u64 = 64 * 1024;
const CHANNEL: usize = 1000;
/// The headers a refusal's record reads: where the request came from, and its client.
const FORWARDING: [&str; 3] = ["x-real-ip", "x-forwarded-for", "user-agent"];

/// What kind of refusal a security event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    TokenRefused,
    PermissionDenied,
    CrossTenant,
    RateLimited,
    SignInFailed,
    Probe,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::TokenRefused,
        Kind::PermissionDenied,
        Kind::CrossTenant,
        Kind::RateLimited,
        Kind::SignInFailed,
        Kind::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TokenRefused => "token_refused",
            Kind::PermissionDenied => "permission_denied",
            Kind::CrossTenant => "cross_tenant",
            Kind::RateLimited => "rate_limited",
            Kind::SignInFailed => "sign_in_failed",
            Kind::Probe => "probe",
        }
    }
}

/// What a refused answer tells the observer, attached to the response by [`ApiError`].
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `None`: refused for a reason that is no security signal by itself (bad input, a conflict).
    pub kind: Option<Kind>,
    pub reason: String,
}

/// The caller of a request once it is authenticated, filled in by the APIs' extractors
/// ([`note_caller`]) so that its refusals name who was refused.
#[derive(Clone, Default)]
struct CallerSlot(Arc<OnceLock<Uuid>>);

/// Records the authenticated caller of the request `extensions` belong to.
pub fn note_caller(extensions: &axum::http::Extensions, user_id: Uuid) {
    if let Some(slot) = extensions.get::<CallerSlot>() {
        let _ = slot.0.set(user_id);
    }
}

/// One refused request, as handed to the recorder.
#[derive(Debug)]
struct Observation {
    at: DateTime<Utc>,
    kind: Option<Kind>,
    reason: String,
    source: Option<String>,
    actor: Option<Uuid>,
    user_agent: Option<String>,
    method: String,
    route: String,
    status: u16,
    /// The query string and the start of the body, for classification and the excerpt.
    input: String,
}

/// Hands observations to the background task that aggregates and stores them.
#[derive(Clone)]
pub struct SecurityRecorder {
    sender: Option<mpsc::Sender<Observation>>,
}

impl SecurityRecorder {
    /// A recorder writing to `pool` once a second, from a task on the current runtime.
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        tokio::spawn(store(pool, receiver, Duration::from_secs(1)));
        SecurityRecorder {
            sender: Some(sender),
        }
    }

    /// A recorder that keeps nothing (tools that serve no requests).
    pub fn disabled() -> Self {
        SecurityRecorder { sender: None }
    }

    fn record(&self, observation: Observation) {
        if let Some(sender) = &self.sender {
            if sender.try_send(observation).is_err() {
                metrics::counter!("security_observations_dropped_total").increment(1);
            }
        }
    }
}

/// The middleware: passes the request on, and observes the answer if it refuses.
pub async fn observe(
    State(recorder): State<SecurityRecorder>,
    request: Request,
    next: Next,
) -> Response {
    let slot = CallerSlot::default();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(slot.clone());
    let small = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > 0 && length <= BODY_LOOKED_AT);
    // A small body is read here so that its start can be looked at if the request is refused; the
    // handler reads the same bytes.
    let (body, kept) = if small {
        match axum::body::to_bytes(body, BODY_LOOKED_AT as usize).await {
            Ok(bytes) => (Body::from(bytes.clone()), bytes),
            Err(_) => {
                return ApiError::BadRequest {
                    error: "Invalid request body".into(),
                    details: "the body could not be read".into(),
                }
                .into_response()
            }
        }
    } else {
        (body, Bytes::new())
    };
    // What a refusal's record needs, kept by cheap clones (reference-counted): most answers are not
    // refusals, and pay for nothing more.
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let route = parts.extensions.get::<MatchedPath>().cloned();
    let forwarding = FORWARDING.map(|name| parts.headers.get(name).cloned());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    if !status.is_client_error() {
        return response;
    }
    let context = RequestContext::from_headers(
        |name| {
            let at = FORWARDING.iter().position(|n| *n == name)?;
            forwarding[at].as_ref()?.to_str().ok()
        },
        peer.map(|ip| ip.to_string()),
    );
    let route = route.map_or_else(|| uri.path().to_owned(), |r| r.as_str().to_owned());
    let refusal = response.extensions().get::<Refusal>().cloned();
    let kind = if route == "/api/auth/callback" {
        Some(Kind::SignInFailed)
    } else {
        refusal.as_ref().and_then(|r| r.kind)
    };
    let mut input = format!("{}?{}\n", uri.path(), uri.query().unwrap_or(""));
    input.push_str(&String::from_utf8_lossy(&kept[..kept.len().min(INPUT_MAX)]));
    recorder.record(Observation {
        at: Utc::now(),
        kind,
        reason: refusal.map(|r| r.reason).unwrap_or_default(),
        source: context.client_ip,
        actor: slot.0.get().copied(),
        user_agent: context.user_agent,
        method: method.to_string(),
        route,
        status: status.as_u16(),
        input,
    });
    response
}

/// Credential-like fields and parameters, in JSON (`"token": "…"`) or a query (`token=…`).
static CREDENTIALS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)("?\b(?:[a-z_]*token|secret[a-z_]*|password|passwd|api[_-]?key|client[_-]?key|secret[_-]?key|authorization|credentials?|value|values)"?\s*[:=]\s*)("(?:[^"\\]|\\.)*"?|[^&\s,}]*)"#).unwrap()
});

/// The input with credential-like values replaced, cut to [`EXCERPT_MAX`] characters.
pub fn excerpt(input: &str) -> String {
    let redacted = CREDENTIALS.replace_all(input, "${1}[redacted]");
    redacted.chars().take(EXCERPT_MAX).collect()
}

/// The aggregate of one minute, kind, source and caller.
#[derive(Debug)]
struct Aggregate {
    count: i64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    sample: serde_json::Value,
}

type Key = (DateTime<Utc>, &'static str, String, String);

/// Receives observations, classifies and aggregates them, and writes them every `every`.
async fn store(pool: PgPool, mut receiver: mpsc::Receiver<Observation>, every: Duration) {
    let mut aggregator = Aggregator::default();
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            observation = receiver.recv() => match observation {
                Some(observation) => aggregator.add(observation),
                None => {
                    write(&pool, &mut aggregator.pending).await;
                    return;
                }
            },
            _ = ticker.tick() => write(&pool, &mut aggregator.pending).await,
        }
    }
}

/// The aggregates not written yet, and the sources each minute and kind has had rows for.
#[derive(Default)]
struct Aggregator {
    pending: HashMap<Key, Aggregate>,
    sources: HashMap<(DateTime<Utc>, &'static str), HashSet<String>>,
}

impl Aggregator {
    fn add(&mut self, observation: Observation) {
        let groups: Vec<ProbeGroup> = classify(&observation.input);
        // A probe is recorded as a probe whatever else refused it.
        let Some(kind) = (!groups.is_empty())
            .then_some(Kind::Probe)
            .or(observation.kind)
        else {
            return;
        };
        let minute = observation
            .at
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(observation.at);
        self.sources.retain(|(m, _), _| *m >= minute);
        let seen = self.sources.entry((minute, kind.as_str())).or_default();
        let mut source = observation.source.clone().unwrap_or_default();
        if !seen.contains(&source) {
            if seen.len() >= SOURCES_PER_MINUTE {
                source = "*".into();
            } else {
                seen.insert(source.clone());
            }
        }
        let actor = observation.actor.map(|a| a.to_string()).unwrap_or_default();
        let entry = self
            .pending
            .entry((minute, kind.as_str(), source, actor))
            .or_insert_with(|| Aggregate {
                count: 0,
                first_at: observation.at,
                last_at: observation.at,
                sample: json!({
                    "method": observation.method,
                    "route": observation.route,
                    "status": observation.status,
                    "reason": observation.reason,
                    "userAgent": observation.user_agent,
                    "groups": groups,
                    "excerpt": excerpt(&observation.input),
                }),
            });
        entry.count += 1;
        entry.last_at = entry.last_at.max(observation.at);
    }
}

async fn write(pool: &PgPool, pending: &mut HashMap<Key, Aggregate>) {
    if pending.is_empty() {
        return;
    }
    let rows: Vec<(Key, Aggregate)> = pending.drain().collect();
    let result = sqlx::query(
        "INSERT INTO security_refusals (minute, kind, source, actor_id, count, first_at, last_at, sample) \
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                              $6::timestamptz[], $7::timestamptz[], $8::jsonb[]) \
         ON CONFLICT (minute, kind, source, actor_id) DO UPDATE SET \
           count = security_refusals.count + EXCLUDED.count, \
           last_at = greatest(security_refusals.last_at, EXCLUDED.last_at)",
    )
    .bind(rows.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|(k, _)| k.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|(k, _)| k.2.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(k, _)| k.3.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, a)| a.count).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, a)| a.first_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, a)| a.last_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, a)| a.sample.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await;
    if let Err(error) = result {
        let lost: i64 = rows.iter().map(|(_, a)| a.count).sum();
        metrics::counter!("security_observations_dropped_total").increment(lost as u64);
        tracing::warn!(%error, lost, "could not record refused requests");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_never_keep_credentials() {
        let kept = excerpt(
            r#"/api/models?token=sk-live-1&x=1
{"name":"m","token":"sk-live-2","clientKey":"ck","secretKey":"sk3","value":"v4","password":"p5"}"#,
        );
        for secret in ["sk-live-1", "sk-live-2", "\"ck\"", "sk3", "v4", "p5"] {
            assert!(!kept.contains(secret), "{secret} in {kept}");
        }
        assert!(kept.contains("\"name\":\"m\""), "{kept}");
        assert_eq!(excerpt(&"a".repeat(1000)).len(), EXCERPT_MAX);
    }

    /// A permission denial from `source`, now.
    fn denial(source: String) -> Observation {
        Observation {
            at: Utc::now(),
            kind: Some(Kind::PermissionDenied),
            reason: String::new(),
            source: Some(source),
            actor: None,
            user_agent: None,
            method: "GET".into(),
            route: "/api/x".into(),
            status: 403,
            input: "/api/x?\n".into(),
        }
    }

    #[test]
    fn a_flood_of_sources_is_bounded_per_minute() {
        let mut aggregator = Aggregator::default();
        for n in 0..(SOURCES_PER_MINUTE + 500) {
            aggregator.add(denial(format!("10.0.{}.{}", n / 256, n % 256)));
        }
        assert_eq!(aggregator.pending.len(), SOURCES_PER_MINUTE + 1);
        let overflow = aggregator
            .pending
            .iter()
            .find(|(k, _)| k.2 == "*")
            .unwrap()
            .1;
        assert_eq!(overflow.count, 500);
    }

    /// Recording never waits: with the recorder's task behind (here: not draining at all), the
    /// observations past the channel's room are dropped, and every call returns (a waiting send would
    /// never return here).
    #[test]
    fn recording_never_waits_for_the_store() {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let recorder = SecurityRecorder {
            sender: Some(sender),
        };
        for n in 0..(CHANNEL * 10) {
            recorder.record(denial(format!("10.1.0.{}", n % 256)));
        }
        assert_eq!(
            receiver.len(),
            CHANNEL,
            "the channel holds what it has room for"
        );
    }
}
