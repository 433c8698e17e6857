//! The projector's own HTTP surface: `/healthz`, `/readyz` (not ready while a projection is stuck at
//! an event it cannot apply, naming it) and `/metrics` (each projection's lag, and its failure). The
//! projector serves it with `http_layer::serve`, as the APIs serve theirs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use event_log::status::statuses;

#[derive(Clone)]
struct OpsState {
    pool: PgPool,
    metrics: PrometheusHandle,
}

pub fn router(pool: PgPool, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { pool, metrics })
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    match statuses(&state.pool).await {
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable".into(),
        ),
        Ok(statuses) => {
            let failing: Vec<String> = statuses.iter().filter_map(|s| s.failure()).collect();
            if failing.is_empty() {
                (StatusCode::OK, "ready".into())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, failing.join("\n"))
            }
        }
    }
}

/// Longest error text a metric label carries.
const ERROR_LABEL_CHARS: usize = 200;

async fn metrics_text(State(state): State<OpsState>) -> String {
    // Lag is measured at scrape time against the log, so it is right even when a runner is stuck.
    let statuses = statuses(&state.pool).await.unwrap_or_default();
    for s in &statuses {
        metrics::gauge!("projection_lag_events", "projection" => s.name.clone())
            .set(s.behind as f64);
        metrics::gauge!("projection_lag_seconds", "projection" => s.name.clone())
            .set(s.lag_seconds);
        metrics::gauge!("projection_failing", "projection" => s.name.clone())
            .set(f64::from(u8::from(s.failing_since.is_some())));
    }
    let mut text = state.metrics.render();
    // Where and why a projection is stuck, written at scrape time rather than kept by the recorder,
    // so that the series disappears as soon as the projection moves again.
    let failing: Vec<_> = statuses
        .iter()
        .filter(|s| s.failing_since.is_some())
        .collect();
    if !failing.is_empty() {
        text.push_str(
            "# HELP projection_failure_info A projection stuck at an event it cannot apply.\n",
        );
        text.push_str("# TYPE projection_failure_info gauge\n");
        for s in failing {
            let error: String = s
                .last_error
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(ERROR_LABEL_CHARS)
                .collect();
            text.push_str(&format!(
                "projection_failure_info{{projection=\"{}\",position=\"{}\",error=\"{}\"}} 1\n",
                label(&s.name),
                s.failed_position.unwrap_or(s.global_position),
                label(&error)
            ));
        }
    }
    text
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
