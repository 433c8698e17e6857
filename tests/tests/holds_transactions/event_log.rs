//! The event store against a real PostgreSQL: ordering under concurrency, expected versions, and
//! snapshots.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use commands::testing::{commit, commit_in};
use commands::{Appended, Executor, StoreError, WriteSet};
use domain::organization::{Organization, OrganizationEvent};
use domain::{ActorRef, Aggregate, EventMetadata, Loaded, NewEvent, RecordedEvent, Role};
use event_log::{log_head, read_log};
use serde::Serialize;
use sqlx::PgPool;
use tests::TestDb;
use uuid::Uuid;

/// The version an append expects its stream to be at.
#[derive(Debug, Clone, Copy)]
enum ExpectedVersion {
    /// Whatever it is (read before each try, again after a lost race).
    Any,
    NoStream,
    Exact(i64),
}

/// The store's own operations as these tests drive them: direct commits (`commands::testing`),
/// loads through the executor, reads through `event_log`.
#[derive(Clone)]
struct Store {
    pool: PgPool,
    executor: Executor,
}

impl Store {
    fn new(pool: PgPool) -> Self {
        Store {
            executor: Executor::new(pool.clone()),
            pool,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        match expected {
            ExpectedVersion::Any => commands::testing::append(&self.pool, stream, events).await,
            ExpectedVersion::NoStream => self.commit(WriteSet::append(stream, 0, events)).await,
            ExpectedVersion::Exact(v) => self.commit(WriteSet::append(stream, v, events)).await,
        }
    }

    async fn commit(&self, write: WriteSet) -> Result<Appended, StoreError> {
        commit(&self.pool, write).await
    }

    async fn read_stream(&self, stream: &str, after: i64) -> sqlx::Result<Vec<RecordedEvent>> {
        event_log::read_stream(&self.pool, stream, after).await
    }

    async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, StoreError> {
        self.executor.load(id).await
    }
}

#[derive(Serialize)]
#[serde(tag = "type", content = "data")]
enum TestEvent {
    #[serde(rename = "test.happened")]
    Happened { writer: usize, n: usize },
}

fn metadata() -> EventMetadata {
    EventMetadata {
        actor: ActorRef {
            id: "tester".into(),
            role: Some(Role::System),
        },
        organization_id: None,
        request_id: "req".into(),
        correlation_id: "req".into(),
        causation_id: None,
        client_ip: None,
        user_agent: None,
        channel: None,
    }
}

fn events(writer: usize, from: usize, count: usize) -> Vec<NewEvent> {
    (from..from + count)
        .map(|n| NewEvent::new(&TestEvent::Happened { writer, n }, metadata(), Utc::now()))
        .collect()
}

async fn stream_version(store: &Store, stream: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT version FROM streams WHERE stream_id = $1")
        .bind(stream)
        .fetch_optional(store.pool())
        .await
        .unwrap()
        .unwrap_or(0)
}

const WRITERS: usize = 64;

/// Counts the events after a position: the tests below start from the log as the migrations leave it
/// (they record the built-in workflow entity types).
const AFTER_MIGRATIONS_COUNT: &str =
    "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1, $2)";
const EVENTS_PER_WRITER: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_reader_sees_every_committed_event_exactly_once_in_log_order() {
    let db = TestDb::create_with_pool_size(WRITERS as u32 + 8)
        .await
        .unwrap();
    let store = Store::new(db.pool.clone());
    let writers_done = Arc::new(AtomicBool::new(false));
    let baseline = log_head(&db.pool).await.unwrap();

    let reader = {
        let pool = db.pool.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut position = baseline;
            let mut seen = Vec::new();
            let mut expected_total = None;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let batch = read_log(&pool, position, 1_000).await.unwrap();
                for event in &batch {
                    assert!(
                        event.position() > position,
                        "{:?} came after {position:?}",
                        event.position()
                    );
                    position = event.position();
                    seen.push((
                        event.event_id,
                        event.stream_id.clone(),
                        event.stream_version,
                    ));
                }
                if batch.is_empty() {
                    if expected_total.is_none() && writers_done.load(Ordering::SeqCst) {
                        let total: i64 = sqlx::query_scalar(AFTER_MIGRATIONS_COUNT)
                            .bind(baseline.transaction_id)
                            .bind(baseline.global_position)
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                        expected_total = Some(total as usize);
                    }
                    if expected_total.is_some_and(|total| seen.len() >= total) {
                        return seen;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the reader stalled at {position:?} with {} events",
                        seen.len()
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let own = format!("writer-{writer}");
            let mut written = 0;
            let mut round = 0;
            while written < EVENTS_PER_WRITER {
                round += 1;
                let count = (1 + round % 4).min(EVENTS_PER_WRITER - written);
                if round % 40 == 7 {
                    // A deliberately slow transaction: its positions are handed out now, but it commits
                    // only after many faster writers have committed later positions.
                    let version = stream_version(&store, &own).await;
                    let mut tx = store.pool().begin().await.unwrap();
                    let write = WriteSet::append(&own, version, events(writer, written, count));
                    commit_in(&mut *tx, &write).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20 + (writer as u64 * 7) % 60)).await;
                    tx.commit().await.unwrap();
                } else {
                    // A third of the appends race for a handful of shared streams.
                    let stream = if round % 3 == 0 {
                        format!("shared-{}", round % 4)
                    } else {
                        own.clone()
                    };
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            events(writer, written, count),
                        )
                        .await
                        .unwrap();
                }
                written += count;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    assert_eq!(seen.len(), WRITERS * EVENTS_PER_WRITER);
    let ids: HashSet<Uuid> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was delivered twice");
    let stored: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
        "SELECT event_id FROM events WHERE (transaction_id, global_position) > ($1, $2)",
    )
    .bind(baseline.transaction_id)
    .bind(baseline.global_position)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(ids, stored, "the reader missed committed events");
    // Within each stream, the log order is the version order with no gaps.
    let mut versions: HashMap<&str, i64> = HashMap::new();
    for (_, stream, version) in &seen {
        let last = versions.entry(stream).or_insert(0);
        assert_eq!(*version, *last + 1, "stream {stream} out of order");
        *last = *version;
    }
}

#[tokio::test]
async fn the_reader_does_not_pass_a_transaction_that_is_still_in_flight() {
    let db = TestDb::create().await.unwrap();
    let store = Store::new(db.pool.clone());
    let baseline = log_head(&db.pool).await.unwrap();
    let mut slow = db.pool.begin().await.unwrap();
    let slow_appended = commit_in(&mut *slow, &WriteSet::append("slow", 0, events(0, 0, 1)))
        .await
        .unwrap();
    let fast_appended = store
        .append("fast", ExpectedVersion::NoStream, events(1, 0, 1))
        .await
        .unwrap();
    assert!(fast_appended.position.global_position > slow_appended.position.global_position);

    // The fast event has committed, but reading it now would move a checkpoint past the slow one.
    assert!(read_log(&db.pool, baseline, 100).await.unwrap().is_empty());

    slow.commit().await.unwrap();
    // Transaction ids are cluster-wide: a transaction of another test, in another database, may still
    // hold the horizon back for a moment. Whenever the reader does pass, it must take both, in order.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let read = loop {
        let read = read_log(&db.pool, baseline, 100).await.unwrap();
        if read.len() == 2 || std::time::Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let streams: Vec<&str> = read.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["slow", "fast"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_appends_at_one_expected_version_exactly_one_wins() {
    let db = TestDb::create_with_pool_size(40).await.unwrap();
    let store = Store::new(db.pool.clone());
    store
        .append("contested", ExpectedVersion::NoStream, events(0, 0, 1))
        .await
        .unwrap();

    for expected in [ExpectedVersion::Exact(1)] {
        let attempts: Vec<_> = (0..32)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append("contested", expected, events(writer, 0, 2))
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(appended) => {
                    won += 1;
                    assert_eq!(appended.version, 3);
                }
                Err(StoreError::Conflict { stream }) => assert_eq!(stream, "contested"),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(won, 1);
    }
    assert_eq!(store.read_stream("contested", 0).await.unwrap().len(), 3);
    assert_eq!(stream_version(&store, "contested").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_creations_of_one_stream_exactly_one_wins() {
    let db = TestDb::create_with_pool_size(40).await.unwrap();
    let store = Store::new(db.pool.clone());
    let attempts: Vec<_> = (0..32)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append("new", ExpectedVersion::NoStream, events(writer, 0, 1))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        if attempt.await.unwrap().is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.read_stream("new", 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_expected_version_appends_nothing() {
    let db = TestDb::create().await.unwrap();
    let store = Store::new(db.pool.clone());
    store
        .append("s", ExpectedVersion::NoStream, events(0, 0, 1))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exact(5),
        ExpectedVersion::NoStream,
    ] {
        let result = store.append("s", expected, events(0, 1, 3)).await;
        assert!(
            matches!(result, Err(StoreError::Conflict { .. })),
            "{expected:?}: {result:?}"
        );
    }
    let missing = store
        .append("missing", ExpectedVersion::Exact(1), events(0, 0, 1))
        .await;
    assert!(matches!(missing, Err(StoreError::Conflict { .. })));
    assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 1);
    assert_eq!(stream_version(&store, "s").await, 1);
    assert_eq!(stream_version(&store, "missing").await, 0);

    // A write that fails its version check leaves none of its other writes behind either.
    let write = WriteSet::append("s", 7, events(0, 0, 1))
        .claim_name("scope", "name", Default::default())
        .add_reference("target");
    assert!(matches!(
        store.commit(write).await,
        Err(StoreError::Conflict { .. })
    ));
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM name_claims WHERE scope = 'scope'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let references: i64 = sqlx::query_scalar("SELECT count(*) FROM stream_references")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((claims, references), (0, 0));
    assert_eq!(stream_version(&store, "s").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_with_any_version_from_many_writers_use_every_version_once() {
    let db = TestDb::create_with_pool_size(40).await.unwrap();
    let store = Store::new(db.pool.clone());
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    store
                        .append("busy", ExpectedVersion::Any, events(writer, n, 1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let versions: Vec<i64> = store
        .read_stream("busy", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=160).collect::<Vec<_>>());
}

#[tokio::test]
async fn loading_a_long_stream_uses_a_snapshot_and_folds_the_same_state() {
    let db = TestDb::create().await.unwrap();
    let store = Store::new(db.pool.clone());
    let id = Uuid::now_v7();
    let stream = Organization::stream_id(id);
    let created = OrganizationEvent::Created {
        id,
        name: "v0".into(),
        description: None,
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&created, metadata(), Utc::now())],
        )
        .await
        .unwrap();
    for round in 1..=150 {
        let renamed = OrganizationEvent::Updated {
            name: Some(format!("v{round}")),
            description: None,
        };
        store
            .append(
                &stream,
                ExpectedVersion::Exact(round),
                vec![NewEvent::new(&renamed, metadata(), Utc::now())],
            )
            .await
            .unwrap();
        if round == 100 {
            store.load::<Organization>(id).await.unwrap();
            // Nothing after the snapshot: the state is the snapshot's alone.
            let at_snapshot = store.load::<Organization>(id).await.unwrap();
            assert_eq!(at_snapshot.version, 101);
            assert_eq!(at_snapshot.state.live.unwrap().name, "v100");
        }
    }
    let snapshot_version: i64 =
        sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
            .bind(&stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(snapshot_version, 101);

    let loaded = store.load::<Organization>(id).await.unwrap();
    let mut folded = Organization::default();
    for event in store.read_stream(&stream, 0).await.unwrap() {
        folded.apply(&event.decode().unwrap(), event.recorded_at);
    }
    assert_eq!(loaded.version, 151);
    assert_eq!(loaded.state, folded);
    assert_eq!(loaded.state.live.unwrap().name, "v150");

    // A snapshot of another shape of the state is not used: the stream is folded from its start.
    sqlx::query("UPDATE snapshots SET schema_version = schema_version + 1, state = '{}' WHERE stream_id = $1")
        .bind(&stream)
        .execute(&db.pool)
        .await
        .unwrap();
    let refolded = store.load::<Organization>(id).await.unwrap();
    assert_eq!(refolded.version, 151);
    assert_eq!(refolded.state, folded);

    let missing = store.load::<Organization>(Uuid::now_v7()).await.unwrap();
    assert_eq!(missing.version, 0);
    assert_eq!(missing.state, Organization::default());
}
