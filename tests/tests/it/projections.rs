//! The projection framework against a real PostgreSQL: exactly-once application across failures,
//! crashes and competing runners, and rebuilds that equal the live result.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use domain::{LogPosition, NewEvent, RecordedEvent};
use event_log::log_head;
use projector::rebuild::rebuild;
use projector::worker::{self, WorkerConfig};
use projector::Projection;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tests::TestDb;
use tokio::sync::Notify;

/// Records every event it is given, with a counter that exposes double or skipped application.
#[derive(Default)]
struct Recorder {
    /// Stop for ever half-way through the batch holding this position (to be killed there).
    hang_at: Option<(i64, Arc<Notify>)>,
    /// Fail once half-way through the batch holding this position.
    fail_once_at: Option<(i64, AtomicBool)>,
    /// The one stream type it handles (`None`: every type).
    only: Option<&'static str>,
    /// Runners inside `apply` right now, and the most there ever were.
    active: Arc<AtomicUsize>,
    most_active: Arc<AtomicUsize>,
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["recorded", "recorder_counter"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        self.only.is_none_or(|only| only == stream_type)
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(now_active, Ordering::SeqCst);
        let result = self.record(conn, events).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Recorder {
    async fn record(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> anyhow::Result<()> {
        let half = events.len() / 2;
        for (i, event) in events.iter().enumerate() {
            if i == half {
                if let Some((position, reached)) = &self.hang_at {
                    if events.iter().any(|e| e.global_position == *position) {
                        reached.notify_one();
                        std::future::pending::<()>().await;
                    }
                }
                if let Some((position, failed)) = &self.fail_once_at {
                    if events.iter().any(|e| e.global_position == *position)
                        && !failed.swap(true, Ordering::SeqCst)
                    {
                        anyhow::bail!("injected failure");
                    }
                }
            }
            tokio::task::yield_now().await;
            sqlx::query(
                "WITH counter AS (INSERT INTO recorder_counter VALUES (1, 1) \
                   ON CONFLICT (id) DO UPDATE SET n = recorder_counter.n + 1 RETURNING n) \
                 INSERT INTO recorded (global_position, event_id, applied_order) SELECT $1, $2, n FROM counter",
            )
            .bind(event.global_position)
            .bind(event.event_id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

async fn create_recorder_tables(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE read_models.recorded (global_position bigint PRIMARY KEY, event_id uuid NOT NULL, applied_order bigint NOT NULL UNIQUE);
         CREATE TABLE read_models.recorder_counter (id int PRIMARY KEY, n bigint NOT NULL);",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[derive(Serialize)]
#[serde(tag = "type", content = "data")]
enum TestEvent {
    #[serde(rename = "test.happened")]
    Happened { n: usize },
}

async fn append_events(pool: &PgPool, count: usize) {
    let metadata = tests::metadata("tester", None);
    for n in 0..count {
        let event = NewEvent::new(&TestEvent::Happened { n }, metadata.clone(), Utc::now());
        commands::testing::append(pool, &format!("stream-{}", n % 17), vec![event])
            .await
            .unwrap();
    }
}

async fn position_of(pool: &PgPool, nth: i64) -> i64 {
    sqlx::query_scalar("SELECT global_position FROM events ORDER BY transaction_id, global_position OFFSET $1 LIMIT 1")
        .bind(nth)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn checkpoint(pool: &PgPool, name: &str) -> LogPosition {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map_or(LogPosition::START, |(transaction_id, global_position)| {
        LogPosition {
            transaction_id,
            global_position,
        }
    })
}

async fn wait_for_catch_up(pool: &PgPool, name: &str) {
    let head = log_head(pool).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(pool, name).await < head {
        assert!(
            Instant::now() < deadline,
            "{name} did not catch up with {head:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event was applied exactly once, in log order.
async fn assert_applied_exactly_once_in_order(pool: &PgPool) -> Vec<(i64, i64)> {
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT global_position, applied_order FROM read_models.recorded ORDER BY applied_order",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let log: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM events ORDER BY transaction_id, global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        applied.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        log,
        "applied positions differ from the log"
    );
    assert_eq!(
        applied.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "an event was applied twice or skipped"
    );
    applied
}

fn config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(20),
        retry_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn setup(events: usize) -> (TestDb, PgPool) {
    let db = TestDb::create().await.unwrap();
    create_recorder_tables(&db.pool).await;
    append_events(&db.pool, events).await;
    let pool = db.pool.clone();
    (db, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_mid_batch_resumes_without_skipping_or_repeating() {
    let (db, _store) = setup(1_000).await;
    let reached = Arc::new(Notify::new());
    let hanging = Recorder {
        hang_at: Some((position_of(&db.pool, 634).await, reached.clone())),
        ..Default::default()
    };
    let first = tokio::spawn(worker::run(db.pool.clone(), Arc::new(hanging), config()));
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the batch was reached");
    let partial: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.recorded")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        partial, 600,
        "only the batches before the hanging one are committed"
    );
    first.abort();

    let second = tokio::spawn(worker::run(
        db.pool.clone(),
        Arc::new(Recorder::default()),
        config(),
    ));
    wait_for_catch_up(&db.pool, "recorder").await;
    second.abort();
    let live = assert_applied_exactly_once_in_order(&db.pool).await;

    rebuild(&db.pool, &Recorder::default(), |_| {})
        .await
        .unwrap();
    let rebuilt = assert_applied_exactly_once_in_order(&db.pool).await;
    assert_eq!(
        live, rebuilt,
        "the resumed projection differs from a clean rebuild"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_fails_mid_batch_retries_the_whole_batch() {
    let (db, _store) = setup(500).await;
    let failing = Arc::new(Recorder {
        fail_once_at: Some((position_of(&db.pool, 250).await, AtomicBool::new(false))),
        ..Default::default()
    });
    let worker = tokio::spawn(worker::run(db.pool.clone(), failing.clone(), config()));
    wait_for_catch_up(&db.pool, "recorder").await;
    worker.abort();
    assert!(
        failing
            .fail_once_at
            .as_ref()
            .unwrap()
            .1
            .load(Ordering::SeqCst),
        "the failure was injected"
    );
    let live = assert_applied_exactly_once_in_order(&db.pool).await;

    rebuild(&db.pool, &Recorder::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(live, assert_applied_exactly_once_in_order(&db.pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_of_one_projection_never_apply_at_once_and_the_standby_takes_over() {
    let (db, store) = setup(300).await;
    let active = Arc::new(AtomicUsize::new(0));
    let most_active = Arc::new(AtomicUsize::new(0));
    let runner = || Recorder {
        active: active.clone(),
        most_active: most_active.clone(),
        ..Default::default()
    };
    let first = tokio::spawn(worker::run(db.pool.clone(), Arc::new(runner()), config()));
    let second = tokio::spawn(worker::run(db.pool.clone(), Arc::new(runner()), config()));
    wait_for_catch_up(&db.pool, "recorder").await;

    // Kill whichever holds the lock by killing both in turn while events keep coming.
    first.abort();
    append_events(&store, 300).await;
    wait_for_catch_up(&db.pool, "recorder").await;
    second.abort();

    assert_eq!(
        most_active.load(Ordering::SeqCst),
        1,
        "two runners applied batches at the same time"
    );
    assert_applied_exactly_once_in_order(&db.pool).await;
}

/// A listener for the notifications that tell readers a checkpoint moved.
async fn checkpoint_listener(pool: &PgPool) -> sqlx::postgres::PgListener {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    listener
        .listen(contracts::read_models::CHECKPOINT_CHANNEL)
        .await
        .unwrap();
    listener
}

#[tokio::test]
async fn each_applied_batch_tells_waiting_readers_when_it_commits() {
    let (db, _store) = setup(30).await;
    let mut listener = checkpoint_listener(&db.pool).await;
    let mut conn = worker::connect(&db.pool).await.unwrap();
    let mut at = None;
    projector::projection::ensure_checkpoint(&mut conn, "recorder")
        .await
        .unwrap();
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Other tests' open transactions may hold the newest events back for a later batch.
    let mut applied = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (applied as i64) < logged && Instant::now() < deadline {
        applied += worker::run_batch(&mut conn, &Recorder::default(), &mut at, 500)
            .await
            .unwrap();
    }
    assert_eq!(applied as i64, logged);
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the batch's commit notified the readers")
        .unwrap();
    assert_eq!(notification.payload(), "recorder");
    assert_eq!(
        checkpoint(&db.pool, "recorder").await,
        log_head(&db.pool).await.unwrap()
    );
    while tokio::time::timeout(Duration::from_millis(100), listener.recv())
        .await
        .is_ok()
    {}

    // A batch that finds nothing moves nothing and tells nobody.
    assert_eq!(
        worker::run_batch(&mut conn, &Recorder::default(), &mut at, 500)
            .await
            .unwrap(),
        0
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "an empty batch notified"
    );
}

async fn recorded(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM read_models.recorded")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn set_checkpoint(pool: &PgPool, position: LogPosition) {
    sqlx::query(
        "UPDATE projection_checkpoints SET transaction_id = $2, global_position = $3 WHERE name = $1",
    )
    .bind("recorder")
    .bind(position.transaction_id)
    .bind(position.global_position)
    .execute(pool)
    .await
    .unwrap();
}

/// Runs batches of `recorder` from `at` while the checkpoint is elsewhere (at the start), until the
/// runner forgets its position; each must apply nothing and leave the checkpoint where it is. New
/// events are read once every transaction older than theirs has ended, in any database of the server
/// (other tests run beside this one): until then a batch reads nothing and keeps its position.
async fn until_forgotten(
    pool: &PgPool,
    conn: &mut PgConnection,
    recorder: &Recorder,
    mut at: Option<LogPosition>,
) -> Option<LogPosition> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while at.is_some() && Instant::now() < deadline {
        let applied = worker::run_batch(conn, recorder, &mut at, 500)
            .await
            .unwrap();
        assert_eq!(applied, 0);
        assert_eq!(checkpoint(pool, "recorder").await, LogPosition::START);
    }
    at
}

#[tokio::test]
async fn batches_a_projection_does_not_handle_move_its_checkpoint_but_never_one_moved_by_another() {
    let (db, _store) = setup(40).await;
    let deaf = Recorder {
        only: Some("nosuchtype"),
        ..Default::default()
    };
    let mut conn = worker::connect(&db.pool).await.unwrap();
    projector::projection::ensure_checkpoint(&mut conn, "recorder")
        .await
        .unwrap();
    let mut listener = checkpoint_listener(&db.pool).await;
    let head = log_head(&db.pool).await.unwrap();
    let mut at = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint(&db.pool, "recorder").await != head && Instant::now() < deadline {
        worker::run_batch(&mut conn, &deaf, &mut at, 500)
            .await
            .unwrap();
    }
    assert_eq!(
        checkpoint(&db.pool, "recorder").await,
        head,
        "reads waiting for the projection see it reach the head"
    );
    assert_eq!(at, Some(head));
    assert_eq!(recorded(&db.pool).await, 0, "nothing was applied");
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("moving the checkpoint notified the readers")
        .unwrap();
    assert_eq!(notification.payload(), "recorder");

    // Another process (a rebuild's swap) sets the checkpoint elsewhere: a runner that still holds its
    // own position moves nothing, neither alone nor with events it handles, and then goes on from
    // where the checkpoint is.
    append_events(&db.pool, 5).await;
    set_checkpoint(&db.pool, LogPosition::START).await;
    assert_eq!(until_forgotten(&db.pool, &mut conn, &deaf, at).await, None);
    let hearing = Recorder::default();
    assert_eq!(
        until_forgotten(&db.pool, &mut conn, &hearing, Some(head)).await,
        None
    );
    assert_eq!(recorded(&db.pool).await, 0);

    let mut at = None;
    let applied = worker::run_batch(&mut conn, &hearing, &mut at, 500)
        .await
        .unwrap();
    assert!(applied > 0);
    assert_eq!(
        recorded(&db.pool).await,
        applied as i64,
        "it applied from where the checkpoint was"
    );
}
