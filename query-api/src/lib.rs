//! query-api: the read side of the REST API, over the read models the projector keeps. Every read
//! first waits until the read model reflects what the request asks for (see [`consistency`]).
//!
//! [`build`] makes the API's state from its [`Config`], and [`router`] serves it: its binary (through
//! `http_layer::process`) and the tests both start it that way. Its error answers, route table,
//! operations routes and request layers are `http_layer`'s.

pub mod as_of;
pub mod audit;
pub mod catalog;
pub mod consistency;
pub mod environments;
pub mod executions;
pub mod export;
pub mod extract;
pub mod feedback;
pub mod jobs;
pub mod members;
pub mod model_health;
pub mod notifications;
pub mod organizations;
pub mod ownership;
pub mod pagination;
pub mod processed_messages;
pub mod runtime;
pub mod sandboxes;
pub mod security_events;
pub mod session;
pub mod usage;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use axum::Router;
use domain::catalog::Kind;
use http_layer::config::ApiArgs;
use http_layer::ops::OpsState;
use http_layer::process::Api;
use http_layer::routes::KindRoutes;
use http_layer::security::SecurityRecorder;
use http_layer::Routes;
use identity::auth::Authenticator;
use metrics_exporter_prometheus::PrometheusHandle;
use processed_queue::{Bucket, S3Args};
use sqlx::PgPool;

use crate::consistency::{Consistency, ConsistencyConfig};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub consistency: Consistency,
    pub metrics: PrometheusHandle,
    /// How long a request may take to produce its response head (`REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    /// The processed queue's bucket, when there is one.
    pub bucket: Option<Bucket>,
    /// The largest processed message body a detail read shows.
    pub max_body_bytes: usize,
    /// Where refused requests are recorded: the one table this API writes (`http_layer::security`).
    pub security: SecurityRecorder,
}

impl OpsState for AppState {
    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn metrics(&self) -> &PrometheusHandle {
        &self.metrics
    }

    fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn security(&self) -> &SecurityRecorder {
        &self.security
    }
}

/// query-api's configuration (contract §1, `events/docs/contract.md`); its command line adds where it
/// listens and its database (`http_layer::process`).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// How reads wait for the read models (not a setting: tests change it).
    #[arg(skip)]
    pub consistency: ConsistencyConfig,
}

/// query-api as `config` says, over `pool` (migrated), recording its metrics for `metrics`.
pub fn build(config: &Config, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    http_layer::heartbeat::spawn(pool.clone(), "query-api");
    state(config, pool, metrics)
}

/// query-api's state alone, without its heartbeat, for a service that serves its routes in-process
/// (the MCP server) and runs as an instance of its own.
pub fn state(config: &Config, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    Ok(AppState {
        consistency: Consistency::start(pool.clone(), config.consistency),
        auth: Arc::new(Authenticator::new(config.api.auth_config()?, pool.clone())),
        security: SecurityRecorder::start(pool.clone()),
        pool,
        metrics,
        request_timeout: config.api.request_timeout,
        bucket: config.s3.bucket(),
        max_body_bytes: config.s3.max_body_bytes,
    })
}

impl Api for Config {
    const NAME: &'static str = "query-api";
    const ADDR_VARIABLE: &'static str = "QUERY_API_ADDR";
    const DEFAULT_ADDR: &'static str = "127.0.0.1:8082";

    fn app(&self, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<Router> {
        Ok(router(build(self, pool, metrics)?))
    }
}

/// The API's router: its routes, the operations routes and the request layers.
pub fn router(state: AppState) -> Router {
    api_routes().into_router(state)
}

/// Every route of the API, recorded as it is registered (see [`Routes`]).
pub fn api_routes() -> Routes<AppState> {
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
        .add(
            Method::GET,
            "/api/prompt-templates/{id}/executions",
            executions::list_for_template,
        )
        .add(Method::GET, "/api/executions/{id}", executions::get)
        .add(Method::GET, "/api/v1/admin/feedback", feedback::list)
        .add(
            Method::GET,
            "/api/v1/admin/feedback/groups",
            feedback::groups,
        )
        .add(Method::GET, "/api/v1/admin/feedback/{id}", feedback::get)
        .add(
            Method::GET,
            "/api/v1/admin/notifications",
            notifications::list,
        )
        .add(
            Method::GET,
            "/api/v1/admin/notifications/unread",
            notifications::unread,
        )
        .add(
            Method::GET,
            "/api/v1/admin/security-events",
            security_events::list,
        )
        .add(Method::GET, "/api/v1/admin/usage", usage::usage)
        .add(
            Method::GET,
            "/api/v1/admin/organizations",
            ownership::organizations,
        )
        .add(Method::GET, "/api/v1/admin/users", ownership::users)
        .add(Method::GET, "/api/v1/admin/sandboxes", sandboxes::list)
        .add(Method::GET, "/api/v1/admin/runtime", runtime::runtime)
        .add(Method::GET, "/api/v1/admin/jobs", jobs::list)
        .add(Method::GET, "/api/v1/admin/jobs/{id}", jobs::get)
        .add(
            Method::GET,
            "/api/v1/admin/usage/exports/{id}",
            jobs::export,
        )
        .add(
            Method::GET,
            "/api/v1/admin/usage/exports/{id}/file",
            jobs::export_file,
        )
        .add(Method::GET, "/api/v1/admin/models", model_health::list)
        .add(Method::GET, "/api/v1/admin/billing", usage::billing)
        .add(
            Method::GET,
            "/api/v1/admin/organizations/{id}/budget",
            usage::budget,
        )
        .add(
            Method::GET,
            "/api/processed-queue",
            processed_messages::list,
        )
        .add(
            Method::GET,
            "/api/processed-queue/counts",
            processed_messages::counts_route,
        )
        .add(
            Method::GET,
            "/api/processed-queue/{*key}",
            processed_messages::get,
        )
        .catalog::<CatalogRoutes>()
}

/// `GET /api/<kind>` and `GET /api/<kind>/{id}` of each catalog kind.
struct CatalogRoutes;

impl KindRoutes<AppState> for CatalogRoutes {
    fn add<K: Kind>(routes: Routes<AppState>, collection: &str, item: &str) -> Routes<AppState> {
        routes.add(Method::GET, collection, catalog::list::<K>).add(
            Method::GET,
            item,
            catalog::get::<K>,
        )
    }
}
