//! The life of an API process, the same for both APIs: logging, the configuration from flags or the
//! environment (contract §1, `events/docs/contract.md`), the database with the migrations applied,
//! the metrics recorder, then [`serve`] until SIGTERM or SIGINT.

use std::net::SocketAddr;

use crate::shutdown::Shutdown;
use anyhow::Context;
use axum::Router;
use clap::{CommandFactory, FromArgMatches};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

use crate::config::DatabaseArgs;
use crate::{serve, telemetry};

/// Connections in an API's pool.
const MAX_CONNECTIONS: u32 = 40;

/// An API as its binary runs it: its configuration (the service's own settings, which the command
/// line flattens), its name, where it listens, and how it makes its app.
pub trait Api: clap::Args {
    /// Names the service in its log and its `--help`.
    const NAME: &'static str;
    /// The variable that says where the service listens (contract §1).
    const ADDR_VARIABLE: &'static str;
    /// Where the service listens when that variable is unset.
    const DEFAULT_ADDR: &'static str;

    /// The app as this configuration says, over `pool` (migrated), recording its metrics for
    /// `metrics`.
    fn app(&self, pool: PgPool, metrics: PrometheusHandle) -> anyhow::Result<Router>;
}

/// An API of the admin platform; it serves until SIGTERM or SIGINT. Each setting is a flag, or else
/// the environment variable named.
#[derive(clap::Parser)]
struct CommandLine<A: Api> {
    /// Where the API listens.
    #[arg(long, env = A::ADDR_VARIABLE, default_value = A::DEFAULT_ADDR)]
    addr: SocketAddr,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    api: A,
}

/// Runs the API `A` until SIGTERM or SIGINT, and its requests in flight are answered.
pub async fn run<A: Api>() -> anyhow::Result<()> {
    telemetry::init();
    let matches = CommandLine::<A>::command().name(A::NAME).get_matches();
    let command_line = CommandLine::<A>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let shutdown = Shutdown::on_signal().context("installing the signal handlers")?;
    let pool = command_line.database.connect(MAX_CONNECTIONS).await?;
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let app = command_line.api.app(pool, metrics)?;
    serve(A::NAME, command_line.addr, app, &shutdown).await?;
    tracing::info!("{} stopped", A::NAME);
    Ok(())
}
