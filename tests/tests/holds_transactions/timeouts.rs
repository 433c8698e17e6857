//! Time limits, against the real binaries: a request that has not produced its response head within
//! `REQUEST_TIMEOUT_SECS` answers `503` with the error body, while a response that streams after its
//! head (the NDJSON audit export) is not cut off; the services' pools limit every statement and idle
//! transaction themselves, except for the projector's operator commands.

use std::time::{Duration, Instant};

use event_log::database::Limits;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tests::process::Stack;
use tests::{start_issuer, TestDb, SYSTEM_ADMIN};

/// Sends a request that waits behind a lock and expects the time limit's `503` well before the lock
/// goes away.
async fn answers_503_in_time(request: reqwest::RequestBuilder) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("an answer before the lock was released")
        .expect("an answer");
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"], "Service Unavailable", "{body}");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.contains("did not complete within 1 s")),
        "{body}"
    );
}

#[tokio::test]
async fn requests_answer_503_at_the_time_limit_but_exports_stream_on() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let mut stack = Stack::new(&db, &issuer);
    stack.set("REQUEST_TIMEOUT_SECS", "1");
    let (command, query, _projector) = (
        stack.command_api().await,
        stack.query_api().await,
        stack.projector().await,
    );
    let token = issuer.token(SYSTEM_ADMIN);
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/organizations", command.url))
        .bearer_auth(&token)
        .json(&json!({ "name": "Timed" }))
        .send()
        .await
        .expect("creating");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.expect("a body")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // Waits for the audit projection: the export below has a row to stream. Each read's wait is itself
    // cut at the 1 s limit, so a projector that has just started may take a few.
    let audit = |accept: &str| {
        http.get(format!("{}/api/audit-events", query.url))
            .bearer_auth(&token)
            .header("accept", accept)
    };
    let mut listed = 0;
    for _ in 0..30 {
        listed = audit("application/json")
            .send()
            .await
            .expect("listing")
            .status()
            .as_u16();
        if listed == 200 {
            break;
        }
    }
    assert_eq!(listed, 200);

    // A write waiting for the log: 503.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the log");
    answers_503_in_time(
        http.put(format!("{}/api/organizations/{id}", command.url))
            .bearer_auth(&token)
            .json(&json!({ "name": "Renamed" })),
    )
    .await;
    blocker.rollback().await.expect("releasing the log");

    // A read waiting for its read model: 503.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE read_models.organizations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the read model");
    answers_503_in_time(
        http.get(format!("{}/api/organizations/{id}", query.url))
            .bearer_auth(&token)
            .header("consistency", "eventual"),
    )
    .await;
    blocker.rollback().await.expect("releasing the read model");

    // An export whose rows come after the limit: its head is in time, its body runs to the end.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE read_models.audit_index IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the audit index");
    let export = audit("application/x-ndjson")
        .header("consistency", "eventual")
        .send()
        .await
        .expect("the export's head");
    assert_eq!(export.status(), 200);
    let body = tokio::spawn(export.text());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    blocker.rollback().await.expect("releasing the audit index");
    let body = body
        .await
        .expect("the reading task")
        .expect("the whole export");
    assert!(
        body.lines()
            .any(|line| line.contains("organization.created")),
        "{body}"
    );
}

#[tokio::test]
async fn every_pool_connection_carries_the_limits() {
    let db = TestDb::create().await.expect("a test database");
    let limits = Limits {
        statement: Some(Duration::from_secs(7)),
        idle_in_transaction: Duration::from_secs(11),
    };
    let url = db.url();
    let show = |limits: Limits| {
        let url = url.clone();
        async move {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(limits.connect_options(&url).expect("options"))
                .await
                .expect("connecting");
            let statement: String = sqlx::query_scalar("SHOW statement_timeout")
                .fetch_one(&pool)
                .await
                .expect("SHOW");
            let idle: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
                .fetch_one(&pool)
                .await
                .expect("SHOW");
            (statement, idle)
        }
    };
    assert_eq!(show(limits).await, ("7s".into(), "11s".into()));
    assert_eq!(
        show(limits.without_statement_timeout()).await,
        ("0".into(), "11s".into())
    );
}

#[tokio::test]
async fn statements_of_requests_are_limited_and_the_operators_commands_are_not() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let mut stack = Stack::new(&db, &issuer);
    stack.set("STATEMENT_TIMEOUT_SECS", "1");
    let command = stack.command_api().await;
    let token = issuer.token(SYSTEM_ADMIN);
    let http = reqwest::Client::new();
    let create = |name: &str| {
        http.post(format!("{}/api/organizations", command.url))
            .bearer_auth(&token)
            .json(&json!({ "name": name }))
            .send()
    };
    assert_eq!(create("first").await.expect("creating").status(), 201);

    // The server cancels a write's statement that waits for a lock longer than the limit.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locking the log");
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(10), create("waiting"))
        .await
        .expect("an answer before the lock was released")
        .expect("an answer");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.expect("a JSON body");
    assert_eq!(
        body,
        json!({ "error": "Service Unavailable",
                "details": "the database did not answer in time; retry later" })
    );
    blocker.rollback().await.expect("releasing the log");

    // A rebuild whose swap waits longer than that for the live runner's checkpoint lock succeeds.
    sqlx::query(
        "INSERT INTO projection_checkpoints (name) VALUES ('tenants') ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .expect("a checkpoint");
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("SELECT 1 FROM projection_checkpoints WHERE name = 'tenants' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .expect("locking the checkpoint");
    let (rebuilt, ()) = tokio::join!(stack.projector_command(&["rebuild", "tenants"]), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        blocker.rollback().await.expect("releasing the checkpoint");
    });
    assert!(
        rebuilt.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rebuilt.stdout),
        String::from_utf8_lossy(&rebuilt.stderr)
    );
}
