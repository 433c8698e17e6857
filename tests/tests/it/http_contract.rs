//! The write and read contract of contract §2, §4 and §5 that holds for every endpoint: bad input,
//! idempotency keys, If-Match, concurrent writers, consistency, and operations.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

struct Case {
    what: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    /// A word the `details` must contain.
    details: &'static str,
}

fn case(what: &'static str, body: Value, details: &'static str) -> Case {
    Case {
        what,
        content_type: Some("application/json"),
        body: body.to_string(),
        status: 400,
        details,
    }
}

/// Bad bodies for an endpoint; `organization_id` is added to each object when the endpoint takes one.
fn bad_bodies(organization_id: Option<&str>) -> Vec<Case> {
    let with = |mut body: Value| {
        if let Some(id) = organization_id {
            body["organizationId"] = json!(id);
        }
        body
    };
    vec![
        Case {
            what: "malformed JSON",
            content_type: Some("application/json"),
            body: "{\"name\": ".into(),
            status: 400,
            details: "EOF",
        },
        case("wrong type", with(json!({ "name": 5 })), "name"),
        case("array body", json!(["name"]), "must be a JSON object"),
        case(
            "unknown field",
            with(json!({ "name": "x", "color": "red" })),
            "unknown field `color`",
        ),
        case(
            "name too long",
            with(json!({ "name": "n".repeat(201) })),
            "name: must be at most 200",
        ),
        case(
            "blank name",
            with(json!({ "name": "   " })),
            "name: must not be empty",
        ),
        case(
            "description too long",
            with(json!({ "name": "x", "description": "d".repeat(2_001) })),
            "description: must be at most 2000",
        ),
        Case {
            what: "text body",
            content_type: Some("text/plain"),
            body: "name=x".into(),
            status: 415,
            details: "application/json",
        },
        Case {
            what: "no content type",
            content_type: None,
            body: "{}".into(),
            status: 415,
            details: "application/json",
        },
        Case {
            what: "over 1 MiB",
            content_type: Some("application/json"),
            body: format!("{{\"name\": \"{}\"}}", "x".repeat(1_100_000)),
            status: 413,
            details: "limited",
        },
    ]
}

async fn send_raw(app: &TestApp, method: Method, path: &str, case: &Case) -> (u16, Value) {
    let mut request = app.admin(method, path).body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    send(request).await
}

#[tokio::test]
async fn every_bad_input_is_refused_with_details_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    let events = app.event_count().await;

    let targets = [
        (Method::POST, "/api/organizations".to_owned(), None),
        (Method::PUT, format!("/api/organizations/{org}"), None),
        (
            Method::POST,
            "/api/environments".to_owned(),
            Some(org.as_str()),
        ),
        (Method::PUT, format!("/api/environments/{env}"), None),
    ];
    for (method, path, organization_id) in &targets {
        for case in bad_bodies(*organization_id) {
            let (status, body) = send_raw(&app, method.clone(), path, &case).await;
            assert_eq!(status, case.status, "{method} {path} {}: {body}", case.what);
            assert!(
                body["error"].is_string(),
                "{method} {path} {}: {body}",
                case.what
            );
            let details = body["details"].as_str().unwrap_or_default();
            assert!(
                details.contains(case.details),
                "{method} {path} {}: {body}",
                case.what
            );
        }
    }

    // Fields that only some endpoints check.
    let more = [
        (
            Method::POST,
            "/api/organizations".to_owned(),
            json!({ "description": "no name" }),
            "missing field `name`",
        ),
        (
            Method::POST,
            "/api/environments".to_owned(),
            json!({ "name": "x" }),
            "missing field `organizationId`",
        ),
        (
            Method::POST,
            "/api/environments".to_owned(),
            json!({ "name": "x", "organizationId": "nope" }),
            "organizationId",
        ),
        (
            Method::PUT,
            format!("/api/organizations/{org}"),
            json!({ "name": null }),
            "name: must not be null",
        ),
        (
            Method::PUT,
            format!("/api/environments/{env}"),
            json!({ "organizationId": org }),
            "unknown field `organizationId`",
        ),
        (
            Method::PUT,
            "/api/organizations/not-a-uuid".to_owned(),
            json!({ "name": "x" }),
            "id: \"not-a-uuid\" is not a valid UUID",
        ),
        (
            Method::PUT,
            "/api/environments/123".to_owned(),
            json!({ "name": "x" }),
            "id:",
        ),
    ];
    for (method, path, body, details) in more {
        let (status, answer) = send(app.admin(method.clone(), &path).json(&body)).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert!(
            answer["details"]
                .as_str()
                .unwrap_or_default()
                .contains(details),
            "{method} {path}: {answer}"
        );
    }
    for path in ["/api/organizations/xyz", "/api/environments/xyz"] {
        let (status, _) = app.delete(path).await;
        assert_eq!(status, 400, "DELETE {path}");
        let (status, _) = app.get(path).await;
        assert_eq!(status, 400, "GET {path}");
    }

    assert_eq!(
        app.event_count().await,
        events,
        "a rejected request appended events"
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_refuses_a_different_body() {
    let app = TestApp::spawn().await;
    let request = || {
        app.admin(Method::POST, "/api/organizations")
            .header("idempotency-key", "key-1")
            .json(&json!({ "name": "Once" }))
    };
    let first = request().send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first_headers =
        ["location", "etag", "x-consistency-token"].map(|h| first.headers()[h].clone());
    let first_body: Value = first.json().await.unwrap();
    let events = app.event_count().await;

    let again = request().send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        ["location", "etag", "x-consistency-token"].map(|h| again.headers()[h].clone()),
        first_headers
    );
    assert_eq!(again.json::<Value>().await.unwrap(), first_body);
    assert_eq!(app.event_count().await, events);

    let (status, body) = send(
        app.admin(Method::POST, "/api/organizations")
            .header("idempotency-key", "key-1")
            .json(&json!({ "name": "Other" })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["details"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    // The same key on another endpoint is another request too.
    let id = first_body["id"].as_str().unwrap();
    let (status, _) = send(
        app.admin(Method::DELETE, &format!("/api/organizations/{id}"))
            .header("idempotency-key", "key-1"),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(app.event_count().await, events);

    // Deletes replay too.
    let delete = || {
        app.admin(Method::DELETE, &format!("/api/organizations/{id}"))
            .header("idempotency-key", "key-2")
    };
    let (status, body) = send(delete()).await;
    assert_eq!(
        (status, &body),
        (200, &json!({ "success": true, "id": id }))
    );
    let (status, replayed) = send(delete()).await;
    assert_eq!((status, replayed), (200, body));
}

#[tokio::test]
async fn an_idempotency_key_replays_nothing_to_a_caller_who_has_lost_access() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let elsewhere = app.create_organization("Elsewhere").await;
    let alice = app.add_member(&org, "alice", "admin").await;
    app.add_member(&org, "bob", "admin").await;
    // Still an admin somewhere, so the early checks before the environment is loaded let her through.
    app.add_member(&elsewhere, "alice", "admin").await;
    let renamed = app.create_environment(&org, "Staging").await;
    let deleted = app.create_environment(&org, "Old").await;
    let rename = || {
        app.as_user(
            "alice",
            Method::PUT,
            &format!("/api/environments/{renamed}"),
        )
        .header("idempotency-key", "rename")
        .json(&json!({ "name": "QA" }))
    };
    let delete = || {
        app.as_user(
            "alice",
            Method::DELETE,
            &format!("/api/environments/{deleted}"),
        )
        .header("idempotency-key", "delete")
    };
    assert_eq!(send(rename()).await.0, 200);
    assert_eq!(send(delete()).await.0, 200);
    let again = rename().send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    // Demoted to guest: the same request is forbidden, as a fresh one would be.
    let member = format!("/api/organizations/{org}/members/{alice}");
    assert_eq!(app.put(&member, json!({ "role": "guest" })).await.0, 200);
    let (status, body) = send(rename()).await;
    assert_eq!(status, 403, "{body}");
    // Removed: the organization is hidden from her, and so is what she did in it.
    assert_eq!(app.delete(&member).await.0, 200);
    let refused = delete().send().await.unwrap();
    assert_eq!(refused.status(), 404);
    assert!(refused.headers().get("idempotent-replayed").is_none());
    let body: Value = refused.json().await.unwrap();
    assert!(body.get("success").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_idempotency_key_create_one_resource() {
    let app = TestApp::spawn().await;
    let events = app.event_count().await;
    let requests = (0..10).map(|_| {
        send(
            app.admin(Method::POST, "/api/organizations")
                .header("idempotency-key", "same")
                .json(&json!({ "name": "Raced" })),
        )
    });
    let answers = futures::future::join_all(requests).await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.event_count().await, events + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_if_match_and_one_key_all_get_the_one_update() {
    let app = TestApp::spawn().await;
    let id = app.create_organization("Acme").await;
    let events = app.event_count().await;
    let path = format!("/api/organizations/{id}");
    let requests = (0..10).map(|_| {
        let request = app
            .admin(Method::PUT, &path)
            .header("if-match", "\"1\"")
            .header("idempotency-key", "rename-once")
            .json(&json!({ "name": "Acme 2" }));
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    });
    for (status, etag) in futures::future::join_all(requests).await {
        assert_eq!((status, etag.as_str()), (200, "\"2\""));
    }
    assert_eq!(app.event_count().await, events + 1);
}

/// `If-Match` pins the resource, not what the write depends on: a member's role change that finds its
/// organization renamed at commit is retried and applied, not refused with `412`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_retries_when_only_a_stream_the_write_depends_on_moved() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let uma = app.add_member(&org, "uma", "user").await;
    let organization_stream = format!("organization-{org}");

    // Holding the organization's stream lock (as its deletion would) stops the member write at
    // commit, after it loaded the organization; the rename does not take that lock.
    let mut holder = app.db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(&organization_stream)
        .execute(&mut *holder)
        .await
        .unwrap();
    let change = tokio::spawn(send(
        app.admin(
            Method::PUT,
            &format!("/api/organizations/{org}/members/{uma}"),
        )
        .header("if-match", "\"1\"")
        .json(&json!({ "role": "guest" })),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the member write never reached commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = app
        .put(
            &format!("/api/organizations/{org}"),
            json!({ "name": "Acme 2" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&organization_stream)
        .execute(&mut *holder)
        .await
        .unwrap();

    let (status, body) = change.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "guest");
    // The resource itself moving still answers 412.
    let (status, body) = send(
        app.admin(
            Method::PUT,
            &format!("/api/organizations/{org}/members/{uma}"),
        )
        .header("if-match", "\"1\"")
        .json(&json!({ "role": "user" })),
    )
    .await;
    assert_eq!(status, 412, "{body}");
}

#[tokio::test]
async fn if_match_with_a_stale_version_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.create_organization("Acme").await;
    let path = format!("/api/organizations/{id}");
    let (status, _) = send(
        app.admin(Method::PUT, &path)
            .header("if-match", "\"1\"")
            .json(&json!({ "name": "Acme 2" })),
    )
    .await;
    assert_eq!(status, 200);
    let events = app.event_count().await;
    let (status, body) = send(
        app.admin(Method::PUT, &path)
            .header("if-match", "\"1\"")
            .json(&json!({ "name": "Acme 3" })),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    assert!(body["details"].as_str().unwrap().contains("version 2"));
    let (status, _) = send(app.admin(Method::DELETE, &path).header("if-match", "\"1\"")).await;
    assert_eq!(status, 412);
    let (status, _) = send(
        app.admin(Method::PUT, &path)
            .header("if-match", "yesterday")
            .json(&json!({ "name": "x" })),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(app.event_count().await, events);
    let (_, read) = app.get(&path).await;
    assert_eq!(read["name"], "Acme 2");
    let (status, _) = send(
        app.admin(Method::DELETE, &path)
            .header("if-match", "W/\"2\""),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_without_if_match_are_serialised_and_none_is_lost() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Env").await;
    let path = format!("/api/environments/{env}");
    let updates = (0..32).map(|n| {
        let request = app
            .admin(Method::PUT, &path)
            .json(&json!({ "description": format!("update {n}") }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["etag"]
                .to_str()
                .unwrap()
                .trim_matches('"')
                .parse::<i64>()
                .unwrap()
        }
    });
    let mut versions: Vec<i64> = futures::future::join_all(updates).await;
    versions.sort();
    assert_eq!(
        versions,
        (2..=33).collect::<Vec<_>>(),
        "every version used exactly once"
    );
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT stream_version FROM events WHERE stream_id = $1 ORDER BY 1")
            .bind(format!("environment-{env}"))
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, (1..=33).collect::<Vec<_>>());
}

#[tokio::test]
async fn reads_wait_for_the_projection_unless_told_not_to() {
    let mut app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let (status, _) = app.get(&format!("/api/organizations/{org}")).await;
    assert_eq!(status, 200);
    app.stop_projector();
    let response = app
        .admin(Method::POST, "/api/organizations")
        .json(&json!({ "name": "Later" }))
        .send()
        .await
        .unwrap();
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let later: Value = response.json().await.unwrap();
    let later_path = format!("/api/organizations/{}", later["id"].as_str().unwrap());

    // Eventual reads answer at once from what the read model has.
    let (status, _) = send(
        app.admin(Method::GET, &later_path)
            .header("consistency", "eventual"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        app.admin(Method::GET, &format!("/api/organizations/{org}"))
            .header("consistency", "eventual"),
    )
    .await;
    assert_eq!(status, 200);

    // A read that must reflect the write gives up with 503 while the projector is down…
    let started = Instant::now();
    let (status, body) = send(
        app.admin(Method::GET, &later_path)
            .header("x-consistency-token", &token),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(5));

    // …and succeeds as soon as it catches up, also by default (no header).
    let waiting = tokio::spawn(send(app.admin(Method::GET, &later_path)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.start_projector();
    let (status, body) = waiting.await.unwrap();
    assert_eq!((status, body["name"].as_str()), (200, Some("Later")));

    for bad in [
        ("x-consistency-token", "garbage"),
        ("consistency", "strong"),
    ] {
        let (status, _) = send(
            app.admin(Method::GET, "/api/organizations")
                .header(bad.0, bad.1),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}");
    }
}

#[tokio::test]
async fn events_record_who_did_what_from_where() {
    let app = TestApp::spawn().await;
    let response = app
        .admin(Method::POST, "/api/organizations")
        .header("x-request-id", "req-42")
        .header("user-agent", "contract-test/1.0")
        .json(&json!({ "name": "Traced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let (event_type, schema_version, metadata): (String, i32, Value) =
        sqlx::query_as("SELECT event_type, schema_version, metadata FROM events WHERE stream_id LIKE 'organization-%'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (event_type.as_str(), schema_version),
        ("organization.created", 1)
    );
    assert_eq!(
        metadata["actor"],
        json!({ "id": app.admin_id, "role": "system" })
    );
    assert_eq!(metadata["requestId"], "req-42");
    assert_eq!(metadata["correlationId"], "req-42");
    assert_eq!(metadata["clientIp"], "127.0.0.1");
    assert_eq!(metadata["userAgent"], "contract-test/1.0");
    let body: Value = response.json().await.unwrap();
    assert_eq!(metadata["organizationId"], body["id"]);

    // A request id is made up when the client sends none.
    let response = app
        .admin(Method::GET, "/api/organizations")
        .send()
        .await
        .unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn both_services_answer_health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    app.create_organization("Acme").await;
    for base in [&app.command_url, &app.query_url] {
        for (path, expected) in [("/healthz", "ok"), ("/readyz", "ready")] {
            let response = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.text().await.unwrap(), expected);
        }
        let response = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
