//! Runtime status over HTTP: the log's head and append rate, each checkpoint's position, lag and
//! state (running, stalled, failed with its error), the database's connections, the probe queue, and
//! the service instances' heartbeats; System only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tests::{send, TestApp};

async fn runtime(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/v1/admin/runtime").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn checkpoint<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} checkpoint: {body}"))
}

#[tokio::test]
async fn operators_see_the_log_checkpoints_database_and_instances() {
    let mut app = TestApp::spawn().await;
    app.create_organization("Acme").await;

    // Caught up: every projection running, none behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = runtime(&app).await;
        if checkpoint(&body, "tenants")["behind"] == 0 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tenants = checkpoint(&body, "tenants");
    assert_eq!(tenants["state"], "running", "{tenants}");
    assert!(body["log"]["head"].as_i64().unwrap() >= tenants["position"].as_i64().unwrap());
    assert!(
        body["log"]["appendedLastMinute"].as_i64().unwrap() >= 1,
        "{body}"
    );
    assert!(body["database"]["pool"]["size"].as_u64().unwrap() >= 1);
    assert!(body["database"]["connections"].as_i64().unwrap() >= 1);
    assert_eq!(body["queues"]["probeReports"]["depth"], 0);
    let services: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "up")
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["command-api", "query-api"], "{body}");

    let org = app.create_organization("Initech").await;
    app.add_member(&org, "org-admin", "admin").await;
    let (status, _) = send(app.as_user("org-admin", Method::GET, "/api/v1/admin/runtime")).await;
    assert_eq!(status, 403, "an organization's admin is no operator");

    // A projector that stopped moving while events wait: stalled, with how far behind.
    app.stop_projector();
    app.create_organization("Globex").await;
    sqlx::query(
        "UPDATE projection_checkpoints SET updated_at = now() - interval '5 minutes' WHERE name = 'tenants'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    // One stuck at an event it cannot apply: failed, with its error.
    sqlx::query(
        "UPDATE projection_checkpoints SET failing_since = now(), failed_attempts = 3, \
         failed_position = global_position + 1, last_error = 'boom: no such column' WHERE name = 'catalog'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    // An instance that stopped reporting: stale.
    sqlx::query(
        "INSERT INTO service_instances VALUES (gen_random_uuid(), 'command-api', '0.0.9', \
         now() - interval '2 hours', now() - interval '1 hour')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let body = runtime(&app).await;
    let tenants = checkpoint(&body, "tenants");
    assert_eq!(tenants["state"], "stalled", "{tenants}");
    assert!(tenants["behind"].as_i64().unwrap() >= 1);
    let catalog = checkpoint(&body, "catalog");
    assert_eq!(catalog["state"], "failed");
    assert!(
        catalog["error"]
            .as_str()
            .unwrap()
            .contains("boom: no such column"),
        "{catalog}"
    );
    let stale: Vec<&Value> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "stale")
        .collect();
    assert_eq!(stale.len(), 1, "{body}");
    assert_eq!(stale[0]["version"], "0.0.9");
    assert_eq!(stale[0]["uptimeSeconds"], 3600);
}
