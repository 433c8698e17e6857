//! command-api: the write side of the REST API. Each endpoint parses and validates its request,
//! authorises the caller, loads the aggregate, decides, appends and answers (see [`command`]).

pub mod command;
pub mod environments;
pub mod error;
pub mod extract;
pub mod fields;
pub mod ops;
pub mod organizations;

use std::sync::Arc;

use axum::routing::{post, put};
use axum::Router;
use events::auth::Authenticator;
use events::PgEventStore;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
pub struct AppState {
    pub store: PgEventStore,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/organizations", post(organizations::create))
        .route(
            "/api/organizations/{id}",
            put(organizations::update).delete(organizations::delete),
        )
        .route("/api/environments", post(environments::create))
        .route(
            "/api/environments/{id}",
            put(environments::update).delete(environments::delete),
        );
    ops::layered(api.merge(ops::routes()).with_state(state))
}
