//! How a process connects to PostgreSQL. Every connection of a service's pool carries its own
//! server-side limits, whatever the server's configuration says, so that no statement and no
//! abandoned transaction of a service holds locks for long:
//! - `STATEMENT_TIMEOUT_SECS` (default 30): the longest a statement of a request or of a projection
//!   batch may run. The projector's operator commands (rebuild, verify, replay) run without it:
//!   their statements take as long as the log is big.
//! - `IDLE_IN_TRANSACTION_TIMEOUT_SECS` (default 60): a transaction left open without a statement
//!   for that long is ended by the server, releasing its locks.
//!
//! The binaries read both settings (`http_layer::config`) and pass them in as [`Limits`].

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `None`: statements may run as long as they need.
    pub statement: Option<Duration>,
    pub idle_in_transaction: Duration,
}

impl Limits {
    /// The same, with no limit on a statement's duration: for long operator commands and migrations.
    pub fn without_statement_timeout(self) -> Self {
        Limits {
            statement: None,
            ..self
        }
    }

    pub fn connect_options(&self, database_url: &str) -> anyhow::Result<PgConnectOptions> {
        let options: PgConnectOptions = database_url.parse().context("DATABASE_URL")?;
        // 0 switches a limit off in PostgreSQL.
        let millis = |limit: Option<Duration>| limit.map_or(0, |d| d.as_millis()).to_string();
        Ok(options.options([
            ("statement_timeout", millis(self.statement)),
            (
                "idle_in_transaction_session_timeout",
                millis(Some(self.idle_in_transaction)),
            ),
        ]))
    }
}

/// Applies the migrations (without the statement limit: one may take long on a big log), then
/// opens the process's pool with `limits` on every connection.
pub async fn connect(
    database_url: &str,
    max_connections: u32,
    limits: Limits,
) -> anyhow::Result<PgPool> {
    let migrations = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            limits
                .without_statement_timeout()
                .connect_options(database_url)?,
        )
        .await
        .context("connecting to PostgreSQL")?;
    crate::migrate(&migrations)
        .await
        .context("applying migrations")?;
    migrations.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(limits.connect_options(database_url)?)
        .await
        .context("connecting to PostgreSQL")
}
