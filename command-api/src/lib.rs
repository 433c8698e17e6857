//! command-api: the write side of the REST API. Each endpoint parses and validates its request,
//! authorises the caller, loads the aggregate, decides, appends and answers (see [`command`]).

pub mod catalog;
pub mod command;
pub mod environments;
pub mod error;
pub mod extract;
pub mod fields;
pub mod members;
pub mod ops;
pub mod organizations;
pub mod sign_in;
pub mod users;

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;
use events::auth::Authenticator;
use events::catalog::kinds::{
    Model, Prompt, PromptTemplate, SystemModel, Variable, Workflow, WorkflowEntity,
    WorkflowEntityType,
};
use events::catalog::Kind;
use events::secrets::Secrets;
use events::PgEventStore;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
pub struct AppState {
    pub store: PgEventStore,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    pub sign_in: Arc<sign_in::SignIn>,
    /// Seals write-only values before they enter an event.
    pub secrets: Secrets,
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
        )
        .route("/api/organizations/{id}/members", post(members::add))
        .route(
            "/api/organizations/{id}/members/{user_id}",
            put(members::change_role).delete(members::remove),
        )
        .route(
            "/api/users/{id}/system-role",
            put(users::grant_system_role).delete(users::revoke_system_role),
        )
        .route("/api/auth/login", get(sign_in::login))
        .route("/api/auth/callback", get(sign_in::callback))
        .route("/api/auth/logout", post(sign_in::logout));
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

/// `POST /api/<kind>` and `PUT`/`DELETE /api/<kind>/{id}` of one catalog kind.
fn catalog_routes<K: Kind>(router: Router<AppState>) -> Router<AppState> {
    let collection = format!("/api/{}", K::INFO.path);
    router.route(&collection, post(catalog::create::<K>)).route(
        &format!("{collection}/{{id}}"),
        put(catalog::update::<K>).delete(catalog::delete::<K>),
    )
}
