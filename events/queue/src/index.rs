//! The processed queue's PostgreSQL index (`read_models.processed_messages`, created by
//! `schemas/migrations/0015_processed_queue.sql`): adding what a listing found, removing what is gone,
//! and recording what an object's body says. Every change of rows changes the per-day and per-hour
//! counts (`processed_message_counts`, `processed_message_hourly_counts`) in the same statement, so
//! counts stay exact under crashes and concurrent writers; adding a key that is already indexed
//! changes nothing, so a page listed twice (after a crash) is not counted twice.
//!
//! The indexer (in the projector) does all three; query-api removes a key whose object it found gone.

use chrono::{DateTime, Utc};
use domain::processed_queue::{MessageKey, Summary};
use sqlx::PgExecutor;

use crate::bucket::Listed;

/// Indexes the listed objects that are not indexed yet, as `pending`. Returns how many were new.
pub async fn insert<'e>(
    executor: impl PgExecutor<'e>,
    objects: &[(MessageKey, Listed)],
) -> sqlx::Result<u64> {
    if objects.is_empty() {
        return Ok(0);
    }
    let column = |f: &dyn Fn(&(MessageKey, Listed)) -> String| objects.iter().map(f).collect();
    let keys: Vec<String> = column(&|(k, _)| k.key.clone());
    let message_ids: Vec<String> = column(&|(k, _)| k.message_id.clone());
    let statuses: Vec<String> = column(&|(k, _)| k.status.as_str().to_owned());
    let ids: Vec<uuid::Uuid> = objects.iter().map(|(k, _)| k.id()).collect();
    let organizations: Vec<uuid::Uuid> = objects.iter().map(|(k, _)| k.organization_id).collect();
    let environments: Vec<uuid::Uuid> = objects.iter().map(|(k, _)| k.environment_id).collect();
    let stored_at: Vec<DateTime<Utc>> = objects.iter().map(|(_, l)| l.last_modified).collect();
    let sizes: Vec<i64> = objects.iter().map(|(_, l)| l.size).collect();
    sqlx::query_scalar(
        "WITH inserted AS ( \
           INSERT INTO read_models.processed_messages \
             (key, id, organization_id, environment_id, status, message_id, stored_at, size) \
           SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], \
                                $6::text[], $7::timestamptz[], $8::bigint[]) \
           ORDER BY 1 \
           ON CONFLICT (key) DO NOTHING \
           RETURNING organization_id, environment_id, status, stored_at \
         ), daily AS ( \
           INSERT INTO read_models.processed_message_counts AS c \
             (organization_id, environment_id, status, day, messages) \
           SELECT organization_id, environment_id, status, (stored_at AT TIME ZONE 'UTC')::date, count(*) \
           FROM inserted GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
           ON CONFLICT (organization_id, environment_id, status, day) \
           DO UPDATE SET messages = c.messages + excluded.messages \
           RETURNING 1 \
         ), hourly AS ( \
           INSERT INTO read_models.processed_message_hourly_counts AS c \
             (organization_id, environment_id, status, hour, messages) \
           SELECT organization_id, environment_id, status, date_trunc('hour', stored_at, 'UTC'), count(*) \
           FROM inserted GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
           ON CONFLICT (organization_id, environment_id, status, hour) \
           DO UPDATE SET messages = c.messages + excluded.messages \
           RETURNING 1 \
         ) \
         SELECT count(*) FROM inserted",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(&organizations)
    .bind(&environments)
    .bind(&statuses)
    .bind(&message_ids)
    .bind(&stored_at)
    .bind(&sizes)
    .fetch_one(executor)
    .await
    .map(|n: i64| n as u64)
}

/// Removes `keys` from the index. Returns how many were indexed.
pub async fn remove<'e>(executor: impl PgExecutor<'e>, keys: &[String]) -> sqlx::Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    sqlx::query_scalar(
        "WITH removed AS ( \
           DELETE FROM read_models.processed_messages WHERE key = ANY($1) \
           RETURNING organization_id, environment_id, status, stored_at \
         ), daily AS ( \
           UPDATE read_models.processed_message_counts c SET messages = c.messages - r.messages \
           FROM (SELECT organization_id, environment_id, status, \
                        (stored_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages \
                 FROM removed GROUP BY 1, 2, 3, 4) r \
           WHERE c.organization_id = r.organization_id AND c.environment_id = r.environment_id \
             AND c.status = r.status AND c.day = r.day \
           RETURNING 1 \
         ), hourly AS ( \
           UPDATE read_models.processed_message_hourly_counts c SET messages = c.messages - r.messages \
           FROM (SELECT organization_id, environment_id, status, \
                        date_trunc('hour', stored_at, 'UTC') AS hour, count(*) AS messages \
                 FROM removed GROUP BY 1, 2, 3, 4) r \
           WHERE c.organization_id = r.organization_id AND c.environment_id = r.environment_id \
             AND c.status = r.status AND c.hour = r.hour \
           RETURNING 1 \
         ) \
         SELECT count(*) FROM removed",
    )
    .bind(keys)
    .fetch_one(executor)
    .await
    .map(|n: i64| n as u64)
}

/// Records what the body of the object under `key` says.
pub async fn summarise<'e>(
    executor: impl PgExecutor<'e>,
    key: &str,
    summary: &Summary,
) -> sqlx::Result<()> {
    let query = match summary {
        Summary::Parsed {
            workflow_id,
            received_at,
            processed_at,
        } => sqlx::query(
            "UPDATE read_models.processed_messages SET summary = 'parsed', workflow_id = $2, \
               received_at = $3, processed_at = $4, unparsed_reason = NULL WHERE key = $1",
        )
        .bind(key)
        .bind(workflow_id)
        .bind(received_at)
        .bind(processed_at),
        Summary::Unparsed { reason } => sqlx::query(
            "UPDATE read_models.processed_messages SET summary = 'unparsed', workflow_id = NULL, \
               received_at = NULL, processed_at = NULL, unparsed_reason = $2 WHERE key = $1",
        )
        .bind(key)
        .bind(reason),
    };
    query.execute(executor).await?;
    Ok(())
}

/// Up to `limit` indexed keys whose bodies have not been read, in key order.
pub async fn pending<'e>(executor: impl PgExecutor<'e>, limit: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT key FROM read_models.processed_messages WHERE summary = 'pending' ORDER BY key LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The indexed keys under `prefix` after `after` (from the start: `None`) up to and including
/// `through` (to the end: `None`), in key order.
pub async fn keys_between<'e>(
    executor: impl PgExecutor<'e>,
    prefix: &str,
    after: Option<&str>,
    through: Option<&str>,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT key FROM read_models.processed_messages \
         WHERE key >= $1 AND key < $1 || chr(1114111) \
           AND ($2::text IS NULL OR key > $2) AND ($3::text IS NULL OR key <= $3) \
         ORDER BY key",
    )
    .bind(prefix)
    .bind(after)
    .bind(through)
    .fetch_all(executor)
    .await
}
