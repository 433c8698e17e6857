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
use events::secrets::Secrets;
use events::PgEventStore;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
pub struct AppState {
    pub store: PgEventStore,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    /// How long a request may take to produce its response head (`REQUEST_TIMEOUT_SECS`).
    pub request_timeout: std::time::Duration,
    pub sign_in: Arc<sign_in::SignIn>,
    /// Seals write-only values before they enter an event.
    pub secrets: Secrets,
}

/// Every route of the API, recorded as it is registered (see [`Routes`]).
pub fn api_routes() -> Routes {
    Routes::default()
        .add(Method::POST, "/api/organizations", organizations::create)
        .add(
            Method::PUT,
            "/api/organizations/{id}",
            organizations::update,
        )
        .add(
            Method::DELETE,
            "/api/organizations/{id}",
            organizations::delete,
        )
        .add(Method::POST, "/api/environments", environments::create)
        .add(Method::PUT, "/api/environments/{id}", environments::update)
        .add(
            Method::DELETE,
            "/api/environments/{id}",
            environments::delete,
        )
        .add(
            Method::POST,
            "/api/organizations/{id}/members",
            members::add,
        )
        .add(
            Method::PUT,
            "/api/organizations/{id}/members/{user_id}",
            members::change_role,
        )
        .add(
            Method::DELETE,
            "/api/organizations/{id}/members/{user_id}",
            members::remove,
        )
        .add(Method::DELETE, "/api/users/{id}", users::erase)
        .add(
            Method::PUT,
            "/api/users/{id}/system-role",
            users::grant_system_role,
        )
        .add(
            Method::DELETE,
            "/api/users/{id}/system-role",
            users::revoke_system_role,
        )
        .add(Method::GET, "/api/auth/login", sign_in::login)
        .add(Method::GET, "/api/auth/callback", sign_in::callback)
        .add(Method::POST, "/api/auth/logout", sign_in::logout)
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

    /// `POST /api/<kind>` and `PUT`/`DELETE /api/<kind>/{id}` of one catalog kind.
    fn catalog<K: Kind>(self) -> Self {
        let collection = format!("/api/{}", K::INFO.path);
        let item = format!("{collection}/{{id}}");
        self.add(Method::POST, &collection, catalog::create::<K>)
            .add(Method::PUT, &item, catalog::update::<K>)
            .add(Method::DELETE, &item, catalog::delete::<K>)
    }
}
