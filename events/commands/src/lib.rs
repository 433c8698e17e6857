//! The write side of the platform, and the only way anything is appended to the event log: the
//! command [`executor`] runs a command (load → decide → commit, again after a lost race, with its
//! idempotency key) and commits the [`WriteSet`] it returns in one statement, together with what the
//! events imply outside the log ([`lookups`]). Write-only values are sealed here ([`secrets`]) before
//! they enter an event.
//!
//! Services depend on this crate only where they write (command-api, and the user registration of
//! `identity`); code that only reads depends on `event_log` and cannot name anything here.

pub mod access;
pub mod executor;
pub mod lookups;
pub mod secrets;
mod store;

pub use executor::{Answer, Caller, CommandError, Executor, Idempotency, Outcome, Refused};
pub use store::{Appended, Claimant, StoreError, StreamHead, WriteSet, GROUPS_IN_FLIGHT};

/// Committing write sets directly, for the tests of the log's own guarantees (ordering under late
/// commits, all-or-nothing checks). Services commit through the [`Executor`] only; this module exists
/// only with the `test-support` feature.
#[cfg(feature = "test-support")]
pub mod testing {
    use domain::NewEvent;
    use sqlx::{PgExecutor, PgPool};

    use crate::store::{notify, retry_backoff, StoreError, WriteSet};
    use crate::Appended;

    /// Commits `write` on its own and wakes the log's followers, as the executor would.
    pub async fn commit(pool: &PgPool, write: WriteSet) -> Result<Appended, StoreError> {
        let appended = crate::store::commit_in(pool, &write).await?;
        notify(pool).await;
        Ok(appended)
    }

    /// The version `stream` is at (0: it does not exist).
    pub async fn stream_version(pool: &PgPool, stream: &str) -> Result<i64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
                .bind(stream)
                .fetch_optional(pool)
                .await?;
        Ok(version.unwrap_or(0))
    }

    /// Appends `events` to `stream` at whatever version it is at (read before each try), trying again
    /// after a lost race.
    pub async fn append(
        pool: &PgPool,
        stream: &str,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let version = stream_version(pool, stream).await?;
            match commit(pool, WriteSet::append(stream, version, events.clone())).await {
                Err(StoreError::Conflict { .. }) if attempt < 100 => {
                    tokio::time::sleep(retry_backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Commits `write` inside the caller's transaction, which the test then holds open.
    pub async fn commit_in<'e>(
        executor: impl PgExecutor<'e>,
        write: &WriteSet,
    ) -> Result<Appended, StoreError> {
        crate::store::commit_in(executor, write).await
    }
}
