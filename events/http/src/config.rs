//! The settings the service binaries share (contract §1, `events/docs/contract.md`), as clap argument
//! groups that each binary's configuration flattens: each is a flag, or else the environment variable
//! named. An empty variable counts as unset.

use std::time::Duration;

use anyhow::Context;
use event_log::database::Limits;
use identity::auth::{parse_subjects, AuthConfig};
use identity::token::TokenConfig;
use sqlx::PgPool;

/// The limits every pooled connection of a service carries (see [`event_log::database`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionLimitArgs {
    /// The longest a statement may run, in seconds.
    #[arg(
        long = "statement-timeout-secs",
        env = "STATEMENT_TIMEOUT_SECS",
        default_value = "30",
        value_parser = seconds::<30>
    )]
    pub statement_timeout: Duration,
    /// How long a transaction may stay open without a statement, in seconds.
    #[arg(
        long = "idle-in-transaction-timeout-secs",
        env = "IDLE_IN_TRANSACTION_TIMEOUT_SECS",
        default_value = "60",
        value_parser = seconds::<60>
    )]
    pub idle_in_transaction_timeout: Duration,
}

impl ConnectionLimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            statement: Some(self.statement_timeout),
            idle_in_transaction: self.idle_in_transaction_timeout,
        }
    }
}

/// An API's database: where it is, and the limits on its connections.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL: the event store and the read models.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub limits: ConnectionLimitArgs,
}

impl DatabaseArgs {
    /// Applies the migrations, then opens a pool of `max_connections` (see
    /// [`event_log::database::connect`]).
    pub async fn connect(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        let url = required(&self.database_url, "DATABASE_URL is not set")?;
        event_log::database::connect(url, max_connections, self.limits.limits()).await
    }
}

/// What both APIs read: how long a request may take, and how its caller is authenticated.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// A request with no response head by then answers 503, in seconds.
    #[arg(
        long = "request-timeout-secs",
        env = "REQUEST_TIMEOUT_SECS",
        default_value = "30",
        value_parser = seconds::<30>
    )]
    pub request_timeout: Duration,
    /// The OIDC issuer of access tokens, with its trailing slash.
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// The `aud` access tokens must carry.
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Where the issuer's signing keys are fetched; `${AUTH_ISSUER}.well-known/jwks.json` when unset.
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// Comma-separated token subjects that hold the System role.
    #[arg(long, env = "SYSTEM_ADMINS", default_value = "")]
    pub system_admins: String,
    /// The least time between two fetches of the signing keys for an unknown key id (not a
    /// setting: tests shorten it).
    #[arg(skip = Duration::from_secs(10))]
    pub keys_refetch_interval: Duration,
}

impl ApiArgs {
    pub fn issuer(&self) -> anyhow::Result<&str> {
        required(&self.auth_issuer, "AUTH_ISSUER is not set")
    }

    pub fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let issuer = self.issuer()?;
        let audience = required(&self.auth_audience, "AUTH_AUDIENCE is not set")?;
        let jwks_url = match non_empty(&self.auth_jwks_url) {
            Some(url) => url.to_owned(),
            None => format!("{issuer}.well-known/jwks.json"),
        };
        Ok(AuthConfig {
            token: TokenConfig {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                jwks_url,
                refetch_interval: self.keys_refetch_interval,
            },
            system_admins: parse_subjects(&self.system_admins),
        })
    }
}

/// A required setting's value, or `message` when it is unset or empty.
pub fn required<'a>(value: &'a Option<String>, message: &'static str) -> anyhow::Result<&'a str> {
    non_empty(value).context(message)
}

/// A setting's value, unless it is unset or empty.
pub fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Parses a whole number of seconds; empty gives `DEFAULT`, as unset does.
pub fn seconds<const DEFAULT: u64>(value: &str) -> Result<Duration, String> {
    whole_number::<DEFAULT>(value).map(Duration::from_secs)
}

/// Parses a whole number; empty gives `DEFAULT`, as unset does.
pub fn whole_number<const DEFAULT: u64>(value: &str) -> Result<u64, String> {
    if value.is_empty() {
        return Ok(DEFAULT);
    }
    value
        .parse()
        .map_err(|_| format!("must be a whole number, not {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_read_empty_as_unset() {
        assert_eq!(seconds::<30>(""), Ok(Duration::from_secs(30)));
        assert_eq!(seconds::<30>("7"), Ok(Duration::from_secs(7)));
        assert_eq!(
            whole_number::<20>("-1"),
            Err("must be a whole number, not \"-1\"".to_owned())
        );
        assert_eq!(
            required(&Some(String::new()), "X is not set")
                .unwrap_err()
                .to_string(),
            "X is not set"
        );
    }
}
