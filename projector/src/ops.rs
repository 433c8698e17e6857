//! The projector's own HTTP surface: `/healthz`, `/readyz` and `/metrics` (with each projection's lag).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::status::statuses;

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

async fn readyz(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> String {
    // Lag is measured at scrape time against the log, so it is right even when a runner is stuck.
    if let Ok(statuses) = statuses(&state.pool).await {
        for s in statuses {
            metrics::gauge!("projection_lag_events", "projection" => s.name.clone())
                .set(s.behind as f64);
            metrics::gauge!("projection_lag_seconds", "projection" => s.name).set(s.lag_seconds);
        }
    }
    state.metrics.render()
}
