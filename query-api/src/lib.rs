//! query-api: the read side of the REST API, over the read models the projector keeps. Every read
//! first waits until the read model reflects what the request asks for (see [`consistency`]).

pub mod as_of;
pub mod audit;
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

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
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
    /// How long a request may take to produce its response head (`REQUEST_TIMEOUT_SECS`).
    pub request_timeout: std::time::Duration,
}

/// Every route of the API, recorded as it is registered (see [`Routes`]).
pub fn api_routes() -> Routes {
    Routes::default()
        .add(Method::GET, "/api/organizations", organizations::list)
        .add(Method::GET, "/api/organizations/{id}", organizations::get)
        .add(Method::GET, "/api/environments", environments::list)
        .add(Method::GET, "/api/environments/{id}", environments::get)
        .add(
            Method::GET,
            "/api/organizations/{id}/members",
            members::list,
        )
        .add(
            Method::GET,
            "/api/organizations/{id}/members/{user_id}",
            members::get,
        )
        .add(Method::GET, "/api/users", users::list)
        .add(Method::GET, "/api/users/{id}", users::get)
        .add(Method::GET, "/api/roles", users::roles)
        .add(Method::GET, "/api/auth/session", session::get)
        .add(Method::GET, "/api/audit-events", audit::list)
        .add(
            Method::GET,
            "/api/system-models/visible",
            catalog::visible_system_models,
        )
        .add(
            Method::GET,
            "/api/workflow-entities/{id}/usage-count",
            catalog::usage_count,
        )
        .add(
            Method::GET,
            "/api/prompt-templates/{id}/versions",
            catalog::list_versions,
        )
        .add(
            Method::GET,
            "/api/prompt-templates/{id}/versions/{version}",
            catalog::get_version,
        )
        .catalog::<Variable>()
        .catalog::<Model>()
        .catalog::<SystemModel>()
        .catalog::<Workflow>()
        .catalog::<WorkflowEntity>()
        .catalog::<WorkflowEntityType>()
        .catalog::<PromptTemplate>()
        .catalog::<Prompt>()
}

pub fn router(state: AppState) -> Router {
    let api = api_routes().router;
    let request_timeout = state.request_timeout;
    ops::layered(api.merge(ops::routes()).with_state(state), request_timeout)
}

/// The API's routes with the method and path of each, so that tests can hold them against
/// `schemas/openapi.yaml`: every route is registered through [`Routes::add`].
#[derive(Default)]
pub struct Routes {
    pub router: Router<AppState>,
    pub table: Vec<(Method, String)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
        self.router = self.router.route(path, on(filter, handler));
        self.table.push((method, path.to_owned()));
        self
    }

    /// `GET /api/<kind>` and `GET /api/<kind>/{id}` of one catalog kind.
    fn catalog<K: Kind>(self) -> Self {
        let collection = format!("/api/{}", K::INFO.path);
        let item = format!("{collection}/{{id}}");
        self.add(Method::GET, &collection, catalog::list::<K>).add(
            Method::GET,
            &item,
            catalog::get::<K>,
        )
    }
}
