//! The processed queue's indexer: keeps `read_models.processed_messages` (the index lists and counts
//! read; `processed_queue::index`) in step with the S3 bucket the workflow runtime writes into, and
//! with the deletions the log records. It is not a projection: its rows come from the bucket, so
//! `projector rebuild` leaves them alone. One runner at a time holds it (the runner lock of its
//! checkpoint), and it does everything in one task, so that its steps never interleave:
//!
//! - **Deletions.** It follows the log from its checkpoint (`processed_queue` in
//!   `projection_checkpoints`: `projector status` shows its lag, and reads wait for it like for any
//!   projection). For each `processed_message.deleted` it deletes the object (again: command-api did
//!   already, unless it crashed in between; deleting is idempotent), then removes the key from the
//!   index and moves the checkpoint in one transaction. Woken by every append, and before every S3
//!   page of the other steps, so a deletion is reflected within one page's time.
//! - **Discovery.** Every `poll_interval` it lists each active prefix (`<organization>/<environment>/
//!   <status>/` of every environment) after the last key it indexed there, and indexes what it finds
//!   with the cursor moved in the same transaction: killed anywhere, it lists the page again and
//!   indexing it again adds nothing. Keys sort by day, and the runtime's message ids by time, so new
//!   objects come after the cursor.
//!   Failed messages (`…/fail/`) are recorded as found (`processed_failures`) before they are
//!   indexed, by discovery or reconciliation, for the platform's alerts
//!   ([`Indexer::record_failures`]).
//! - **Summaries.** It reads the bodies of newly indexed objects (`read_concurrency` at once) and
//!   records their workflow id and times, or why they are unparsed.
//! - **Reconciliation.** When it starts, and then every `reconcile_interval`, it walks each prefix
//!   whole and compares it with the index page by page: objects added behind its back (a key before
//!   the cursor) are indexed, keys whose object is gone are removed. An operator's `reconcile` job
//!   (`POST /api/v1/admin/jobs`) is taken between steps and runs the same comparison at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use commands::{Caller, Executor, Idempotency, Outcome, WriteSet};
use domain::job::JobKind;
use domain::processed_failures::{Found, ProcessedFailures};
use domain::processed_queue::{
    prefix, MessageKey, MessageStatus, ProcessedQueue, ProcessedQueueEvent, Summary,
};
use domain::Aggregate;
use event_log::{listen_for_appends, read_log};
use futures::stream::{self, StreamExt};
use http_layer::shutdown::Shutdown;
use http_layer::ApiError;
use processed_queue::bucket::{ListPage, Listed};
use processed_queue::{index, Bucket};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::job_runner::{self, Recorder, Reporter};
use crate::projection::{ensure_checkpoint, lock_checkpoint, record_failure, save_checkpoint};
use crate::worker::become_runner;
use crate::writes;

pub use contracts::read_models::PROCESSED_QUEUE as NAME;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// How often every active prefix is listed for new objects.
    pub poll_interval: Duration,
    /// How often every prefix is compared whole with the index.
    pub reconcile_interval: Duration,
    /// Keys per listing (S3 answers at most 1,000).
    pub page_size: i32,
    /// Most log events handled at once.
    pub batch_size: i64,
    /// Bodies read at once.
    pub read_concurrency: usize,
    /// Bodies larger than this are not read; they are indexed as unparsed.
    pub max_body_bytes: usize,
    pub retry_delay: Duration,
    pub shutdown: Shutdown,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            poll_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(300),
            page_size: 1_000,
            batch_size: 1_000,
            read_concurrency: 16,
            max_body_bytes: 1 << 20,
            retry_delay: Duration::from_secs(1),
            shutdown: Shutdown::default(),
        }
    }
}

/// Indexes until shutdown is requested or the task is dropped, starting again after any failure.
pub async fn run(pool: PgPool, bucket: Bucket, config: IndexerConfig) {
    while !config.shutdown.is_requested() {
        if let Err(error) = hold_and_index(&pool, &bucket, &config).await {
            let error = format!("{error:#}");
            tracing::error!(error, "processed-queue indexer stopped; retrying");
            metrics::counter!("projection_failures_total", "projection" => NAME).increment(1);
            if let Err(e) = record_failure(&pool, NAME, false, &error).await {
                tracing::warn!(error = %e, "recording the indexer's failure");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_delay) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    tracing::info!("processed-queue indexer stopped");
}

async fn hold_and_index(
    pool: &PgPool,
    bucket: &Bucket,
    config: &IndexerConfig,
) -> anyhow::Result<()> {
    let mut lock = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("connecting")?;
    ensure_checkpoint(&mut lock, NAME).await?;
    tokio::select! {
        became = become_runner(&mut lock, NAME, config.poll_interval) => became?,
        _ = config.shutdown.requested() => return Ok(()),
    }
    let mut listener = listen_for_appends(pool)
        .await
        .context("listening for appends")?;
    let indexer = Indexer {
        pool,
        bucket,
        config,
    };
    let recorder = Recorder::new(
        pool,
        format!("projector indexer (process {})", std::process::id()),
        "projector".into(),
    );
    tracing::info!(bucket = bucket.name(), "indexing the processed queue");
    // The first reconciliation comes right after the first discovery: whatever changed while no
    // indexer ran is found at once.
    let mut last_reconcile: Option<Instant> = None;
    while !config.shutdown.is_requested() {
        indexer.follow_log().await?;
        indexer.discover().await?;
        indexer.summarise().await?;
        if last_reconcile.is_none_or(|at| at.elapsed() >= config.reconcile_interval) {
            indexer.reconcile().await?;
            last_reconcile = Some(Instant::now());
        }
        // An operator's reconciliation job, run here so that it never interleaves with the rest.
        if let Some(claimed) = job_runner::claim_next(pool, &recorder, JobKind::Reconcile).await? {
            let work = async {
                let (added, removed) = indexer.reconcile().await?;
                Ok(json!({ "added": added, "removed": removed }))
            };
            job_runner::run_claimed(
                pool,
                &recorder,
                claimed,
                Reporter::default(),
                work,
                Some(&config.shutdown),
            )
            .await?;
            last_reconcile = Some(Instant::now());
        }
        indexer.follow_log().await?;
        tokio::select! {
            notification = listener.recv() => { notification.context("waiting for appends")?; }
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    Ok(())
}

/// What each step works with.
pub struct Indexer<'a> {
    pub pool: &'a PgPool,
    pub bucket: &'a Bucket,
    pub config: &'a IndexerConfig,
}

impl Indexer<'_> {
    /// Applies the deletions the log recorded since the checkpoint (module docs). Returns how many
    /// keys it deleted.
    pub async fn follow_log(&self) -> anyhow::Result<usize> {
        let mut deleted = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let after = lock_checkpoint(&mut tx, NAME).await?;
            let events = read_log(&mut *tx, after, self.config.batch_size).await?;
            let Some(last) = events.last().map(|e| e.position()) else {
                // Ended at once: the checkpoint's row lock gave this transaction an id, and
                // readers of the log wait for every older transaction to end.
                tx.rollback().await?;
                return Ok(deleted);
            };
            let mut keys = Vec::new();
            for event in &events {
                if event.stream_id.split_once('-').map(|(t, _)| t) != Some(ProcessedQueue::TYPE) {
                    continue;
                }
                let ProcessedQueueEvent::Deleted { key, .. } = event
                    .decode()
                    .with_context(|| format!("event {} of {}", event.event_id, event.stream_id))?;
                keys.push(key);
            }
            if !keys.is_empty() {
                let outcome = self.bucket.delete(&keys).await?;
                if let Some((key, error)) = outcome.errors.first() {
                    anyhow::bail!("deleting {key} from the bucket: {error}");
                }
                index::remove(&mut *tx, &keys).await?;
                deleted += keys.len();
            }
            save_checkpoint(&mut tx, NAME, last).await?;
            tx.commit().await?;
            if (events.len() as i64) < self.config.batch_size {
                return Ok(deleted);
            }
        }
    }

    /// Lists every active prefix after its cursor and indexes what is new (module docs). The next
    /// page is listed while the last one is stored; it is listed again if deletions were applied
    /// in between, so that a deleted key cannot come back from a page listed before its deletion.
    pub async fn discover(&self) -> anyhow::Result<u64> {
        let mut indexed = 0;
        let page_size = self.config.page_size;
        for (prefix, cursor) in self.cursors().await? {
            let mut after = cursor;
            let mut prefetched: Option<ListPage> = None;
            loop {
                let deleted = self.follow_log().await?;
                let page = match prefetched.take() {
                    Some(page) if deleted == 0 => page,
                    _ => {
                        self.bucket
                            .list(&prefix, after.as_deref(), None, page_size)
                            .await?
                    }
                };
                let Some(last) = page.objects.last().map(|o| o.key.clone()) else {
                    break;
                };
                let store = self.store_page(&prefix, &last, page.objects);
                if page.next.is_none() {
                    indexed += store.await?;
                    break;
                }
                let next = self.bucket.list(&prefix, Some(&last), None, page_size);
                let (stored, next) = tokio::join!(store, next);
                indexed += stored?;
                prefetched = Some(next?);
                after = Some(last);
            }
        }
        if indexed > 0 {
            metrics::counter!("processed_queue_indexed_total").increment(indexed);
        }
        Ok(indexed)
    }

    /// Indexes one listed page and moves the prefix's cursor to its last key, in one transaction.
    async fn store_page(
        &self,
        prefix: &str,
        last: &str,
        objects: Vec<Listed>,
    ) -> anyhow::Result<u64> {
        let objects = keyed(objects);
        self.record_failures(&objects.iter().map(|(key, _)| key).collect::<Vec<_>>())
            .await?;
        let mut tx = self.pool.begin().await?;
        let indexed = index::insert(&mut *tx, &objects).await?;
        sqlx::query(
            "INSERT INTO read_models.processed_queue_cursors (prefix, last_key, listed_at) \
             VALUES ($1, $2, now()) \
             ON CONFLICT (prefix) DO UPDATE SET last_key = $2, listed_at = now()",
        )
        .bind(prefix)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(indexed)
    }

    /// Records the failed messages among `keys` (of one prefix) that are not indexed yet
    /// (`processed_failures`, which the platform's alerts are derived from), before they are indexed,
    /// by discovery or by a reconciliation. Killed in between, the
    /// indexer lists the page again and records it again under the same idempotency key (the hash of
    /// the keys), which the executor answers with the first record instead of appending twice; only a
    /// page that grew meanwhile is recorded again, and then its alert counts those messages twice.
    pub async fn record_failures(&self, keys: &[&MessageKey]) -> anyhow::Result<()> {
        let failed: Vec<&MessageKey> = keys
            .iter()
            .copied()
            .filter(|key| key.status == MessageStatus::Fail)
            .collect();
        let Some(first) = failed.first() else {
            return Ok(());
        };
        let (organization_id, environment_id) = (first.organization_id, first.environment_id);
        let keys: Vec<String> = failed.iter().map(|key| key.key.clone()).collect();
        let indexed: HashSet<String> = sqlx::query_scalar(
            "SELECT key FROM read_models.processed_messages WHERE key = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(self.pool)
        .await?
        .into_iter()
        .collect();
        let new: Vec<String> = keys.into_iter().filter(|k| !indexed.contains(k)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let hash = hex(&Sha256::digest(new.join("\n").as_bytes()));
        let system = writes::system_actor();
        let idempotency = Idempotency {
            key: format!("processed-failures:{hash}"),
            fingerprint: hash.clone(),
        };
        let caller = Caller {
            actor: &system,
            idempotency: Some(&idempotency),
        };
        let metadata = writes::metadata("projector", Some(organization_id), hash);
        let executor = Executor::new(self.pool.clone());
        let (executor, new, metadata) = (&executor, &new, &metadata);
        executor
            .run(caller, || async move {
                let mut failures = executor.load::<ProcessedFailures>(organization_id).await?;
                let expected = failures.version;
                let found = Found {
                    environment_id,
                    keys: new.clone(),
                };
                let events = failures.state.decide(found)?;
                let events = failures.record(events, metadata, Utc::now());
                let write = WriteSet::append(
                    &ProcessedFailures::stream_id(organization_id),
                    expected,
                    events,
                );
                Ok::<_, ApiError>(
                    Outcome::new(200, serde_json::Value::Null, failures.version)
                        .appending(write, None),
                )
            })
            .await?;
        Ok(())
    }

    /// Reads the bodies of the objects indexed as `pending` and records what they say.
    pub async fn summarise(&self) -> anyhow::Result<u64> {
        let mut summarised = 0;
        loop {
            self.follow_log().await?;
            let keys = index::pending(self.pool, 256).await?;
            if keys.is_empty() {
                return Ok(summarised);
            }
            let limit = self.config.max_body_bytes;
            let fetched: Vec<_> = stream::iter(keys)
                .map(|key| async move {
                    let fetched = self.bucket.get(&key, limit).await;
                    (key, fetched)
                })
                .buffer_unordered(self.config.read_concurrency)
                .collect()
                .await;
            let mut gone = Vec::new();
            let mut tx = self.pool.begin().await?;
            for (key, fetched) in fetched {
                let summary = match (fetched?, MessageKey::parse(&key)) {
                    (None, _) => {
                        gone.push(key);
                        continue;
                    }
                    (Some(object), _) if object.too_large => Summary::Unparsed {
                        reason: format!("larger than {limit} bytes ({} bytes)", object.size),
                    },
                    (Some(object), Some(parsed)) => Summary::of(&parsed, &object.body),
                    (Some(_), None) => Summary::Unparsed {
                        reason: "not a key of the queue".into(),
                    },
                };
                index::summarise(&mut *tx, &key, &summary).await?;
                summarised += 1;
            }
            index::remove(&mut *tx, &gone).await?;
            tx.commit().await?;
        }
    }

    /// Compares every prefix whole with the index (module docs). Returns the keys added and removed.
    pub async fn reconcile(&self) -> anyhow::Result<(u64, u64)> {
        let (mut added, mut removed) = (0, 0);
        for (prefix, _) in self.cursors().await? {
            let mut after: Option<String> = None;
            let mut page_token = None;
            loop {
                self.follow_log().await?;
                let ListPage { objects, next } = self
                    .bucket
                    .list(&prefix, None, page_token.take(), self.config.page_size)
                    .await?;
                // This page covers the keys after the last page's up to its own last one; the last
                // page covers everything after.
                let through = next
                    .as_ref()
                    .and_then(|_| objects.last().map(|o| o.key.clone()));
                let mut tx = self.pool.begin().await?;
                let indexed: HashSet<String> =
                    index::keys_between(&mut *tx, &prefix, after.as_deref(), through.as_deref())
                        .await?
                        .into_iter()
                        .collect();
                let listed: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
                let gone: Vec<String> = indexed
                    .iter()
                    .filter(|key| !listed.contains(key.as_str()))
                    .cloned()
                    .collect();
                removed += index::remove(&mut *tx, &gone).await?;
                let missing = keyed(
                    objects
                        .into_iter()
                        .filter(|o| !indexed.contains(&o.key))
                        .collect(),
                );
                self.record_failures(&missing.iter().map(|(key, _)| key).collect::<Vec<_>>())
                    .await?;
                added += index::insert(&mut *tx, &missing).await?;
                tx.commit().await?;
                match next {
                    Some(token) => {
                        page_token = Some(token);
                        after = through;
                    }
                    None => break,
                }
            }
            sqlx::query(
                "INSERT INTO read_models.processed_queue_cursors (prefix, reconciled_at) \
                 VALUES ($1, now()) ON CONFLICT (prefix) DO UPDATE SET reconciled_at = now()",
            )
            .bind(&prefix)
            .execute(self.pool)
            .await?;
        }
        if added + removed > 0 {
            tracing::info!(added, removed, "reconciled the processed queue's index");
        }
        Ok((added, removed))
    }

    /// Every active prefix (three per environment) with the last key indexed there.
    async fn cursors(&self) -> sqlx::Result<Vec<(String, Option<String>)>> {
        let environments: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT organization_id, id FROM read_models.environments ORDER BY organization_id, id",
        )
        .fetch_all(self.pool)
        .await?;
        let prefixes: Vec<String> = environments
            .iter()
            .flat_map(|(organization, environment)| {
                MessageStatus::ALL.map(|status| prefix(*organization, *environment, status))
            })
            .collect();
        let cursors: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT prefix, last_key FROM read_models.processed_queue_cursors WHERE prefix = ANY($1)",
        )
        .bind(&prefixes)
        .fetch_all(self.pool)
        .await?;
        let cursors: std::collections::HashMap<String, Option<String>> =
            cursors.into_iter().collect();
        Ok(prefixes
            .into_iter()
            .map(|prefix| {
                let cursor = cursors.get(&prefix).cloned().flatten();
                (prefix, cursor)
            })
            .collect())
    }
}

/// The listed objects whose keys are keys of the queue; others are skipped (and counted).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keyed(objects: Vec<Listed>) -> Vec<(MessageKey, Listed)> {
    let listed = objects.len();
    let keyed: Vec<(MessageKey, Listed)> = objects
        .into_iter()
        .filter_map(|object| Some((MessageKey::parse(&object.key)?, object)))
        .collect();
    let skipped = (listed - keyed.len()) as u64;
    if skipped > 0 {
        metrics::counter!("processed_queue_skipped_keys_total").increment(skipped);
    }
    keyed
}
