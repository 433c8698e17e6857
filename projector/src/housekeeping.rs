//! Housekeeping: deletes what has expired from the tables the APIs keep beside the log: sign-in
//! attempts past their time to come back, sessions past their end, idempotency records older
//! than the 24 hours a key is honoured, recorded refusals (`security_refusals`) older than
//! [`REFUSALS_KEPT_DAYS`] (probes once reported into the triage queue), the heartbeats of service
//! instances not seen for a day (`service_instances`), and usage export files older than
//! [`EXPORTS_KEPT_DAYS`] (`export_files`; the export answers `410` after). It runs in the projector process, every
//! `HOUSEKEEPING_INTERVAL_SECS`.
//!
//! Each statement deletes at most one batch and commits on its own, skipping rows another
//! transaction holds, so neither a large backlog nor a concurrent sign-in or logout waits on it for
//! long. Several projector processes may run it at once.

use std::time::Duration;

use http_layer::shutdown::Shutdown;
use identity::sessions::SIGN_IN_SECONDS;
use sqlx::PgPool;

/// Most rows one statement deletes.
pub const BATCH: i64 = 1_000;

/// How long refused requests stay among the security events.
pub const REFUSALS_KEPT_DAYS: i64 = 90;

/// How long a usage export's file is kept.
pub const EXPORTS_KEPT_DAYS: i64 = 7;

/// Deletes everything expired, a batch at a time; returns how many rows it deleted.
pub async fn purge(pool: &PgPool) -> sqlx::Result<u64> {
    let purges = [
        format!(
            "DELETE FROM sign_in_attempts WHERE state_hash IN (SELECT state_hash FROM sign_in_attempts \
             WHERE created_at < now() - interval '{SIGN_IN_SECONDS} seconds' LIMIT $1 FOR UPDATE SKIP LOCKED)"
        ),
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
         WHERE expires_at < now() LIMIT $1 FOR UPDATE SKIP LOCKED)"
            .to_owned(),
        // command-api honours a key for 24 hours (command::replay).
        "DELETE FROM idempotency_keys WHERE (caller, key) IN (SELECT caller, key FROM idempotency_keys \
         WHERE created_at < now() - interval '24 hours' LIMIT $1 FOR UPDATE SKIP LOCKED)"
            .to_owned(),
        format!(
            "DELETE FROM security_refusals WHERE (minute, kind, source, actor_id) IN ( \
               SELECT minute, kind, source, actor_id FROM security_refusals \
               WHERE first_at < now() - interval '{REFUSALS_KEPT_DAYS} days' AND (kind <> 'probe' OR reported) \
               LIMIT $1 FOR UPDATE SKIP LOCKED)"
        ),
        "DELETE FROM service_instances WHERE instance_id IN (SELECT instance_id FROM service_instances \
         WHERE last_seen_at < now() - interval '1 day' LIMIT $1 FOR UPDATE SKIP LOCKED)"
            .to_owned(),
        format!(
            "DELETE FROM export_files WHERE (job_id, part) IN (SELECT job_id, part FROM export_files \
             WHERE written_at < now() - interval '{EXPORTS_KEPT_DAYS} days' LIMIT $1 FOR UPDATE SKIP LOCKED)"
        ),
    ];
    let mut deleted = 0;
    for purge in &purges {
        loop {
            let batch = sqlx::query(purge)
                .bind(BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            deleted += batch;
            if batch < BATCH as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Purges now and then every `interval`, until shutdown is requested.
pub async fn run(pool: PgPool, interval: Duration, shutdown: Shutdown) {
    while !shutdown.is_requested() {
        match purge(&pool).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "housekeeping: expired rows deleted"),
            Err(error) => tracing::error!(%error, "housekeeping failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.requested() => {}
        }
    }
}
