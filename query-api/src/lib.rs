//! query-api: the read side of the REST API, over the read models the projector keeps. Every read
//! first waits until the read model reflects what the request asks for (see [`consistency`]).

pub mod consistency;
pub mod environments;
pub mod error;
pub mod extract;
pub mod members;
pub mod ops;
pub mod organizations;
pub mod pagination;
pub mod session;
pub mod users;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use events::auth::Authenticator;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::consistency::Consistency;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub consistency: Consistency,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/organizations", get(organizations::list))
        .route("/api/organizations/{id}", get(organizations::get))
        .route("/api/environments", get(environments::list))
        .route("/api/environments/{id}", get(environments::get))
        .route("/api/organizations/{id}/members", get(members::list))
        .route(
            "/api/organizations/{id}/members/{user_id}",
            get(members::get),
        )
        .route("/api/users", get(users::list))
        .route("/api/users/{id}", get(users::get))
        .route("/api/roles", get(users::roles))
        .route("/api/auth/session", get(session::get));
    ops::layered(api.merge(ops::routes()).with_state(state))
}
