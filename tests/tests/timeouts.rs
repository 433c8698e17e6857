//! Time limits, against the real binaries: a request that has not produced its response head within
//! `REQUEST_TIMEOUT_SECS` answers `503` with the error body, while a response that streams after its
//! head (the NDJSON audit export) is not cut off.

use std::time::{Duration, Instant};

use serde_json::json;
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
    // Waits for the audit projection: the export below has a row to stream.
    let audit = |accept: &str| {
        http.get(format!("{}/api/audit-events", query.url))
            .bearer_auth(&token)
            .header("accept", accept)
    };
    let listed = audit("application/json").send().await.expect("listing");
    assert_eq!(listed.status(), 200);

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
