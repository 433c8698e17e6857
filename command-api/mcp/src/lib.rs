//! mcp-api: the platform for AI agents, as a Model Context Protocol server at `/mcp` (Streamable
//! HTTP, stateless, JSON answers, Server-Sent Events when a tool streams).
//!
//! It owns no behaviour of its own: each tool, resource and prompt is answered by command-api's or
//! query-api's router in-process ([`rest`]), with the caller's bearer token. So a tool is authorised
//! by the same permission table and tenant rules as the REST call it mirrors, writes through the
//! same command executor, reads the same read models, and answers with the same errors. The events
//! it causes record `channel: mcp` (`domain::Channel`).
//!
//! Before any MCP message is read, the request must carry a valid bearer token: otherwise `401` with
//! `WWW-Authenticate: Bearer resource_metadata=…`, pointing at this server's OAuth 2.0 Protected
//! Resource Metadata (RFC 9728), which names the token issuer. The transport checks `Host` and
//! `Origin` against the configured lists (DNS rebinding), and the protocol version.

pub mod openapi;
pub mod rest;
pub mod server;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_layer::ops::{self, OpsState};
use http_layer::process::Api;
use http_layer::security::SecurityRecorder;
use http_layer::ApiError;
use identity::auth::{AuthError, Authenticator};
use metrics_exporter_prometheus::PrometheusHandle;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::rest::Rest;
use crate::server::McpServer;
use crate::tools::Tools;

/// The MCP endpoint's path.
pub const MCP_PATH: &str = "/mcp";
/// Where the protected resource metadata is served (RFC 9728 §3.1: the well-known prefix, then the
/// resource's path), and also at the well-known path alone, for clients that look only there.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// mcp-api's configuration: command-api's (it runs command-api's and query-api's handlers, which
/// share the authentication, S3 and timeout settings) and its own.
#[derive(clap::Args, Debug, Clone)]
// Its own argument group: the command-api configuration it holds has the group `Config`.
#[group(id = "mcp-api")]
pub struct Config {
    #[command(flatten)]
    pub command: command_api::Config,
    #[command(flatten)]
    pub mcp: McpArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct McpArgs {
    /// Offer only the tools that change nothing (reads), and refuse the others.
    #[arg(
        long = "mcp-read-only",
        env = "MCP_READ_ONLY",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub read_only: bool,
    /// The `Host` values requests may carry, comma-separated, each a host or `host:port` (a host
    /// alone allows any port). Requests for other hosts answer `403` (DNS rebinding). Add the
    /// public host name when the server runs behind a gateway or in a container.
    #[arg(
        long = "mcp-allowed-hosts",
        env = "MCP_ALLOWED_HOSTS",
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub allowed_hosts: String,
    /// The browser origins that may call, comma-separated (`https://console.example.com`,
    /// `http://localhost:*`). A request with any other `Origin` answers `403`; requests without one
    /// (MCP clients that are not browsers) pass.
    #[arg(
        long = "mcp-allowed-origins",
        env = "MCP_ALLOWED_ORIGINS",
        default_value = ""
    )]
    pub allowed_origins: String,
}

impl Api for Config {
    const NAME: &'static str = "mcp-api";
    const ADDR_VARIABLE: &'static str = "MCP_API_ADDR";
    const DEFAULT_ADDR: &'static str = "127.0.0.1:8084";

    fn app(&self, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<Router> {
        let state = build(self, pool.clone(), metrics)?;
        http_layer::heartbeat::spawn(pool, "mcp-api");
        router(state)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub command: command_api::AppState,
    pub query: query_api::AppState,
    pub config: McpArgs,
    /// The public base URL (`PUBLIC_URL`): the resource is `<it>/mcp`.
    pub public_url: String,
    /// The token issuer, as the protected resource metadata names it.
    pub issuer: String,
}

/// mcp-api as `config` says: command-api's and query-api's states over `pool`, without their own
/// background work (this process reports as `mcp-api`).
pub fn build(config: &Config, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    let command = command_api::state(&config.command, pool.clone(), metrics.clone())?;
    let query = query_api::state(
        &query_api::Config {
            api: config.command.api.clone(),
            s3: config.command.s3.clone(),
            consistency: Default::default(),
        },
        pool,
        metrics,
    )?;
    Ok(AppState {
        command,
        query,
        config: config.mcp.clone(),
        public_url: config.command.sign_in.public_url(),
        issuer: config.command.api.issuer()?.to_owned(),
    })
}

impl OpsState for AppState {
    fn pool(&self) -> &PgPool {
        self.command.pool()
    }

    fn metrics(&self) -> &PrometheusHandle {
        &self.command.metrics
    }

    fn request_timeout(&self) -> Duration {
        self.command.request_timeout
    }

    fn security(&self) -> &SecurityRecorder {
        &self.command.security
    }
}

/// The MCP endpoint, the protected resource metadata and the operations routes, with the request
/// layers every API has. `/mcp` bounds its own time: each REST call inside it is bounded as REST
/// bounds it, and a streamed execution runs as long as the model takes.
pub fn router(state: AppState) -> anyhow::Result<Router> {
    let rest = Rest::new(
        command_api::router(state.command.clone()),
        query_api::router(state.query.clone()),
    );
    let tools = Tools::new(&openapi::Document::load()?, state.config.read_only)?;
    let server = McpServer::new(rest, tools);
    let transport = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(list(&state.config.allowed_hosts))
        .with_allowed_origins(list(&state.config.allowed_origins))
        .enforce_origin_validation();
    let mcp = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        transport,
    );
    let auth = Bearer {
        auth: state.command.auth.clone(),
        resource_metadata: format!("{}{METADATA_PATH}{MCP_PATH}", state.public_url),
    };
    let app = Router::new()
        .route_service(MCP_PATH, mcp)
        .route_layer(middleware::from_fn_with_state(auth, require_bearer))
        .route(METADATA_PATH, get(resource_metadata))
        .route(
            &format!("{METADATA_PATH}{MCP_PATH}"),
            get(resource_metadata),
        )
        .merge(ops::routes())
        .fallback(ops::no_route)
        .with_state(state.clone());
    Ok(ops::layered(
        app,
        state.command.request_timeout,
        vec![MCP_PATH.to_owned()],
        state.command.security.clone(),
    ))
}

fn list(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What the bearer check needs: the token verifier, and where to send a client without a token.
#[derive(Clone)]
struct Bearer {
    auth: Arc<Authenticator>,
    resource_metadata: String,
}

/// `401` unless the request carries a bearer token the issuer signed for this audience. Who the
/// caller is and what they may do is the REST handlers' business, per call.
async fn require_bearer(State(bearer): State<Bearer>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refused = match token {
        None => AuthError::Missing,
        Some("") => AuthError::EmptyToken,
        Some(token) => match bearer.auth.verifier().verify(token).await {
            Ok(_) => return next.run(request).await,
            Err(error) => AuthError::from(error),
        },
    };
    let challenge = match refused {
        AuthError::Missing => format!("Bearer resource_metadata=\"{}\"", bearer.resource_metadata),
        _ => format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{}\"",
            bearer.resource_metadata
        ),
    };
    let mut response = ApiError::from(refused).into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// OAuth 2.0 Protected Resource Metadata (RFC 9728): the resource, the issuer of its tokens, and how
/// to send them.
async fn resource_metadata(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "resource": format!("{}{MCP_PATH}", state.public_url),
        "authorization_servers": [state.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Admin platform (MCP)",
    }))
}
