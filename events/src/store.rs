//! The event store: appends with an expected version, reads of one stream, and reads of the whole log
//! in an order that never skips a late commit.
//!
//! Ordering. Positions come from an identity column, handed out when a row is inserted, not when its
//! transaction commits: a reader that took `position > checkpoint` could see 11 commit before 10 and
//! lose 10 for ever. Every row therefore records its writing transaction's id, and [`read_log`] takes
//! only rows whose transaction is older than the oldest one still in flight (the snapshot's xmin),
//! ordered by `(transaction_id, global_position)`, in one statement and so in one snapshot. Anything
//! that commits later has a transaction id at or above that xmin and so sorts after everything read.
//!
//! Per-stream order follows as long as every append states the stream version it expects and that
//! version was read before the appending transaction began: a writer of version n+1 must have seen
//! version n committed before its own transaction id was assigned, so it sorts after it. That is why
//! [`AppendTx::append`] takes an exact version and [`ExpectedVersion::Any`] is resolved by reading the
//! current version first and retrying on conflict.
//!
//! Wake-ups. After a commit the store sends `NOTIFY` so that followers wake at once. It is sent from a
//! background task, coalesced, outside the appending transaction: PostgreSQL serialises the commits of
//! notifying transactions on a global lock, which would undo group commit. A lost notification costs a
//! follower one poll interval, never an event.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{PgConnection, PgExecutor, Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Loaded};
use crate::envelope::{LogPosition, NewEvent, RecordedEvent};

/// The channel followers `LISTEN` on; a notification means "new events may be readable".
pub const APPENDED_CHANNEL: &str = "events_appended";

/// A stream gets a snapshot once this many events have to be folded on top of the last one.
const SNAPSHOT_EVERY: usize = 64;

/// How many times [`EventStore::append`] with [`ExpectedVersion::Any`] retries a lost race.
const ANY_VERSION_ATTEMPTS: usize = 100;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schemas/migrations");

/// Applies every migration under `schemas/migrations`. Safe to call from several processes at once:
/// the migrator holds a PostgreSQL advisory lock while it works.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version.
    Exact(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is not at the expected version")]
    Conflict { stream: String },
    #[error("the name is already taken in {scope}")]
    NameTaken { scope: String },
    #[error("the transaction failed earlier and cannot be committed")]
    Aborted,
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

#[async_trait]
pub trait EventStore: Send + Sync {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError>;

    /// The stream's events after `after_version`, in version order.
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the whole log after `after`, in log order (see the module docs).
    async fn read_log(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;
}

#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    appended: Arc<Notify>,
}

impl PgEventStore {
    /// Creates the store and spawns its notifier task on the current Tokio runtime.
    pub fn new(pool: PgPool) -> Self {
        let appended = Arc::new(Notify::new());
        tokio::spawn(notify_followers(pool.clone(), appended.clone()));
        PgEventStore { pool, appended }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction in which one command's appends, name claims and references commit together.
    pub async fn begin(&self) -> Result<AppendTx, StoreError> {
        Ok(AppendTx {
            tx: self.pool.begin().await?,
            appended: self.appended.clone(),
            aborted: false,
        })
    }

    /// Folds an aggregate from its latest snapshot and the events after it.
    pub async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, StoreError> {
        let stream_id = A::stream_id(id);
        let tail = sqlx::query_as::<_, RecordedEvent>(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > \
             COALESCE((SELECT version FROM snapshots WHERE stream_id = $1 AND schema_version = $2), 0) \
             ORDER BY stream_version"
        ))
        .bind(&stream_id)
        .bind(A::SNAPSHOT_SCHEMA)
        .fetch_all(&self.pool)
        .await?;

        let base_version = tail.first().map_or(-1, |e| e.stream_version - 1);
        let mut loaded = if base_version == 0 {
            Loaded {
                state: A::default(),
                version: 0,
            }
        } else {
            // The tail starts after a snapshot, or is empty (no stream, or nothing since the snapshot).
            match self.snapshot::<A>(&stream_id).await? {
                Some(snapshot) if base_version < 0 || snapshot.version == base_version => snapshot,
                // A newer snapshot was written between the two reads: fold from the start instead.
                _ => return self.load_from_start::<A>(&stream_id).await,
            }
        };
        fold(&mut loaded, &tail)?;
        if tail.len() >= SNAPSHOT_EVERY {
            self.save_snapshot(&stream_id, &loaded).await?;
        }
        Ok(loaded)
    }

    async fn load_from_start<A: Aggregate>(
        &self,
        stream_id: &str,
    ) -> Result<Loaded<A>, StoreError> {
        let events = self.read_stream(stream_id, 0).await?;
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
        };
        fold(&mut loaded, &events)?;
        Ok(loaded)
    }

    async fn snapshot<A: Aggregate>(
        &self,
        stream_id: &str,
    ) -> Result<Option<Loaded<A>>, StoreError> {
        let row: Option<(i64, sqlx::types::Json<A>)> = sqlx::query_as(
            "SELECT version, state FROM snapshots WHERE stream_id = $1 AND schema_version = $2",
        )
        .bind(stream_id)
        .bind(A::SNAPSHOT_SCHEMA)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(version, state)| Loaded {
            state: state.0,
            version,
        }))
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

    async fn current_version(&self, stream_id: &str) -> Result<i64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(version.unwrap_or(0))
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

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let fixed = match expected {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(version) => Some(version),
            ExpectedVersion::Any => None,
        };
        for _ in 0..ANY_VERSION_ATTEMPTS {
            // For `Any`, the version is read before the transaction begins (see the module docs).
            let version = match fixed {
                Some(version) => version,
                None => self.current_version(stream_id).await?,
            };
            let mut tx = self.begin().await?;
            match tx.append(stream_id, version, events.clone()).await {
                Ok(appended) => {
                    tx.commit().await?;
                    return Ok(appended);
                }
                Err(StoreError::Conflict { .. }) if fixed.is_none() => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::Conflict {
            stream: stream_id.to_owned(),
        })
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as::<_, RecordedEvent>(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
        ))
        .bind(stream_id)
        .bind(after_version)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn read_log(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_log(&self.pool, after, limit).await
    }
}

const COLUMNS: &str =
    "global_position, transaction_id, stream_id, stream_version, event_id, event_type, \
                       schema_version, data, metadata, recorded_at";

/// Reads the log after `after` without ever skipping an event that commits later (module docs).
/// Works on any connection, so that a projection can read and apply in one transaction.
pub async fn read_log<'e>(
    executor: impl PgExecutor<'e>,
    after: LogPosition,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    Ok(sqlx::query_as::<_, RecordedEvent>(&format!(
        "SELECT {COLUMNS} FROM events \
         WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
           AND (transaction_id, global_position) > ($1, $2) \
         ORDER BY transaction_id, global_position \
         LIMIT $3"
    ))
    .bind(after.transaction_id)
    .bind(after.global_position)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// The position of the newest committed event: what a reader must reach to reflect every write that
/// completed before now. `LogPosition::START` for an empty log.
pub async fn log_head<'e>(executor: impl PgExecutor<'e>) -> Result<LogPosition, sqlx::Error> {
    let head: Option<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, global_position FROM events \
         ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(
        head.map_or(LogPosition::START, |(transaction_id, global_position)| {
            LogPosition {
                transaction_id,
                global_position,
            }
        }),
    )
}

/// A listener woken by [`APPENDED_CHANNEL`] notifications.
pub async fn listen_for_appends(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(APPENDED_CHANNEL).await?;
    Ok(listener)
}

async fn notify_followers(pool: PgPool, appended: Arc<Notify>) {
    loop {
        // `Notify` keeps one permit, so any number of commits during the NOTIFY below cost one more.
        appended.notified().await;
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(APPENDED_CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::warn!(%error, "could not notify followers; they will find the events by polling");
        }
    }
}

/// One command's writes. Dropping it without [`AppendTx::commit`] rolls everything back.
pub struct AppendTx {
    tx: Transaction<'static, Postgres>,
    appended: Arc<Notify>,
    aborted: bool,
}

impl AppendTx {
    /// Appends `events` to a stream that must be at `expected_version` (0: must not exist), a version
    /// read before this transaction began. Takes the stream's row lock until commit.
    pub async fn append(
        &mut self,
        stream_id: &str,
        expected_version: i64,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        assert!(!events.is_empty(), "an append needs at least one event");
        let count = events.len() as i64;
        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut schema_versions = Vec::with_capacity(events.len());
        let mut data = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        let mut times: Vec<DateTime<Utc>> = Vec::with_capacity(events.len());
        for event in events {
            ids.push(event.event_id);
            types.push(event.event_type);
            schema_versions.push(event.schema_version);
            data.push(event.data);
            // Metadata is plain strings and ids; serialising it cannot fail.
            metadata.push(serde_json::to_value(&event.metadata).expect("metadata serialises"));
            times.push(event.recorded_at);
        }
        // The stream row's upsert moves the version and holds the row lock that serialises writers of
        // this stream; events are inserted only when the version it replaced is the expected one. When
        // it is not, nothing is inserted and the transaction is marked aborted, so the bumped version
        // can never be committed.
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "WITH stream AS ( \
                 INSERT INTO streams (stream_id, version) VALUES ($1, $3) \
                 ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + $3 \
                 RETURNING version - $3 AS previous \
             ) \
             INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
             SELECT $1, stream.previous + e.ord, e.event_id, e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at \
             FROM stream, UNNEST($4::uuid[], $5::text[], $6::int[], $7::jsonb[], $8::jsonb[], $9::timestamptz[]) \
                  WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata, recorded_at, ord) \
             WHERE stream.previous = $2 \
             RETURNING stream_version, transaction_id, global_position",
        )
        .bind(stream_id)
        .bind(expected_version)
        .bind(count)
        .bind(&ids)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&data)
        .bind(&metadata)
        .bind(&times)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(|e| match self.fail(e) {
            StoreError::Conflict { .. } => StoreError::Conflict {
                stream: stream_id.to_owned(),
            },
            other => other,
        })?;

        let Some(&(version, transaction_id, global_position)) =
            rows.iter().max_by_key(|(version, _, _)| *version)
        else {
            self.aborted = true;
            return Err(StoreError::Conflict {
                stream: stream_id.to_owned(),
            });
        };
        Ok(Appended {
            version,
            position: LogPosition {
                transaction_id,
                global_position,
            },
        })
    }

    /// Makes this transaction depend on another stream staying at `version` (0: not existing) without
    /// writing to it. It holds the stream's advisory lock in shared mode until commit: many dependents
    /// run at once, while [`AppendTx::references_to`] (taken by whoever deletes that stream) waits for
    /// them. A shared in-memory lock rather than `FOR SHARE` on the stream row, because many writers
    /// depending on one hot stream (environments of one organization) would otherwise queue on that row.
    pub async fn require_version(&mut self, stream_id: &str, version: i64) -> Result<(), StoreError> {
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT s.version FROM (SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))) l \
             LEFT JOIN streams s ON s.stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| self.fail(e))?;
        if current.unwrap_or(0) != version {
            self.aborted = true;
            return Err(StoreError::Conflict {
                stream: stream_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Claims `name` (compared as given; callers pass a case-folded key) within `scope` for a stream.
    pub async fn claim_name(
        &mut self,
        scope: &str,
        name: &str,
        stream_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO name_claims (scope, name, stream_id) VALUES ($1, $2, $3)")
            .bind(scope)
            .bind(name)
            .bind(stream_id)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| match self.fail(e) {
                StoreError::NameTaken { .. } => StoreError::NameTaken {
                    scope: scope.to_owned(),
                },
                other => other,
            })?;
        Ok(())
    }

    pub async fn release_name(
        &mut self,
        scope: &str,
        name: &str,
        stream_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM name_claims WHERE scope = $1 AND name = $2 AND stream_id = $3")
            .bind(scope)
            .bind(name)
            .bind(stream_id)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Records that `source` refers to `target`.
    pub async fn add_reference(&mut self, target: &str, source: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO stream_references (target, source) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(target)
        .bind(source)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub async fn remove_reference(&mut self, target: &str, source: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM stream_references WHERE target = $1 AND source = $2")
            .bind(target)
            .bind(source)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Up to `limit` streams that refer to `target`. Takes `target`'s advisory lock exclusively first,
    /// so it waits for every transaction that [`AppendTx::require_version`]d `target` and is still in
    /// flight, and sees their references. Call it after appending to `target`: the new version then
    /// makes any later dependent fail its version check.
    pub async fn references_to(&mut self, target: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(target)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.fail(e))?;
        sqlx::query_scalar(
            "SELECT source FROM stream_references WHERE target = $1 ORDER BY source LIMIT $2",
        )
        .bind(target)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(|e| self.fail(e))
    }

    /// The transaction's connection, for writes of the caller's own that must commit with the events.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        if self.aborted {
            return Err(StoreError::Aborted);
        }
        self.tx.commit().await?;
        self.appended.notify_one();
        Ok(())
    }

    /// Maps a database error to a store error and marks the transaction unusable: PostgreSQL has
    /// aborted it anyway.
    fn fail(&mut self, error: sqlx::Error) -> StoreError {
        self.aborted = true;
        if let Some(db) = error.as_database_error() {
            if db.is_unique_violation() {
                match db.constraint() {
                    Some("name_claims_pkey") => {
                        return StoreError::NameTaken {
                            scope: String::new(),
                        }
                    }
                    Some("events_stream_version_key") => {
                        return StoreError::Conflict {
                            stream: String::new(),
                        }
                    }
                    _ => {}
                }
            }
        }
        StoreError::Database(error)
    }
}
