//! What the black-box tests and the benchmark share: a fresh database, a local issuer, and the whole
//! system (command-api, query-api, projector) started on real ports against them, each API made by its
//! own `build` from its `Config`.

pub mod baselines;
pub mod fake_provider;
pub mod issuer;
pub mod kafka;
pub mod process;
pub mod processed_messages;
pub mod s3;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::SubsecRound;
use command_api::sign_in::SignInArgs;
use commands::secrets::Secrets;
use http_layer::config::ApiArgs;
use issuer::{Issuer, SigningKey};
use query_api::consistency::{Consistency, ConsistencyConfig};
use reqwest::Method;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::task::JoinHandle;

/// The subject that holds the System role in tests.
pub const SYSTEM_ADMIN: &str = "system-admin";
pub const AUDIENCE: &str = "admin-platform-tests";
/// The test system's outbound allow-list: IPv4 loopback only, where the fake provider listens. Other
/// loopback addresses (`127.0.0.2`, `::1`) stay refused, which the outbound guard's tests rely on.
pub const EXECUTIONS_OUTBOUND_ALLOW: &str = "127.0.0.1/32";
/// Short, so that the timeout tests are quick.
pub const EXECUTIONS_PROVIDER_TIMEOUT_SECS: u64 = 2;
pub const EXECUTIONS_PER_ORGANIZATION: usize = 4;

pub fn fixture_key(n: u8) -> SigningKey {
    let path = format!("{}/fixtures/issuer-key-{n}.pem", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    SigningKey::from_pem(&format!("test-key-{n}"), &pem).expect("fixture keys parse")
}

/// The server that test databases are created on: `TEST_DATABASE_URL`, or the local default.
pub(crate) fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A freshly created, migrated database, dropped when this value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    server: PgConnectOptions,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_with_pool_size(20).await
    }

    pub async fn create_with_pool_size(max_connections: u32) -> anyhow::Result<Self> {
        let db = Self::create_empty(max_connections).await?;
        event_log::migrate(&db.pool).await?;
        Ok(db)
    }

    /// A fresh database with no migrations applied.
    pub async fn create_empty(max_connections: u32) -> anyhow::Result<Self> {
        let server: PgConnectOptions = server_url().parse().context("TEST_DATABASE_URL")?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = server
            .connect()
            .await
            .context("connecting to the test server")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(server.clone().database(&name))
            .await?;
        Ok(TestDb { pool, name, server })
    }

    /// The database's URL, for processes configured by `DATABASE_URL`.
    pub fn url(&self) -> String {
        let server = server_url();
        let (base, _) = server.rsplit_once('/').unwrap_or((&server, ""));
        format!("{base}/{}", self.name)
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async context: a short-lived thread and runtime do the cleanup.
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(mut admin) = server.connect().await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Serves `router` on a random local port.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let addr = listener.local_addr().expect("a bound address");
    serve_on(listener, router);
    addr
}

fn serve_on(listener: tokio::net::TcpListener, router: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
}

pub async fn start_issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let url = format!(
        "http://{}/",
        listener.local_addr().expect("a bound address")
    );
    let issuer = Issuer::new(url, AUDIENCE.into(), fixture_key(1));
    let router = issuer.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    issuer
}

/// The whole system on local ports, over its own database.
pub struct TestApp {
    pub db: TestDb,
    pub issuer: Issuer,
    pub command_url: String,
    pub query_url: String,
    pub http: reqwest::Client,
    /// A System user's bearer token.
    pub admin_token: String,
    /// That System user's id (recorded when the app starts).
    pub admin_id: String,
    /// The key command-api seals write-only values with.
    pub secrets: Secrets,
    /// query-api's read-your-writes waits.
    pub consistency: Consistency,
    projector: Vec<JoinHandle<()>>,
    /// query-api as this app serves it, for more instances over other pools.
    query: query_api::AppState,
    /// command-api's configuration, for more instances over the same database.
    command_config: command_api::Config,
    /// The processed queue's bucket, when this app has one ([`TestApp::spawn_with_queue`]).
    pub bucket: Option<processed_queue::Bucket>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with_pool_size(20).await
    }

    pub async fn spawn_with_pool_size(max_connections: u32) -> Self {
        Self::spawn_with(max_connections, ConsistencyConfig::default()).await
    }

    /// The system with a pool of `max_connections` per service and query-api's waits as `consistency`
    /// says.
    pub async fn spawn_with(max_connections: u32, consistency: ConsistencyConfig) -> Self {
        Self::spawn_full(max_connections, consistency, None).await
    }

    /// The system with a processed queue in a new bucket of `s3`, indexed every 100 ms and
    /// reconciled every second.
    pub async fn spawn_with_queue(s3: &s3::S3Server) -> Self {
        let (args, _) = s3.new_bucket().await;
        Self::spawn_full(20, ConsistencyConfig::default(), Some(args)).await
    }

    async fn spawn_full(
        max_connections: u32,
        consistency: ConsistencyConfig,
        s3: Option<processed_queue::S3Args>,
    ) -> Self {
        let s3 = s3.unwrap_or_else(no_queue);
        let db = TestDb::create_with_pool_size(max_connections)
            .await
            .expect("creating the test database");
        let issuer = start_issuer().await;
        // Each API is built as its binary builds it, from what the binary would read from the
        // environment; the signing keys are refetched every 200 ms at most, not every 10 s, so that a
        // test of key rotation need not wait.
        let api = ApiArgs {
            request_timeout: Duration::from_secs(30),
            auth_issuer: Some(issuer.url.clone()),
            auth_audience: Some(AUDIENCE.into()),
            auth_jwks_url: None,
            system_admins: SYSTEM_ADMIN.into(),
            keys_refetch_interval: Duration::from_millis(200),
        };
        let metrics = metrics_handle();
        // Browser sign-in calls back to command-api, which therefore plays the public origin here.
        let command_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let command_url = format!(
            "http://{}",
            command_listener.local_addr().expect("a bound address")
        );
        let command_config = command_api::Config {
            api: api.clone(),
            secrets_key: Some(Secrets::generate_key()),
            sign_in: SignInArgs {
                auth_client_id: Some(issuer::CLIENT_ID.into()),
                auth_client_secret: Some(issuer::CLIENT_SECRET.into()),
                public_url: Some(command_url.clone()),
                session_ttl_hours: 1,
                sign_in_attempts_per_ip: 20,
                sign_in_attempts_max: 10_000,
            },
            executions: command_api::ExecutionArgs {
                outbound_allow: EXECUTIONS_OUTBOUND_ALLOW.into(),
                provider_timeout_secs: EXECUTIONS_PROVIDER_TIMEOUT_SECS,
                executions_per_organization: EXECUTIONS_PER_ORGANIZATION,
            },
            s3: s3.clone(),
            feedback_classification: true,
        };
        let command = command_api::build(&command_config, db.pool.clone(), metrics.clone())
            .expect("building command-api");
        let secrets = command.secrets.clone();
        serve_on(command_listener, command_api::router(command));
        let query_config = query_api::Config {
            api,
            s3: s3.clone(),
            consistency,
        };
        let query =
            query_api::build(&query_config, db.pool.clone(), metrics).expect("building query-api");
        let query_url = format!("http://{}", serve(query_api::router(query.clone())).await);
        let admin_token = issuer.token(SYSTEM_ADMIN);
        let mut app = TestApp {
            db,
            issuer,
            command_url,
            query_url,
            http: reqwest::Client::new(),
            admin_token,
            admin_id: String::new(),
            secrets,
            consistency: query.consistency.clone(),
            projector: Vec::new(),
            query,
            command_config,
            bucket: s3.bucket(),
        };
        app.start_projector();
        app.admin_id = app.user_id(SYSTEM_ADMIN).await;
        app
    }

    /// Another query-api over `pool` (sign-in and read-your-writes waits as this app's), for tests that
    /// restrict what query-api's own reads may touch. Its base URL.
    pub async fn query_api_over(&self, pool: PgPool) -> String {
        let addr = serve(query_api::router(query_api::AppState {
            pool,
            ..self.query.clone()
        }))
        .await;
        format!("http://{addr}")
    }

    /// A pool connected as a new database role that may read every table but the log (`events`), for
    /// a query-api that proves what it answers never reads history. Its role's name goes to
    /// [`TestApp::drop_role`] afterwards.
    pub async fn pool_without_the_log(&self) -> (PgPool, String) {
        let role = format!("no_log_reader_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'reader'; \
             GRANT USAGE ON SCHEMA public, read_models TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public, read_models TO {role}; \
             REVOKE SELECT ON events FROM {role};"
        ))
        .execute(&self.db.pool)
        .await
        .expect("creating a role that may not read the log");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(self.db.connect_options().username(&role).password("reader"))
            .await
            .expect("connecting as the restricted role");
        let refused = sqlx::query("SELECT 1 FROM events LIMIT 1")
            .execute(&pool)
            .await;
        assert!(refused.is_err(), "the restricted role reads the log");
        (pool, role)
    }

    /// Closes `pool` and drops the role [`TestApp::pool_without_the_log`] made (roles outlive
    /// databases).
    pub async fn drop_role(&self, pool: PgPool, role: &str) {
        pool.close().await;
        sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
            .execute(&self.db.pool)
            .await
            .expect("dropping the restricted role");
    }

    pub fn start_projector(&mut self) {
        let config = projector::worker::WorkerConfig {
            retry_delay: Duration::from_millis(50),
            ..Default::default()
        };
        // A pool of its own, as the projector's process has: its live projections each hold one of
        // its connections, which the APIs' pool of any size must not run short of.
        let pool = PgPoolOptions::new()
            .max_connections(projector::pool_size())
            .connect_lazy_with(self.db.connect_options());
        self.projector = projector::spawn_workers(&pool, config);
        if let Some(bucket) = &self.bucket {
            let config = projector::indexer::IndexerConfig {
                poll_interval: Duration::from_millis(100),
                reconcile_interval: Duration::from_secs(1),
                retry_delay: Duration::from_millis(100),
                max_body_bytes: s3::MAX_BODY_BYTES,
                ..Default::default()
            };
            self.projector.push(tokio::spawn(projector::indexer::run(
                self.db.pool.clone(),
                bucket.clone(),
                config,
            )));
        }
    }

    /// Starts the projector's job runner (not started by [`TestApp::spawn`], so that no other test
    /// shares a runner); stopped with the projector's workers.
    pub fn start_job_runner(&mut self) {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(self.db.connect_options());
        self.projector.push(tokio::spawn(projector::job_runner::run(
            pool,
            uuid::Uuid::now_v7(),
            Default::default(),
        )));
    }

    /// Another command-api over this app's database, as a second process would run it (its own pool,
    /// executor and caches); its base URL.
    pub async fn another_command_api(&self) -> String {
        self.another_command_api_with(|_| {}).await
    }

    /// As [`TestApp::another_command_api`], with its configuration changed by `change`.
    pub async fn another_command_api_with(
        &self,
        change: impl FnOnce(&mut command_api::Config),
    ) -> String {
        let pool = self.another_pool().await;
        let mut config = self.command_config.clone();
        change(&mut config);
        let state = command_api::build(&config, pool, metrics_handle())
            .expect("building another command-api");
        format!("http://{}", serve(command_api::router(state)).await)
    }

    /// The MCP server over this app's database, as its binary builds it from command-api's
    /// configuration and its own (`change` sets the latter; by default every tool, local hosts, no
    /// browser origins); its base URL.
    pub async fn start_mcp(&self, change: impl FnOnce(&mut mcp_api::McpArgs)) -> String {
        let pool = self.another_pool().await;
        // The server is its own public origin here, so that the discovery flow resolves.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let mut command = self.command_config.clone();
        command.sign_in.public_url = Some(url.clone());
        let mut mcp = mcp_api::McpArgs {
            read_only: false,
            allowed_hosts: "localhost,127.0.0.1".into(),
            allowed_origins: String::new(),
        };
        change(&mut mcp);
        let config = mcp_api::Config { command, mcp };
        let state =
            mcp_api::build(&config, pool, metrics_handle()).expect("building the MCP server");
        serve_on(
            listener,
            mcp_api::router(state).expect("the MCP server's routes"),
        );
        url
    }

    /// A pool of its own over this app's database, as another process would have.
    async fn another_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(10)
            .connect_with(self.db.connect_options())
            .await
            .expect("a pool over the test database")
    }

    /// Kills the projector's workers wherever they are (as a crash would).
    pub fn stop_projector(&mut self) {
        for worker in self.projector.drain(..) {
            worker.abort();
        }
    }

    /// A request through the gateway's routing: `GET`/`HEAD` to query-api, the rest and browser
    /// sign-in to command-api.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let base = match gateway_upstream(&method, path) {
            "query_api" => &self.query_url,
            _ => &self.command_url,
        };
        self.http.request(method, format!("{base}{path}"))
    }

    /// A request as the System user.
    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).bearer_auth(&self.admin_token)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.admin(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.admin(Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.admin(Method::PUT, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send(self.admin(Method::DELETE, path)).await
    }

    /// Creates an organization and returns its id.
    pub async fn create_organization(&self, name: &str) -> String {
        let (status, body) = self
            .post("/api/organizations", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(status, 201, "creating organization {name}: {body}");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// Creates an environment and returns its id.
    pub async fn create_environment(&self, organization_id: &str, name: &str) -> String {
        let (status, body) = self
            .post(
                "/api/environments",
                serde_json::json!({ "organizationId": organization_id, "name": name }),
            )
            .await;
        assert_eq!(status, 201, "creating environment {name}: {body}");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// A request as the user with subject `sub` (recorded on its first request).
    pub fn as_user(&self, sub: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path)
            .bearer_auth(self.issuer.token(sub))
    }

    /// The user id of subject `sub`, recording the user if this is its first request.
    pub async fn user_id(&self, sub: &str) -> String {
        // Only the id is wanted: no need to wait for the read models.
        let (status, body) = send(
            self.as_user(sub, Method::GET, "/api/auth/session")
                .header("consistency", "eventual"),
        )
        .await;
        assert_eq!(status, 200, "session of {sub}: {body}");
        body["user"]["id"].as_str().expect("a user id").to_owned()
    }

    /// Makes `sub` a member of `organization_id` in `role` (as the System user); returns its user id.
    pub async fn add_member(&self, organization_id: &str, sub: &str, role: &str) -> String {
        let user_id = self.user_id(sub).await;
        let (status, body) = self
            .post(
                &format!("/api/organizations/{organization_id}/members"),
                serde_json::json!({ "userId": user_id, "role": role }),
            )
            .await;
        assert_eq!(status, 201, "adding {sub} as {role}: {body}");
        user_id
    }

    /// Appends a `member.role_changed` event as version 1 of its schema wrote it (no `previousRole`),
    /// as a log written before version 2 holds it.
    pub async fn append_role_change_v1(&self, organization_id: &str, user_id: &str, role: &str) {
        let organization = organization_id.parse().expect("an organization id");
        let metadata = metadata(&self.admin_id, Some(organization));
        let event = domain::NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "member.role_changed".into(),
            schema_version: 1,
            data: serde_json::json!({ "userId": user_id, "role": role }),
            metadata,
            recorded_at: chrono::Utc::now().trunc_subsecs(6),
        };
        commands::testing::append(
            &self.db.pool,
            &format!("members-{organization_id}"),
            vec![event],
        )
        .await
        .expect("appending a version 1 role change");
    }

    /// The events in the log but the platform's own probe reports: a refused request that looked like
    /// an attack is reported into the triage queue a second or so later (`command-api/src/probes.rs`),
    /// which is no write of the refused caller's.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events \
             WHERE NOT (stream_id LIKE 'feedback-%' AND metadata->>'requestId' LIKE 'probe-intake:%')",
        )
            .fetch_one(&self.db.pool)
            .await
            .expect("counting events")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_projector();
    }
}

/// What a System actor's event appended by a test records about its request.
pub fn metadata(actor_id: &str, organization_id: Option<uuid::Uuid>) -> domain::EventMetadata {
    domain::EventMetadata {
        actor: domain::ActorRef {
            id: actor_id.into(),
            role: Some(domain::Role::System),
        },
        organization_id,
        request_id: "test".into(),
        correlation_id: "test".into(),
        causation_id: None,
        client_ip: None,
        user_agent: None,
        channel: None,
    }
}

/// Sends a request and returns its status and JSON body (`Value::Null` for an empty body).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("sending the request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("reading the body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// The settings of a system without a processed queue.
fn no_queue() -> processed_queue::S3Args {
    processed_queue::S3Args {
        bucket: None,
        endpoint: None,
        region: "us-east-1".into(),
        access_key_id: String::new(),
        secret_access_key: String::new(),
        max_body_bytes: 1 << 20,
        timeout_secs: 5,
    }
}

fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle()
}

/// The gateway's routing rule, read from the file nginx includes (`deploy/gateway-routes.map`): the
/// upstream (`query_api` or `command_api`) that serves `method` on `path` (its query left out, as
/// nginx's `$uri` leaves it out).
pub fn gateway_upstream(method: &Method, path: &str) -> &'static str {
    static RULES: std::sync::LazyLock<(Vec<(regex::Regex, String)>, String)> =
        std::sync::LazyLock::new(|| {
            let map = include_str!("../../deploy/gateway-routes.map");
            let mut rules = Vec::new();
            let mut default = None;
            for line in map.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_suffix(';').expect("map lines end with ';'");
                let (key, upstream) = line
                    .rsplit_once(char::is_whitespace)
                    .expect("key and value");
                let (key, upstream) = (key.trim(), upstream.trim().to_owned());
                match key.trim_matches('"').strip_prefix('~') {
                    Some(pattern) => rules.push((
                        regex::Regex::new(pattern).expect("a valid pattern"),
                        upstream,
                    )),
                    None if key == "default" => default = Some(upstream),
                    None => panic!("unexpected key {key:?} in gateway-routes.map"),
                }
            }
            (rules, default.expect("a default upstream"))
        });
    let (rules, default) = &*RULES;
    let key = format!("{method} {}", path.split('?').next().unwrap_or(path));
    rules
        .iter()
        .find(|(pattern, _)| pattern.is_match(&key))
        .map_or(default.as_str(), |(_, upstream)| upstream.as_str())
}
