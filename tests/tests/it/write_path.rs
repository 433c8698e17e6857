//! The write path's own mechanisms: group commit (concurrent writes committed in one transaction, each
//! answered on its own), the cache of the access lookups (invalidated in this process by the write
//! that changes them, and in every other one by notification, also after its listener lost its
//! connection), the folded states of pinned streams (an outdated one never commits), and projection
//! batches that end their transaction at once when there is nothing to apply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_committed_together_are_each_answered_on_their_own() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let events_before = app.event_count().await;
    // 48 creates at once: 24 distinct names, 12 of them asked for twice (once in each case).
    let names: Vec<String> = (0..36)
        .map(|n| format!("env {n}"))
        .chain((0..12).map(|n| format!("ENV {n}")))
        .collect();
    let answers = join_all(names.iter().map(|name| {
        send(
            app.admin(Method::POST, "/api/environments")
                .json(&json!({ "organizationId": org, "name": name })),
        )
    }))
    .await;

    let mut created: HashMap<String, Value> = HashMap::new();
    for (name, (status, body)) in names.iter().zip(&answers) {
        match status {
            201 => {
                assert_eq!(body["name"], json!(name), "each answer is its own write's");
                let previous = created.insert(name.to_lowercase(), body.clone());
                assert!(previous.is_none(), "{name} was created twice");
            }
            409 => assert!(
                body["details"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("already exists"),
                "{body}"
            ),
            other => panic!("{name}: {other} {body}"),
        }
    }
    assert_eq!(created.len(), 36, "one environment per case-folded name");
    assert_eq!(app.event_count().await, events_before + 36);

    // Every answered id is stored, as the event the write appended.
    for body in created.values() {
        let (status, stored) = app
            .get(&format!(
                "/api/environments/{}",
                body["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!((status, &stored["name"]), (200, &body["name"]));
    }
    // And writes were indeed committed together: some transaction holds more than one of them.
    let most: i64 = sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM events WHERE event_type = 'environment.created' \
         GROUP BY transaction_id) t",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(most > 1, "no two creates were committed in one transaction");
}

/// Polls `request` until it answers `status`, for at most two seconds; the time it took.
async fn until_answered(status: u16, request: impl Fn() -> reqwest::RequestBuilder) -> Duration {
    let started = Instant::now();
    loop {
        let (answered, body) = send(request()).await;
        if answered == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still {answered} {body} after 2 s, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_revoked_through_another_instance_reaches_this_ones_cache() {
    let app = TestApp::spawn().await;
    let other = app.another_command_api().await;
    let org = app.create_organization("Acme").await;
    let carol = app.add_member(&org, "carol", "admin").await;
    // The last admin could not be demoted.
    app.add_member(&org, "dan", "admin").await;
    let create = |name: &str| {
        app.as_user("carol", Method::POST, "/api/environments")
            .json(&json!({ "organizationId": org, "name": name }))
    };
    // Carol's role, changed through the other instance.
    let set_role = |role: &str| {
        app.http
            .put(format!("{other}/api/organizations/{org}/members/{carol}"))
            .bearer_auth(&app.admin_token)
            .json(&json!({ "role": role }))
    };
    // This instance now holds carol's lookups.
    assert_eq!(send(create("first")).await.0, 201);

    assert_eq!(send(set_role("guest")).await.0, 200);
    // The cache keeps entries for 30 s: only the notification can make this quick.
    until_answered(403, || create("second")).await;

    // After the listener's connection is lost, changes still arrive (and none is served stale).
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %access_changed%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(terminated >= 1, "the caches' listeners were found");
    assert_eq!(send(set_role("admin")).await.0, 200);
    until_answered(201, || create("third")).await;
}

#[tokio::test]
async fn a_write_that_changes_access_takes_effect_here_before_it_is_answered() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let carol = app.add_member(&org, "carol", "admin").await;
    app.add_member(&org, "dan", "admin").await;
    for n in 0..20 {
        let create = app
            .as_user("carol", Method::POST, "/api/environments")
            .json(&json!({ "organizationId": org, "name": format!("env {n}") }));
        assert_eq!(send(create).await.0, 201);
        let role = if n % 2 == 0 { "guest" } else { "admin" };
        let (status, _) = app
            .put(
                &format!("/api/organizations/{org}/members/{carol}"),
                json!({ "role": role }),
            )
            .await;
        assert_eq!(status, 200);
        let create = app
            .as_user("carol", Method::POST, "/api/environments")
            .json(&json!({ "organizationId": org, "name": format!("as {role} {n}") }));
        let expected = if role == "guest" { 403 } else { 201 };
        assert_eq!(send(create).await.0, expected, "at once, as {role}");
        if role == "guest" {
            let (status, _) = app
                .put(
                    &format!("/api/organizations/{org}/members/{carol}"),
                    json!({ "role": "admin" }),
                )
                .await;
            assert_eq!(status, 200);
        }
    }
}

#[tokio::test]
async fn a_create_never_commits_on_an_organization_state_that_is_no_longer_current() {
    let app = TestApp::spawn().await;
    let other = app.another_command_api().await;
    let org = app.create_organization("Acme").await;
    // This instance keeps Acme's folded state.
    app.create_environment(&org, "first").await;

    let rename = app
        .http
        .put(format!("{other}/api/organizations/{org}"))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "name": "Acme Holdings" }));
    assert_eq!(send(rename).await.0, 200);
    let (status, body) = app
        .post(
            "/api/environments",
            json!({ "organizationId": org, "name": "second" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["organization"]["name"], json!("Acme Holdings"));

    // Deleted through the other instance, the organization is still live in this one's memory.
    let delete = |id: &str| {
        app.http
            .delete(format!("{other}/api/environments/{id}"))
            .bearer_auth(&app.admin_token)
    };
    let (_, list) = app
        .get(&format!("/api/environments?organizationId={org}"))
        .await;
    for env in list["data"].as_array().unwrap() {
        assert_eq!(send(delete(env["id"].as_str().unwrap())).await.0, 200);
    }
    let gone = app
        .http
        .delete(format!("{other}/api/organizations/{org}"))
        .bearer_auth(&app.admin_token);
    assert_eq!(send(gone).await.0, 200);
    let (status, body) = app
        .post(
            "/api/environments",
            json!({ "organizationId": org, "name": "third" }),
        )
        .await;
    assert_eq!(status, 404, "the organization is gone: {body}");
}

#[tokio::test]
async fn an_idle_projector_holds_no_transaction_open() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    app.create_environment(&org, "Production").await;
    // Long enough for every worker to find nothing more and wait (they poll every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(query, '') FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(
        open.is_empty(),
        "transactions left open, holding back every reader of the log: {open:?}"
    );
}
