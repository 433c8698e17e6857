//! The APIs' operations surface: `/healthz`, `/readyz`, `/metrics`, and the layers every request goes
//! through (a request id on every log line and response, a tracing span, request metrics, a time
//! limit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::security::{self, SecurityRecorder};
use crate::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the operations routes and layers need of an API's state.
pub trait OpsState: Clone + Send + Sync + 'static {
    /// The pool `/readyz` checks.
    fn pool(&self) -> &PgPool;
    /// What `/metrics` renders.
    fn metrics(&self) -> &PrometheusHandle;
    /// How long a request may take to produce its response head (`REQUEST_TIMEOUT_SECS`).
    fn request_timeout(&self) -> Duration;
    /// Where refused requests are recorded (`crate::security`).
    fn security(&self) -> &SecurityRecorder;
}

/// `/healthz` (alive), `/readyz` (the database answers) and `/metrics` (Prometheus text).
pub fn routes<S: OpsState>() -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
        .route(
            "/metrics",
            get(|State(state): State<S>| async move { state.metrics().render() }),
        )
}

/// The answer to a path no route serves.
pub async fn no_route() -> ApiError {
    ApiError::NotFound {
        error: "Not found".into(),
        details: "no resource at this path".into(),
    }
}

async fn readyz<S: OpsState>(State(state): State<S>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(state.pool()).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}

/// Wraps an API in the request-id, tracing, metrics, refusal-recording (`crate::security`) and
/// time-limit layers (`REQUEST_TIMEOUT_SECS`).
/// Routes in `self_timed` (their paths as registered) bound their own time and are not cut off.
pub fn layered(
    app: Router,
    request_timeout: Duration,
    self_timed: Vec<String>,
    security: SecurityRecorder,
) -> Router {
    let limit = TimeLimit {
        limit: request_timeout,
        self_timed: Arc::new(self_timed),
    };
    app.layer(middleware::from_fn_with_state(limit, time_limit))
        .layer(middleware::from_fn_with_state(security, security::observe))
        .layer(middleware::from_fn(record_metrics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[derive(Clone)]
struct TimeLimit {
    limit: Duration,
    self_timed: Arc<Vec<String>>,
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Answers `503` when a request has not produced its response head within the limit. Only the head
/// is timed: a body that streams afterwards (the NDJSON audit export) runs as long as it needs.
/// Dropping the handler does not stop a statement the database is already running: a write cut off
/// this way may still be recorded (within `STATEMENT_TIMEOUT_SECS`), which is what a retry with the
/// same `Idempotency-Key` is for.
async fn time_limit(State(limit): State<TimeLimit>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if route.is_some_and(|route| limit.self_timed.iter().any(|timed| timed == route)) {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit.limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not complete within {} s; retry later",
            limit.limit.as_secs_f64()
        ))
        .into_response(),
    }
}
