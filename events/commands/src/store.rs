//! The write side of the event log: loading aggregates (from their latest snapshot), the heads of
//! streams a write refers to, and committing a [`WriteSet`], everything one command decided, in one
//! statement. Only the executor (`crate::executor`) commits; reads of the log are `event_log`'s.
//!
//! Versions. Every append states the stream version it expects, read before the appending transaction
//! began: that is what keeps each stream's events in order in the log's gap-free reading order
//! (`event_log`'s module docs). A write that finds another version loses the race
//! ([`StoreError::Conflict`]), and the executor runs its command again.
//!
//! Writes. Everything one command decided (the streams it depends on, name claims, references, its
//! events, the response kept under its idempotency key, what its events imply outside the log:
//! `crate::lookups`) is gathered in a [`WriteSet`] and committed by one call of the `append_write` SQL
//! function, which checks and applies it all or raises. One round trip per command, whatever it
//! touches. The function was created by migration `0003` and restated by `0007`, `0009`, `0013` and `0016`:
//! the current one is in `schemas/migrations/0016_lean_append.sql`.
//!
//! Group commit. Commits go through one committer task per store. Whenever one of its
//! [`GROUPS_IN_FLIGHT`] slots is free, it takes every write waiting (up to [`GROUP_MAX`]) and appends
//! them in one transaction with `append_writes`, each in a subtransaction of its own, so that one round
//! trip and one flush to disk serve them all, and each is still answered with its own position or its
//! own error. A write waits for a later group when it writes a stream another write of the group
//! writes or depends on, so that a group never holds two writes that decide about one stream. A lone
//! write is committed by `append_write` directly. Several groups are in flight at once, so that a write
//! waiting for a lock (a deletion waiting for the writes that depend on what it deletes) holds back
//! only its own group; two groups that end up waiting for each other are a deadlock PostgreSQL breaks
//! by failing one, whose writes then lose the race and run again.
//!
//! Wake-ups. After a commit the store sends `NOTIFY` so that followers wake at once. It is sent from a
//! background task, coalesced, outside the appending transaction: PostgreSQL serialises the commits of
//! notifying transactions on a global lock, which would undo group commit.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{Aggregate, EventMetadata, Loaded, LogPosition, NewEvent, Permission, RecordedEvent};
use event_log::personal::PersonalKey;
use event_log::{APPENDED_CHANNEL, COLUMNS};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{PgExecutor, Row};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use uuid::Uuid;

use crate::lookups::{AccessChanges, Lookups};

/// A stream gets a snapshot once this many events have to be folded on top of the last one.
const SNAPSHOT_EVERY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is not at the expected version")]
    Conflict { stream: String },
    #[error("the name is already taken in {scope}")]
    NameTaken { scope: String, claimant: Claimant },
    #[error("still referenced by {sources:?}")]
    Referenced { sources: Vec<String> },
    #[error("the idempotency key was used by another request")]
    IdempotencyKeyUsed,
    #[error("decoding an event of stream {stream}")]
    Decode {
        stream: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: i64,
    /// The log position of the last appended event: the write's consistency token.
    pub position: LogPosition,
}

/// The most writes committed together (a transaction with more than 64 subtransactions would make
/// every snapshot taken meanwhile dearer).
pub const GROUP_MAX: usize = 32;

/// Groups committing at once, each on a connection of its own.
pub const GROUPS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub(crate) struct Store {
    pool: PgPool,
    committer: mpsc::UnboundedSender<Pending>,
}

/// A write waiting for the committer, and where its answer goes.
struct Pending {
    write: WriteSet,
    answer: oneshot::Sender<Result<Appended, StoreError>>,
}

impl Store {
    /// Creates the store and spawns its committer and notifier tasks on the current Tokio runtime.
    pub fn new(pool: PgPool) -> Self {
        let appended = Arc::new(Notify::new());
        tokio::spawn(notify_followers(pool.clone(), appended.clone()));
        let (committer, queue) = mpsc::unbounded_channel();
        tokio::spawn(commit_groups(pool.clone(), queue, appended));
        Store { pool, committer }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Commits a write set, with whatever other writes are waiting (module docs).
    pub(crate) async fn commit(&self, write: WriteSet) -> Result<Appended, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.committer
            .send(Pending { write, answer })
            .map_err(|_| committer_gone())?;
        answered.await.map_err(|_| committer_gone())?
    }

    /// Folds an aggregate from its latest snapshot and the events after it, read in one statement
    /// (so in one snapshot of the database: the tail always starts right after the snapshot read).
    pub async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, StoreError> {
        let stream_id = A::stream_id(id);
        // One row per event after the snapshot (or one row of NULL event columns when there is
        // none); the first row also carries the snapshot, the others do not repeat it.
        let sql = format!(
            "SELECT s.version AS snapshot_version, \
                    CASE WHEN e.stream_version IS NULL OR e.stream_version = s.version + 1 THEN s.state END AS snapshot_state, \
                    e.* \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN snapshots s ON s.stream_id = $1 AND s.schema_version = $2 \
             LEFT JOIN LATERAL ( \
                 SELECT {COLUMNS} FROM events \
                 WHERE stream_id = $1 AND stream_version > COALESCE(s.version, 0) ORDER BY stream_version \
             ) e ON true \
             ORDER BY e.stream_version"
        );
        let rows = sqlx::query(&sql)
            .bind(&stream_id)
            .bind(A::SNAPSHOT_SCHEMA)
            .fetch_all(&self.pool)
            .await?;
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
        };
        let mut tail = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: Option<sqlx::types::Json<A>> = row.try_get("snapshot_state")?;
            if let Some(sqlx::types::Json(state)) = state {
                loaded = Loaded {
                    state,
                    version: row.try_get("snapshot_version")?,
                };
            }
            if row.try_get::<Option<i64>, _>("global_position")?.is_some() {
                tail.push(event_log::decode(row)?);
            }
        }
        fold(&mut loaded, &tail)?;
        if A::SNAPSHOTS && tail.len() >= SNAPSHOT_EVERY {
            self.save_snapshot(&stream_id, &loaded).await?;
        }
        Ok(loaded)
    }

    async fn save_snapshot<A: Aggregate>(
        &self,
        stream_id: &str,
        loaded: &Loaded<A>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, schema_version, state) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, \
               schema_version = EXCLUDED.schema_version, state = EXCLUDED.state \
             WHERE snapshots.version < EXCLUDED.version OR snapshots.schema_version <> EXCLUDED.schema_version",
        )
        .bind(stream_id)
        .bind(loaded.version)
        .bind(A::SNAPSHOT_SCHEMA)
        .bind(sqlx::types::Json(&loaded.state))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key that seals the personal data of `stream_id` (a user stream), created on first use. Two
    /// writers creating it at once keep the first one stored and both seal with that one.
    pub async fn personal_key(&self, stream_id: &str) -> Result<PersonalKey, StoreError> {
        sqlx::query(
            "INSERT INTO personal_data_keys (stream_id, key_id, key) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id) DO NOTHING",
        )
        .bind(stream_id)
        .bind(Uuid::new_v4())
        .bind(PersonalKey::generate())
        .execute(&self.pool)
        .await?;
        let (id, key): (Uuid, Vec<u8>) =
            sqlx::query_as("SELECT key_id, key FROM personal_data_keys WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_one(&self.pool)
                .await?;
        PersonalKey::new(id, &key).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol(format!(
                "the personal data key of {stream_id} is not 32 bytes"
            )))
        })
    }
}

fn fold<A: Aggregate>(loaded: &mut Loaded<A>, events: &[RecordedEvent]) -> Result<(), StoreError> {
    for event in events {
        let decoded: A::Event = event.decode().map_err(|source| StoreError::Decode {
            stream: event.stream_id.clone(),
            source,
        })?;
        loaded.state.apply(&decoded, event.recorded_at);
        loaded.version = event.stream_version;
    }
    Ok(())
}

/// How long to wait before trying a write again after losing the race for a stream: growing with the
/// attempt up to 16 ms, plus a random part, so that writers that collided spread apart instead of
/// colliding again in step.
pub(crate) fn retry_backoff(attempt: u32) -> std::time::Duration {
    let base = 1u64 << attempt.min(5);
    std::time::Duration::from_micros(base * 500 + rand::random::<u64>() % 1_000)
}

/// What a write needs to know of a stream it refers to, read without folding it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StreamHead {
    pub stream_id: String,
    pub version: i64,
    /// Whether the stream's last event is not a deletion.
    pub live: bool,
    /// The `organizationId` its first event recorded (`None` for organizations themselves and for
    /// platform-wide resources).
    pub organization_id: Option<Uuid>,
    /// The latest `name` any of its events recorded.
    pub name: Option<String>,
}

/// The heads of `streams` that exist, in one statement (so in one snapshot). It relies on conventions
/// every aggregate here follows: a stream's first event carries its `organizationId` if it has one,
/// events that set a name carry it as `name`, and deletion is the event type `<aggregate>.deleted`.
pub async fn stream_heads<'e>(
    executor: impl PgExecutor<'e>,
    streams: &[String],
) -> Result<Vec<StreamHead>, StoreError> {
    Ok(sqlx::query_as::<_, StreamHead>(
        "SELECT s.stream_id, s.version, last.event_type NOT LIKE '%.deleted' AS live, \
                (first.data->>'organizationId')::uuid AS organization_id, \
                (SELECT n.data->>'name' FROM events n WHERE n.stream_id = s.stream_id AND n.data ? 'name' \
                 ORDER BY n.stream_version DESC LIMIT 1) AS name \
         FROM streams s \
         JOIN events first ON first.stream_id = s.stream_id AND first.stream_version = 1 \
         JOIN events last ON last.stream_id = s.stream_id AND last.stream_version = s.version \
         WHERE s.stream_id = ANY($1)",
    )
    .bind(streams)
    .fetch_all(executor)
    .await?)
}

fn committer_gone() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "the committer stopped (the runtime is shutting down)".into(),
    ))
}

/// The committer (module docs): forms groups from the waiting writes, in arrival order, and commits
/// each in a task of its own as soon as a slot is free.
async fn commit_groups(
    pool: PgPool,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    appended: Arc<Notify>,
) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(pending) => waiting.push_back(pending),
                None => return,
            }
        }
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the committer's semaphore is never closed");
        while let Ok(pending) = queue.try_recv() {
            waiting.push_back(pending);
        }
        let group = next_group(&mut waiting);
        let (pool, appended) = (pool.clone(), appended.clone());
        tokio::spawn(async move {
            commit_group(&pool, group, &appended).await;
            drop(slot);
        });
    }
}

/// Commits `group` and answers each of its writes.
async fn commit_group(pool: &PgPool, group: Vec<Pending>, appended: &Notify) {
    let writes: Vec<&WriteSet> = group.iter().map(|p| &p.write).collect();
    let results = match writes.as_slice() {
        [write] => vec![commit_in(pool, write).await],
        writes => commit_together(pool, writes).await,
    };
    if results.iter().any(Result::is_ok) {
        appended.notify_one();
    }
    for (pending, result) in group.into_iter().zip(results) {
        // A caller that went away no longer needs its answer; its write stands.
        let _ = pending.answer.send(result);
    }
}

/// Takes the next group from `waiting`: in arrival order, up to [`GROUP_MAX`] writes, leaving for a
/// later group each write whose stream another write of the group writes or depends on, or that
/// depends on a stream the group writes.
fn next_group(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut group: Vec<Pending> = Vec::new();
    let mut later = VecDeque::new();
    while let Some(pending) = waiting.pop_front() {
        if group.len() == GROUP_MAX {
            later.push_back(pending);
            continue;
        }
        let overlaps = group.iter().any(|other| {
            pending.write.touches(&other.write.stream) || other.write.touches(&pending.write.stream)
        });
        if overlaps {
            later.push_back(pending);
        } else {
            group.push(pending);
        }
    }
    *waiting = later;
    group
}

/// One row of `append_writes`: where a write landed, or the error it raised.
#[derive(sqlx::FromRow)]
struct GroupRow {
    version: Option<i64>,
    transaction_id: Option<i64>,
    global_position: Option<i64>,
    error_code: Option<String>,
    error_constraint: Option<String>,
    error_detail: Option<String>,
    error_message: Option<String>,
}

/// Commits `writes` in one transaction (module docs); one result per write, in order.
async fn commit_together(pool: &PgPool, writes: &[&WriteSet]) -> Vec<Result<Appended, StoreError>> {
    let rows: Result<Vec<GroupRow>, _> = sqlx::query_as(
        "SELECT version, transaction_id, global_position, error_code, error_constraint, error_detail, error_message \
         FROM append_writes($1)",
    )
    .bind(sqlx::types::Json(writes))
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) if rows.len() == writes.len() => rows,
        Ok(rows) => {
            let error = format!(
                "append_writes answered {} rows for {} writes",
                rows.len(),
                writes.len()
            );
            return writes
                .iter()
                .map(|_| Err(StoreError::Database(sqlx::Error::Protocol(error.clone()))))
                .collect();
        }
        Err(error) => {
            // Nothing of the group committed: each write gets the error, as if it had been alone.
            let code = error
                .as_database_error()
                .and_then(|db| db.code().map(|c| c.into_owned()))
                .unwrap_or_default();
            return writes
                .iter()
                .map(|write| {
                    Err(write.refusal(&code, None, "").unwrap_or_else(|| {
                        StoreError::Database(sqlx::Error::Protocol(error.to_string()))
                    }))
                })
                .collect();
        }
    };
    writes
        .iter()
        .zip(rows)
        .map(
            |(write, row)| match (row.version, row.transaction_id, row.global_position) {
                (Some(version), Some(transaction_id), Some(global_position)) => Ok(Appended {
                    version,
                    position: LogPosition {
                        transaction_id,
                        global_position,
                    },
                }),
                _ => {
                    let code = row.error_code.unwrap_or_default();
                    let detail = row.error_detail.unwrap_or_default();
                    Err(write
                        .refusal(&code, row.error_constraint.as_deref(), &detail)
                        .unwrap_or_else(|| {
                            StoreError::Database(sqlx::Error::Protocol(format!(
                                "{code}: {}",
                                row.error_message.unwrap_or_default()
                            )))
                        }))
                }
            },
        )
        .collect()
}

async fn notify_followers(pool: PgPool, appended: Arc<Notify>) {
    loop {
        // `Notify` keeps one permit, so any number of commits during the NOTIFY below cost one more.
        appended.notified().await;
        notify(&pool).await;
    }
}

/// Tells the log's followers that new events may be readable.
pub(crate) async fn notify(pool: &PgPool) {
    if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
        .bind(APPENDED_CHANNEL)
        .execute(pool)
        .await
    {
        tracing::warn!(%error, "could not notify followers; they will find the events by polling");
    }
}

/// Commits a write set inside the caller's transaction (tests of the log's order hold one open on
/// purpose; see the crate's `test-support` feature).
pub(crate) async fn commit_in<'e>(
    executor: impl PgExecutor<'e>,
    write: &WriteSet,
) -> Result<Appended, StoreError> {
    let (version, transaction_id, global_position): (i64, i64, i64) =
        sqlx::query_as("SELECT version, transaction_id, global_position FROM append_write($1)")
            .bind(sqlx::types::Json(write))
            .fetch_one(executor)
            .await
            .map_err(|error| write.error(error))?;
    Ok(Appended {
        version,
        position: LogPosition {
            transaction_id,
            global_position,
        },
    })
}

/// Everything one command writes, committed atomically by the executor: events appended to
/// one stream at an expected version, plus the bookkeeping that must commit with them. Nothing is
/// written until then, and a failed check writes nothing at all.
#[derive(Debug, Clone, Serialize)]
pub struct WriteSet {
    stream: String,
    /// The version the stream must be at (0: must not exist), read before the write began.
    expected: i64,
    events: Vec<EventRow>,
    // What is empty is left out, and `append_write` skips the statements it would have run for
    // nothing (migration 0016).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    requires: Vec<Dependency>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    claims: Vec<NameClaim>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    releases: Vec<NameClaim>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references_added: Vec<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references_removed: Vec<Reference>,
    /// A stream that must have no references left (the one being deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    unreferenced: Option<String>,
    /// What the events imply outside the log (access lookups, destroyed keys), derived from them.
    #[serde(skip_serializing_if = "Lookups::is_empty")]
    lookups: Lookups,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<StoredResponse>,
}

#[derive(Debug, Clone, Serialize)]
struct EventRow {
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    data: Value,
    metadata: EventMetadata,
    recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
struct Dependency {
    stream: String,
    version: i64,
}

#[derive(Debug, Clone, Serialize)]
struct NameClaim {
    scope: String,
    name: String,
    stream: String,
    #[serde(skip)]
    claimant: Claimant,
}

/// Who claims a name, in words, for the answer when the name is taken: `resource` named `name`
/// already exists `within` (" in this organization", or "" for names unique platform-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimant {
    pub resource: String,
    pub name: String,
    pub within: String,
}

#[derive(Debug, Clone, Serialize)]
struct Reference {
    target: String,
    source: String,
}

/// A response to keep under an idempotency key; stored with the write's log position.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredResponse {
    pub caller: String,
    pub key: String,
    pub request_hash: String,
    pub status: i16,
    pub headers: Value,
    pub body: String,
    /// What the write was allowed to do; a replay asks it again before answering.
    pub permission: Option<Permission>,
}

impl WriteSet {
    /// Appends `events` to `stream`, which must be at `expected_version` (0: must not exist): a version
    /// read before this write (see the module docs).
    pub fn append(stream: &str, expected_version: i64, events: Vec<NewEvent>) -> Self {
        assert!(!events.is_empty(), "a write appends at least one event");
        let lookups = Lookups::of(stream, &events);
        WriteSet {
            stream: stream.to_owned(),
            expected: expected_version,
            events: events
                .into_iter()
                .map(|e| EventRow {
                    event_id: e.event_id,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    data: e.data,
                    metadata: e.metadata,
                    recorded_at: e.recorded_at,
                })
                .collect(),
            requires: Vec::new(),
            claims: Vec::new(),
            releases: Vec::new(),
            references_added: Vec::new(),
            references_removed: Vec::new(),
            unreferenced: None,
            lookups,
            response: None,
        }
    }

    /// The stream this write appends to.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// Whose access lookups this write changes (`crate::access`).
    pub(crate) fn access_changes(&self) -> AccessChanges {
        self.lookups.access_changes()
    }

    /// The stream version the write leaves behind.
    pub fn version_after(&self) -> i64 {
        self.expected + self.events.len() as i64
    }

    /// Requires another stream to be at `version` (0: not existing) when the write commits, without
    /// writing to it. A deletion of that stream ([`WriteSet::refuse_if_referenced`]) waits for this write.
    pub fn require_version(mut self, stream: &str, version: i64) -> Self {
        self.requires.push(Dependency {
            stream: stream.to_owned(),
            version,
        });
        self
    }

    /// Claims `name` (callers pass it case-folded) within `scope` for this write's stream; if another
    /// stream holds it, the write fails with [`StoreError::NameTaken`] naming `claimant`.
    pub fn claim_name(mut self, scope: &str, name: &str, claimant: Claimant) -> Self {
        let stream = self.stream.clone();
        self.claims.push(NameClaim {
            scope: scope.to_owned(),
            name: name.to_owned(),
            stream,
            claimant,
        });
        self
    }

    pub fn release_name(mut self, scope: &str, name: &str) -> Self {
        let stream = self.stream.clone();
        self.releases.push(NameClaim {
            scope: scope.to_owned(),
            name: name.to_owned(),
            stream,
            claimant: Claimant::default(),
        });
        self
    }

    /// Records that this write's stream refers to `target`.
    pub fn add_reference(mut self, target: &str) -> Self {
        let source = self.stream.clone();
        self.references_added.push(Reference {
            target: target.to_owned(),
            source,
        });
        self
    }

    pub fn remove_reference(mut self, target: &str) -> Self {
        let source = self.stream.clone();
        self.references_removed.push(Reference {
            target: target.to_owned(),
            source,
        });
        self
    }

    /// Refuses the write ([`StoreError::Referenced`]) while other streams still refer to this one.
    pub fn refuse_if_referenced(mut self) -> Self {
        self.unreferenced = Some(self.stream.clone());
        self
    }

    /// Seals the personal data of the write's user events (`event_log::personal`) under `key`. The access
    /// lookups were derived before, from the plaintext.
    pub fn seal_personal_data(mut self, key: &PersonalKey) -> Self {
        for event in &mut self.events {
            key.seal(&self.stream, &mut event.data);
        }
        self
    }

    /// Keeps `response` under its idempotency key, committed with the events.
    pub(crate) fn remember_response(mut self, response: StoredResponse) -> Self {
        self.response = Some(response);
        self
    }

    /// Whether this write writes `stream` or depends on it.
    fn touches(&self, stream: &str) -> bool {
        self.stream == stream
            || self.requires.iter().any(|d| d.stream == stream)
            || self.unreferenced.as_deref() == Some(stream)
    }

    /// Maps the errors `append_write` raises.
    fn error(&self, error: sqlx::Error) -> StoreError {
        let Some(db) = error.as_database_error() else {
            return StoreError::Database(error);
        };
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|e| e.detail())
            .unwrap_or_default()
            .to_owned();
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let constraint = db.constraint().map(str::to_owned);
        self.refusal(&code, constraint.as_deref(), &detail)
            .unwrap_or(StoreError::Database(error))
    }

    /// The refusal an error of `append_write` stands for (SQLSTATE `code`, the `constraint` it names
    /// and its `detail`), or `None` for an error that is not one.
    fn refusal(&self, code: &str, constraint: Option<&str>, detail: &str) -> Option<StoreError> {
        Some(match code {
            "ES001" => StoreError::Conflict {
                stream: detail.to_owned(),
            },
            "ES002" => StoreError::Referenced {
                sources: detail.split(',').map(str::to_owned).collect(),
            },
            "ES003" => StoreError::IdempotencyKeyUsed,
            // deadlock_detected, serialization_failure: a clash with another writer (in a group,
            // only this write's subtransaction is rolled back), so a lost race that runs again.
            "40P01" | "40001" => StoreError::Conflict {
                stream: self.stream.clone(),
            },
            // unique_violation
            "23505" if constraint == Some("name_claims_pkey") => {
                let claim = self.claims.first();
                StoreError::NameTaken {
                    scope: claim.map(|c| c.scope.clone()).unwrap_or_default(),
                    claimant: claim.map(|c| c.claimant.clone()).unwrap_or_default(),
                }
            }
            _ => return None,
        })
    }
}
