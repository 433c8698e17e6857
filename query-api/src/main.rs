//! The query-api process: configuration from the environment (contract §1, `events/docs/contract.md`),
//! migrations, then serve until SIGTERM or SIGINT (see [`events::shutdown`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use events::auth::{AuthConfig, Authenticator};
use events::database::Limits;
use events::shutdown::Shutdown;
use events::PgEventStore;
use query_api::consistency::{Consistency, ConsistencyConfig};
use query_api::{ops, router, AppState};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    events::telemetry::init();
    let shutdown = Shutdown::on_signal().context("installing the signal handlers")?;
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let addr: SocketAddr = std::env::var("QUERY_API_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8082".into())
        .parse()
        .context("QUERY_API_ADDR")?;
    let pool = events::database::connect(&database_url, 40, Limits::from_env()?).await?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let state = AppState {
        consistency: Consistency::start(pool.clone(), ConsistencyConfig::default()),
        auth: Arc::new(Authenticator::new(
            AuthConfig::from_env()?,
            PgEventStore::new(pool.clone()),
        )),
        pool,
        metrics,
        request_timeout: events::settings::seconds(
            "REQUEST_TIMEOUT_SECS",
            ops::DEFAULT_REQUEST_TIMEOUT.as_secs(),
        )?,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "query-api listening");
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
    tracing::info!("query-api stopped");
    Ok(())
}
