//! Logging for every process: `tracing` to standard output, filtered by `RUST_LOG` (default `info`).
//! PostgreSQL's notices (such as "relation already exists, skipping" during migrations) are kept at
//! warning level so they do not drown the services' own lines.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
}
