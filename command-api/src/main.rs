//! The command-api process: configuration from the environment (contract §1, `events/docs/contract.md`),
//! migrations, then serve until SIGTERM or SIGINT (see [`events::shutdown`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use command_api::sign_in::{SignIn, SignInConfig};
use command_api::{ops, router, AppState};
use events::auth::{AuthConfig, Authenticator};
use events::database::Limits;
use events::secrets::Secrets;
use events::shutdown::Shutdown;
use events::PgEventStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    events::telemetry::init();
    let shutdown = Shutdown::on_signal().context("installing the signal handlers")?;
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let addr: SocketAddr = std::env::var("COMMAND_API_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8081".into())
        .parse()
        .context("COMMAND_API_ADDR")?;
    let pool = events::database::connect(&database_url, 40, Limits::from_env()?).await?;
    let secrets = Secrets::from_base64(
        &std::env::var("SECRETS_KEY").context("SECRETS_KEY is not set (base64 of 32 bytes)")?,
    )
    .context("SECRETS_KEY")?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let store = PgEventStore::new(pool);
    let state = AppState {
        auth: Arc::new(Authenticator::new(AuthConfig::from_env()?, store.clone())),
        sign_in: Arc::new(SignIn::new(SignInConfig::from_env()?)),
        store,
        metrics,
        request_timeout: events::settings::seconds(
            "REQUEST_TIMEOUT_SECS",
            ops::DEFAULT_REQUEST_TIMEOUT.as_secs(),
        )?,
        secrets,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "command-api listening");
    // Stops accepting on the signal and lets the requests in flight finish, within the grace period.
    let server = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown({
        let shutdown = shutdown.clone();
        async move { shutdown.requested().await }
    });
    if let Some(served) = shutdown.within_grace(server).await {
        served?;
    }
    tracing::info!("command-api stopped");
    Ok(())
}
