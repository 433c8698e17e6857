//! query-api: the read side of the REST API, over the read models the projector keeps. Every read
//! first waits until the read model reflects what the request asks for (see [`consistency`]).

pub mod catalog;
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
use events::catalog::kinds::{
    Model, Prompt, PromptTemplate, SystemModel, Variable, Workflow, WorkflowEntity,
    WorkflowEntityType,
};
use events::catalog::Kind;
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
        .route("/api/auth/session", get(session::get))
        .route(
            "/api/system-models/visible",
            get(catalog::visible_system_models),
        )
        .route(
            "/api/workflow-entities/{id}/usage-count",
            get(catalog::usage_count),
        )
        .route(
            "/api/prompt-templates/{id}/versions",
            get(catalog::list_versions),
        )
        .route(
            "/api/prompt-templates/{id}/versions/{version}",
            get(catalog::get_version),
        );
    let api = catalog_routes::<Variable>(api);
    let api = catalog_routes::<Model>(api);
    let api = catalog_routes::<SystemModel>(api);
    let api = catalog_routes::<Workflow>(api);
    let api = catalog_routes::<WorkflowEntity>(api);
    let api = catalog_routes::<WorkflowEntityType>(api);
    let api = catalog_routes::<PromptTemplate>(api);
    let api = catalog_routes::<Prompt>(api);
    ops::layered(api.merge(ops::routes()).with_state(state))
}

/// `GET /api/<kind>` and `GET /api/<kind>/{id}` of one catalog kind.
fn catalog_routes<K: Kind>(router: Router<AppState>) -> Router<AppState> {
    let collection = format!("/api/{}", K::INFO.path);
    router
        .route(&collection, get(catalog::list::<K>))
        .route(&format!("{collection}/{{id}}"), get(catalog::get::<K>))
}
