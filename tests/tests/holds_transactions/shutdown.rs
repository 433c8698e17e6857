//! Graceful shutdown of the real binaries: on SIGTERM, requests in flight finish and nothing is left
//! half-written, the projector stops between batches with its checkpoint and read models in step,
//! the Kafka publisher with its checkpoint behind what the broker holds, and every process exits 0
//! (the MCP server's tool calls in flight included).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use contracts::published::{aggregate_types, topic};
use serde_json::json;
use sqlx::PgPool;
use tests::kafka::{publisher_checkpoint, Broker, GroupMember};
use tests::process::{Service, Stack};
use tests::{start_issuer, TestDb, SYSTEM_ADMIN};
use tokio::task::JoinSet;

const IN_FLIGHT: usize = 12;

/// Waits until `count` backends of the test database wait for a lock: the requests are in flight.
async fn wait_for_lock_waiters(pool: &PgPool, database: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(database)
        .fetch_one(pool)
        .await
        .expect("reading pg_stat_activity");
        if waiting >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} of {count} requests reached the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM while requests wait in the database: the process goes on until they are answered.
async fn terminate_while_in_flight(service: &mut Service) {
    service.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        service.is_running(),
        "{} exited with requests in flight:\n{}",
        service.name,
        service.output()
    );
    // It no longer accepts connections.
    let late = reqwest::Client::new()
        .get(format!("{}/healthz", service.url))
        .send()
        .await;
    assert!(late.is_err(), "a request after SIGTERM was answered");
}

#[tokio::test]
async fn command_api_answers_the_writes_in_flight_then_exits_0() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let stack = Stack::new(&db, &issuer);
    let mut api = stack.command_api().await;
    let token = issuer.token(SYSTEM_ADMIN);
    let http = reqwest::Client::new();
    let create = |name: String| {
        http.post(format!("{}/api/organizations", api.url))
            .bearer_auth(&token)
            .json(&json!({ "name": name }))
            .send()
    };
    // The first request records the System user; after it, each create appends one event.
    let first = create("first".into()).await.expect("creating");
    assert_eq!(first.status(), 201);
    let mut created = BTreeSet::new();
    let first: serde_json::Value = first.json().await.expect("a JSON body");
    created.insert(first["id"].as_str().expect("an id").to_owned());

    // Appends wait behind this lock, so the writes are all in flight when the signal comes.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the log");
    let mut writes = JoinSet::new();
    for n in 0..IN_FLIGHT {
        let request = create(format!("in flight {n}"));
        writes.spawn(async move {
            let response = request.await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
    }
    // Writes are committed in groups (commands::store): as many groups as may be in flight wait in
    // the database, and the other writes wait for a slot in command-api's committer.
    let groups = commands::GROUPS_IN_FLIGHT.min(IN_FLIGHT);
    wait_for_lock_waiters(&db.pool, &db.name, groups as i64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate_while_in_flight(&mut api).await;
    blocker.rollback().await.expect("releasing the log");

    while let Some(write) = writes.join_next().await {
        match write.expect("the request task") {
            Ok((status, body)) if status.is_success() => {
                assert_eq!(status, 201, "{body}");
                created.insert(body["id"].as_str().expect("an id").to_owned());
            }
            // A clean refusal is acceptable; a half-written one is checked against the log below.
            Ok((status, body)) => assert!(body["error"].is_string(), "{status}: {body}"),
            Err(error) => assert!(!error.is_decode(), "a cut-off answer: {error}"),
        }
    }
    assert_eq!(
        created.len(),
        IN_FLIGHT + 1,
        "every write in flight was answered"
    );
    let status = api.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "command-api exited with {status}");

    let logged: BTreeSet<String> = sqlx::query_scalar(
        "SELECT data->>'id' FROM events WHERE event_type = 'organization.created'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reading the log")
    .into_iter()
    .collect();
    assert_eq!(logged, created, "the log holds exactly the answered writes");
}

#[tokio::test]
async fn query_api_answers_the_reads_in_flight_then_exits_0() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let stack = Stack::new(&db, &issuer);
    let mut api = stack.query_api().await;
    let token = issuer.token(SYSTEM_ADMIN);
    let http = reqwest::Client::new();
    let list = || {
        http.get(format!("{}/api/organizations", api.url))
            .bearer_auth(&token)
            .header("consistency", "eventual")
            .send()
    };
    // The first request records the System user.
    assert_eq!(list().await.expect("listing").status(), 200);

    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE read_models.organizations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the read model");
    let mut reads = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let request = list();
        reads.spawn(async move {
            let response = request.await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
    }
    // Writes are committed in groups (commands::store): as many groups as may be in flight wait in
    // the database, and the other writes wait for a slot in command-api's committer.
    let groups = commands::GROUPS_IN_FLIGHT.min(IN_FLIGHT);
    wait_for_lock_waiters(&db.pool, &db.name, groups as i64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate_while_in_flight(&mut api).await;
    blocker.rollback().await.expect("releasing the read model");

    while let Some(read) = reads.join_next().await {
        let (status, body) = read.expect("the request task").expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert!(body["data"].is_array(), "{body}");
    }
    let status = api.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "query-api exited with {status}");
}

#[tokio::test]
async fn mcp_api_answers_the_tool_calls_in_flight_then_exits_0() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let stack = Stack::new(&db, &issuer);
    // Tool calls read as REST reads do, waiting for the writes before them: the projector keeps up.
    let _projector = stack.projector().await;
    let mut api = stack.mcp_api().await;
    let token = issuer.token(SYSTEM_ADMIN);
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("{}/mcp", api.url))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "list_organizations", "arguments": {}}}))
            .send()
    };
    // The first call records the System user.
    let first: serde_json::Value = call().await.expect("calling").json().await.expect("JSON");
    assert_eq!(first["result"]["isError"], false, "{first}");

    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE read_models.organizations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the read model");
    let mut calls = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let request = call();
        calls.spawn(async move {
            let response = request.await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
    }
    wait_for_lock_waiters(&db.pool, &db.name, IN_FLIGHT as i64).await;
    terminate_while_in_flight(&mut api).await;
    blocker.rollback().await.expect("releasing the read model");

    while let Some(answered) = calls.join_next().await {
        let (status, body) = answered.expect("the request task").expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert!(
            body["result"]["structuredContent"]["data"].is_array(),
            "{body}"
        );
    }
    let status = api.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "mcp-api exited with {status}");
}

/// Appends one organization and `environments` environments straight into the log.
async fn append_backlog(pool: &PgPool, environments: i64) {
    let org = uuid::Uuid::now_v7();
    let metadata = json!({ "actor": { "id": "test", "role": "system" }, "organizationId": org,
        "requestId": "test", "correlationId": "test", "causationId": null, "clientIp": null, "userAgent": null });
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
         VALUES ($1, 1, gen_random_uuid(), 'organization.created', 1, $2, $3, now())",
    )
    .bind(format!("organization-{org}"))
    .bind(json!({ "id": org, "name": "Backlog Corp", "description": null }))
    .bind(&metadata)
    .execute(pool)
    .await
    .expect("appending the organization");
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
         SELECT 'environment-' || md5('env' || g)::uuid, 1, gen_random_uuid(), 'environment.created', 1, \
                jsonb_build_object('id', md5('env' || g)::uuid, 'organizationId', $1::uuid, 'name', 'env ' || g, 'description', NULL), \
                $2, now() \
         FROM generate_series(1, $3) g",
    )
    .bind(org)
    .bind(&metadata)
    .bind(environments)
    .execute(pool)
    .await
    .expect("appending the backlog");
}

#[tokio::test]
async fn projector_stops_between_batches_then_exits_0() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let stack = Stack::new(&db, &issuer);
    append_backlog(&db.pool, 40_000).await;

    let mut projector = stack.projector().await;
    let position = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT global_position FROM projection_checkpoints WHERE name = 'tenants'",
        )
        .fetch_optional(&db.pool)
        .await
        .expect("reading the checkpoint")
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while position().await == 0 {
        assert!(Instant::now() < deadline, "the projector did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    projector.signal("TERM");
    let status = projector.exit_status(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "projector exited with {status}:\n{}",
        projector.output()
    );

    // The read model holds exactly the events up to the checkpoint.
    let checkpoint = position().await;
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.environments")
        .fetch_one(&db.pool)
        .await
        .expect("counting environments");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'environment.created' AND global_position <= $1",
    )
    .bind(checkpoint)
    .fetch_one(&db.pool)
    .await
    .expect("counting events");
    assert_eq!(projected, logged, "checkpoint {checkpoint}");
    println!("stopped at position {checkpoint} of 40001");
}

#[tokio::test]
async fn the_publisher_stops_with_its_checkpoint_behind_what_the_broker_holds() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let broker = Broker::start().await;
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut stack = Stack::new(&db, &issuer);
    stack.set("KAFKA_BROKERS", broker.address());
    stack.set("KAFKA_TOPIC_PREFIX", &prefix);
    append_backlog(&db.pool, 5_000).await;

    let mut projector = stack.projector().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while publisher_checkpoint(&db.pool).await.global_position == 0 {
        assert!(Instant::now() < deadline, "the publisher did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    projector.signal("TERM");
    let status = projector.exit_status(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "projector exited with {status}:\n{}",
        projector.output()
    );

    // Every event up to the checkpoint is on its topic.
    let checkpoint = publisher_checkpoint(&db.pool).await;
    let published: HashSet<String> =
        sqlx::query_scalar("SELECT event_id::text FROM events WHERE global_position <= $1")
            .bind(checkpoint.global_position)
            .fetch_all(&db.pool)
            .await
            .expect("reading the log")
            .into_iter()
            .collect();
    let topics: Vec<String> = aggregate_types()
        .iter()
        .map(|t| topic(&prefix, t))
        .collect();
    let consumer = GroupMember::join(&broker.address(), "shutdown-test", &topics);
    let received = consumer
        .take_all(Duration::from_secs(90), published.clone())
        .await;
    let received: HashSet<&str> = received.iter().map(|r| r.header("ce_id")).collect();
    let missing = published
        .iter()
        .filter(|id| !received.contains(id.as_str()))
        .count();
    assert_eq!(
        missing, 0,
        "events up to checkpoint {checkpoint} are not on Kafka"
    );
}
