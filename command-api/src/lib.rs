//! command-api: the write side of the REST API. Each endpoint parses and validates its request and
//! authorises the caller; its command (load, decide, the write set) runs through the command executor,
//! `commands::Executor`, which retries it, keeps its answer under the idempotency key and commits it
//! ([`command`]).
//!
//! [`build`] makes the API's state from its [`Config`], and [`router`] serves it: its binary (through
//! `http_layer::process`) and the tests both start it that way. Its error answers, route table,
//! operations routes and request layers are `http_layer`'s.

pub mod budgets;
pub mod catalog;
pub mod command;
pub mod environments;
pub mod executions;
pub mod extract;
pub mod feedback;
pub mod fields;
pub mod jobs;
pub mod members;
pub mod model_probes;
pub mod notifications;
pub mod organizations;
pub mod outbound;
pub mod probes;
pub mod processed_messages;
pub mod providers;
pub mod sentiment;
pub mod sign_in;
pub mod sse;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use axum::Router;
use commands::secrets::Secrets;
use commands::Executor;
use domain::catalog::Kind;
use http_layer::config::{required, ApiArgs};
use http_layer::ops::OpsState;
use http_layer::process::Api;
use http_layer::routes::KindRoutes;
use http_layer::security::SecurityRecorder;
use http_layer::Routes;
use identity::auth::Authenticator;
use metrics_exporter_prometheus::PrometheusHandle;
use processed_queue::{Bucket, S3Args};
use sqlx::PgPool;

use crate::sign_in::{SignIn, SignInArgs};

/// command-api's configuration (contract §1, `events/docs/contract.md`); its command line adds where
/// it listens and its database (`http_layer::process`).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Base64 of 32 random bytes: the master key that wraps the data keys of write-only values.
    #[arg(long, env = "SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
    #[command(flatten)]
    pub sign_in: SignInArgs,
    #[command(flatten)]
    pub executions: ExecutionArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Whether reports (`POST /api/feedback`) are classified by attack class. Off records them
    /// unclassified (no `groups`); probes the platform captures are always classified.
    #[arg(
        long = "feedback-classification",
        env = "FEEDBACK_CLASSIFICATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub feedback_classification: bool,
}

/// How prompt templates are executed against models.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecutionArgs {
    /// Internal networks model URLs may reach besides public addresses: comma-separated addresses or
    /// networks (`127.0.0.1/32,10.0.0.0/8`). Empty: none.
    #[arg(long = "outbound-allow", env = "OUTBOUND_ALLOW", default_value = "")]
    pub outbound_allow: String,
    /// How long to wait on a model provider (for its answer, or for each piece of a stream), in seconds.
    #[arg(
        long = "provider-timeout-secs",
        env = "PROVIDER_TIMEOUT_SECS",
        default_value = "60"
    )]
    pub provider_timeout_secs: u64,
    /// The most executions one organization may run at once in this process.
    #[arg(
        long = "executions-per-organization",
        env = "EXECUTIONS_PER_ORGANIZATION",
        default_value = "16"
    )]
    pub executions_per_organization: usize,
}

impl Api for Config {
    const NAME: &'static str = "command-api";
    const ADDR_VARIABLE: &'static str = "COMMAND_API_ADDR";
    const DEFAULT_ADDR: &'static str = "127.0.0.1:8081";

    fn app(&self, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<Router> {
        Ok(router(build(self, pool, metrics)?))
    }
}

#[derive(Clone)]
pub struct AppState {
    /// Runs every command: the one way this service appends.
    pub executor: Executor,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    /// How long a request may take to produce its response head (`REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    pub sign_in: Arc<sign_in::SignIn>,
    /// Seals write-only values before they enter an event, and opens model credentials for a call.
    pub secrets: Secrets,
    /// Calls models, within each organization's cap.
    pub executions: executions::Executions,
    /// The processed queue's bucket, when there is one.
    pub bucket: Option<Bucket>,
    /// Where refused requests are recorded.
    pub security: SecurityRecorder,
    /// Whether reports are classified (`FEEDBACK_CLASSIFICATION`).
    pub classify_feedback: bool,
}

/// How often refused requests recorded as probes become triage reports (`probes`).
const PROBE_INTAKE_INTERVAL: Duration = Duration::from_secs(1);

/// command-api as `config` says, over `pool` (migrated), recording its metrics for `metrics`: its
/// state, with the work an instance does in the background (turning refused probes into reports, its
/// heartbeat) started.
pub fn build(config: &Config, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    let state = state(config, pool.clone(), metrics)?;
    tokio::spawn(probes::run(state.executor.clone(), PROBE_INTAKE_INTERVAL));
    http_layer::heartbeat::spawn(pool, "command-api");
    Ok(state)
}

/// command-api's state alone, for a service that serves its routes in-process (the MCP server) and
/// runs as an instance of its own.
pub fn state(config: &Config, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    let secrets_key = required(
        &config.secrets_key,
        "SECRETS_KEY is not set (base64 of 32 bytes)",
    )?;
    let secrets = Secrets::from_base64(secrets_key).context("SECRETS_KEY")?;
    let guard =
        outbound::Guard::parse(&config.executions.outbound_allow).map_err(anyhow::Error::msg)?;
    let models = providers::ModelClient::new(
        guard,
        Duration::from_secs(config.executions.provider_timeout_secs.max(1)),
    );
    // Writes are authorised from the access lookups' cache: the executor that commits every change
    // to them is the one that keeps it (commands::access).
    let executor_pool = pool.clone();
    let executor = Executor::with_access_cache(pool);
    Ok(AppState {
        auth: Arc::new(Authenticator::with_executor(
            config.api.auth_config()?,
            executor.clone(),
        )),
        sign_in: Arc::new(SignIn::new(config.sign_in.config(config.api.issuer()?))),
        executor,
        metrics,
        request_timeout: config.api.request_timeout,
        secrets,
        executions: executions::Executions::new(
            models,
            config.executions.executions_per_organization.max(1),
        ),
        bucket: config.s3.bucket(),
        security: SecurityRecorder::start(executor_pool),
        classify_feedback: config.feedback_classification,
    })
}

/// The API's router: its routes, the operations routes and the request layers.
pub fn router(state: AppState) -> Router {
    api_routes().into_router(state)
}

impl OpsState for AppState {
    fn pool(&self) -> &PgPool {
        self.executor.pool()
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

/// Every route of the API, recorded as it is registered (see [`Routes`]).
pub fn api_routes() -> Routes<AppState> {
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
        .add_self_timed(
            Method::POST,
            "/api/prompt-templates/{id}/execute",
            executions::execute,
        )
        .add_self_timed(
            Method::POST,
            "/api/prompt-templates/{id}/analyze-sentiment",
            sentiment::analyze,
        )
        .add(
            Method::DELETE,
            "/api/processed-queue",
            processed_messages::delete_many,
        )
        .add(
            Method::DELETE,
            "/api/processed-queue/{*key}",
            processed_messages::delete_one,
        )
        .add(Method::POST, "/api/feedback", feedback::submit)
        .add(
            Method::POST,
            "/api/v1/admin/feedback/{id}/transitions",
            feedback::transition,
        )
        .add(
            Method::POST,
            "/api/v1/admin/feedback/groups/{id}/transitions",
            feedback::transition_group,
        )
        .add(
            Method::POST,
            "/api/v1/admin/notifications/{id}/acknowledge",
            notifications::acknowledge,
        )
        .add(
            Method::POST,
            "/api/v1/admin/notifications/{id}/resolve",
            notifications::resolve,
        )
        .add(
            Method::PUT,
            "/api/v1/admin/organizations/{id}/budget",
            budgets::set,
        )
        .add(
            Method::DELETE,
            "/api/v1/admin/organizations/{id}/budget",
            budgets::remove,
        )
        .add(Method::POST, "/api/v1/admin/jobs", jobs::request)
        .add(Method::POST, "/api/v1/admin/jobs/{id}/cancel", jobs::cancel)
        .add(Method::POST, "/api/v1/admin/usage/exports", jobs::export)
        .add(
            Method::POST,
            "/api/v1/admin/models/{id}/probe",
            model_probes::probe,
        )
        .add(Method::GET, "/api/auth/login", sign_in::login)
        .add(Method::GET, "/api/auth/callback", sign_in::callback)
        .add(Method::POST, "/api/auth/logout", sign_in::logout)
        .catalog::<CatalogRoutes>()
}

/// `POST /api/<kind>` and `PUT`/`DELETE /api/<kind>/{id}` of each catalog kind.
struct CatalogRoutes;

impl KindRoutes<AppState> for CatalogRoutes {
    fn add<K: Kind>(routes: Routes<AppState>, collection: &str, item: &str) -> Routes<AppState> {
        routes
            .add(Method::POST, collection, catalog::create::<K>)
            .add(Method::PUT, item, catalog::update::<K>)
            .add(Method::DELETE, item, catalog::delete::<K>)
    }
}
