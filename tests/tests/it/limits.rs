//! What no client input can do: nest JSON deeper than every reader reads (one bound, checked at the
//! edge, held at exactly the limit through every reader), smuggle a NUL into a text field, wedge the
//! projections with an event they cannot apply, or hold reads and connections with waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commands::WriteSet;
use domain::json::MAX_DEPTH;
use query_api::consistency::ConsistencyConfig;
use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

const EVENT_TYPE: &str = "01930000-0000-7000-8000-000000000101";

/// `levels` arrays nested around a string.
fn arrays(levels: usize) -> Value {
    (0..levels).fold(json!("x"), |inner, _| json!([inner]))
}

fn depth(body: &Value) -> usize {
    domain::json::depth(&serde_json::to_vec(body).unwrap())
}

/// `make(n)` with `n` chosen so the body nests exactly `MAX_DEPTH + over` levels.
fn at_limit(make: &dyn Fn(usize) -> Value, over: usize) -> Value {
    let base = depth(&make(0));
    let body = make(MAX_DEPTH + over - base);
    assert_eq!(depth(&body), MAX_DEPTH + over);
    body
}

/// A workflow as deep as workflows may be, with a free-form `presentation` on its deepest node.
fn deepest_tree(org: &str, presentation: Value) -> Value {
    let mut node =
        json!({"name": "leaf", "entityType": "event", "presentation": {"shape": presentation}});
    for _ in 1..domain::catalog::kinds::WORKFLOW_MAX_DEPTH {
        node = json!({"name": "n", "entityType": "event", "children": [node]});
    }
    json!({"organizationId": org, "name": "Deep", "workflowData": {"root": node}})
}

#[tokio::test]
async fn every_free_form_field_is_readable_through_every_reader_at_the_nesting_limit_and_refused_past_it(
) {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Deep Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let (o, e) = (org.clone(), env.clone());
    type Make = Box<dyn Fn(usize) -> Value>;
    let cases: Vec<(&str, &str, Make)> = vec![
        (
            "/api/workflows",
            "workflowData",
            Box::new(move |n| deepest_tree(&o, arrays(n))),
        ),
        ("/api/workflows", "workflowData", {
            let o = org.clone();
            Box::new(move |n| {
                json!({"organizationId": o, "name": "Drawn", "workflowData": {"root":
                    {"name": "n", "entityType": "event", "presentation": {"position": arrays(n)}}}})
            })
        }),
        ("/api/workflow-entities", "condition", {
            let o = org.clone();
            Box::new(move |n| {
                json!({"organizationId": o, "name": "E", "workflowEntityTypeId": EVENT_TYPE,
                    "condition": {"type": "group", "operator": "AND", "conditions": [
                        {"type": "rule", "field": "f", "comparison": "in", "value": arrays(n)}]}})
            })
        }),
        (
            "/api/prompt-templates",
            "variableSets",
            Box::new(move |n| {
                json!({"organizationId": org, "environmentId": e, "name": "T", "promptText": "p",
                    "variables": {"v": "array"}, "variableSets": [{"name": "s", "values": {"v": arrays(n)}}]})
            }),
        ),
    ];
    let mut created = Vec::new();
    for (path, field, make) in &cases {
        let events = app.event_count().await;
        let (status, answer) = app.post(path, at_limit(make.as_ref(), 1)).await;
        assert_eq!(status, 400, "{path} past the limit: {answer}");
        let details = answer["details"].as_str().unwrap_or_default();
        assert!(details.starts_with(field), "{path}: {details}");
        assert!(details.contains(&MAX_DEPTH.to_string()), "{details}");
        assert_eq!(app.event_count().await, events, "{path} appended events");

        let body = at_limit(make.as_ref(), 0);
        let (status, answer) = app.post(path, body.clone()).await;
        assert_eq!(status, 201, "{path} at the limit: {answer}");
        // Reads show the field as the write's answer did (normalised: absent optionals as null).
        created.push((
            path,
            field,
            answer.clone(),
            answer["id"].as_str().unwrap().to_owned(),
        ));
    }

    // A change at the limit too, so that an audit row carries a deep value on both sides.
    let (path, body, id) = (created[0].0, created[0].2.clone(), created[0].3.clone());
    let mut changed = body.clone();
    changed["workflowData"]["root"]["name"] = json!("renamed root");
    let (status, _) = app
        .put(
            &format!("{path}/{id}"),
            json!({"workflowData": changed["workflowData"]}),
        )
        .await;
    assert_eq!(status, 200);
    created[0].2 = changed;

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (path, field, body, id) in &created {
        let (status, read) = app.get(&format!("{path}/{id}")).await;
        assert_eq!(status, 200, "{path}/{id}: {read}");
        assert_eq!(read[*field], body[*field], "{path}: the read model");
        let (status, list) = app
            .get(&format!(
                "{path}?organizationId={}",
                body["organizationId"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200, "{path} list: {list}");
        assert!(list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[*field] == body[*field]));
        let (status, past) = app.get(&format!("{path}/{id}?asOf={now}")).await;
        assert_eq!(status, 200, "{path} asOf: {past}");
        assert_eq!(past[*field], body[*field]);
        let (status, trail) = app.get(&format!("/api/audit-events?resourceId={id}")).await;
        assert_eq!(status, 200, "{path} audit: {trail}");
        let rows = trail["data"]
            .as_array()
            .expect("an audit page a client can decode");
        assert_eq!(
            rows[0]["changes"][*field]["to"], body[*field],
            "{path}: the newest audit row's change"
        );
        let export = app
            .admin(Method::GET, &format!("/api/audit-events?resourceId={id}"))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in export.lines() {
            serde_json::from_str::<Value>(line).expect("an export line a client can decode");
        }
    }
    let (_, _, template, id) = &created[3];
    let (status, versions) = app
        .get(&format!("/api/prompt-templates/{id}/versions"))
        .await;
    assert_eq!(status, 200, "{versions}");
    assert_eq!(
        versions["data"][0]["variableSets"],
        template["variableSets"]
    );

    // The operator commands read the whole log, these events included.
    for projection in projector::projections() {
        projector::rebuild::rebuild(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
        let report = projector::verify::verify(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
        assert!(report.matches(), "{}", report.projection);
    }
    projector::replay::replay(
        &app.db.pool,
        projector::scratch::Until::End,
        "deep_audit",
        |_| {},
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_nul_character_in_any_text_field_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Nul Corp").await;
    let cases = [
        ("/api/organizations", json!({"name": "a\u{0}b"}), "name"),
        (
            "/api/organizations",
            json!({"name": "ok", "description": "a\u{0}"}),
            "description",
        ),
        (
            "/api/workflows",
            json!({"organizationId": org, "name": "W", "workflowData": {"root": {"name": "n", "entityType": "event", "presentation": {"label": ["ok", "\u{0}"]}}}}),
            "workflowData.root.presentation.label[1]",
        ),
    ];
    for (path, body, field) in cases {
        let events = app.event_count().await;
        let (status, answer) = app.post(path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
        assert_eq!(app.event_count().await, events);
    }
}

/// Appends one event straight to the log, as a bug or a log written by an older version could.
async fn append_raw(app: &TestApp, stream: &str, event_type: &str, data: Value) -> i64 {
    let event = domain::NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        data,
        metadata: tests::metadata(&app.admin_id, None),
        recorded_at: chrono::Utc::now(),
    };
    let appended =
        commands::testing::commit(&app.db.pool, WriteSet::append(stream, 0, vec![event]))
            .await
            .unwrap();
    appended.position.global_position
}

#[tokio::test]
async fn an_event_nested_past_what_serde_reads_by_default_stops_no_projection() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Legacy Corp").await;
    // The write side used to accept 256 levels; such an event must not stop the log's readers.
    let id = uuid::Uuid::now_v7();
    append_raw(
        &app,
        &format!("workflow-{id}"),
        "workflow.created",
        json!({"id": id, "organizationId": org, "environmentId": null, "name": "Old", "description": null,
               "workflowData": {"root": {"name": "n", "entityType": "event", "presentation": {"p": arrays(250)}, "children": []}}}),
    )
    .await;
    let env = app.create_environment(&org, "After").await;
    let (status, read) = app.get(&format!("/api/environments/{env}")).await;
    assert_eq!(status, 200, "{read}");
    let (status, list) = app
        .get(&format!("/api/variables?organizationId={org}"))
        .await;
    assert_eq!(
        status, 200,
        "the catalog read model went past the event: {list}"
    );
}

#[tokio::test]
async fn a_projection_that_cannot_apply_an_event_says_where_and_reads_waiting_on_it_fail_at_once() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Broken Corp").await;
    let id = uuid::Uuid::now_v7();
    let position = append_raw(
        &app,
        &format!("workflow-{id}"),
        "workflow.created",
        json!({"id": "not a uuid"}),
    )
    .await;

    // The catalog runner isolates the event and records it.
    let mut stuck = None;
    for _ in 0..200 {
        let statuses = event_log::status::statuses(&app.db.pool).await.unwrap();
        let catalog = statuses.into_iter().find(|s| s.name == "catalog").unwrap();
        if catalog.failed_attempts >= 2 && catalog.failed_position.is_some() {
            stuck = Some(catalog);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stuck = stuck.expect("the catalog projection records where it is stuck");
    assert_eq!(stuck.failed_position, Some(position));
    let failure = stuck.failure().unwrap();
    assert!(
        failure.contains(&position.to_string()) && failure.contains("catalog"),
        "{failure}"
    );

    // Operators see it on the projector's own surface.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let ops = tests::serve(projector::ops::router(app.db.pool.clone(), metrics)).await;
    let ready = reqwest::get(format!("http://{ops}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("catalog") && text.contains(&position.to_string()),
        "{text}"
    );
    let scraped = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scraped.contains(&format!(
            "projection_failure_info{{projection=\"catalog\",position=\"{position}\""
        )),
        "{scraped}"
    );

    // Reads that need the catalog past the event fail at once, saying so; the others go on.
    let (status, answer) = app
        .get(&format!("/api/workflows?organizationId={org}"))
        .await;
    assert_eq!(status, 503, "{answer}");
    let details = answer["details"].as_str().unwrap();
    assert!(
        details.contains("catalog read model has stopped")
            && details.contains(&position.to_string()),
        "{details}"
    );
    let env = app.create_environment(&org, "Still working").await;
    let (status, _) = app.get(&format!("/api/environments/{env}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_consistency_token_past_the_end_of_the_log_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let (status, answer) = send(
        app.admin(Method::GET, "/api/organizations")
            .header("x-consistency-token", "ffffffff.ffffffff"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["details"]
        .as_str()
        .unwrap()
        .starts_with("X-Consistency-Token"));
}

#[tokio::test]
async fn hundreds_of_waiting_reads_cost_one_watcher_and_leave_the_pool_to_other_reads() {
    const WAITERS: usize = 300;
    let mut app = TestApp::spawn_with(
        20,
        ConsistencyConfig {
            max_wait: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let org = app.create_organization("Busy Corp").await;
    // Wait for the organization, then stop the projector: the next write cannot be reflected.
    assert_eq!(app.get(&format!("/api/organizations/{org}")).await.0, 200);
    app.stop_projector();
    app.create_environment(&org, "Pending").await;

    let app = Arc::new(app);
    let finished = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (app, finished, org) = (app.clone(), finished.clone(), org.clone());
            tokio::spawn(async move {
                let answer = app
                    .get(&format!("/api/environments?organizationId={org}"))
                    .await;
                finished.fetch_add(1, Ordering::SeqCst);
                answer
            })
        })
        .collect();
    while app.consistency.waiting() < WAITERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reads_before = app.consistency.checkpoint_reads();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let (status, _) = send(
            app.admin(Method::GET, &format!("/api/organizations/{org}"))
                .header("consistency", "eventual"),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "every wait is still open"
    );
    assert_eq!(app.consistency.waiting(), WAITERS);
    // However many wait, the database is asked at one watcher's pace (a read every 50 ms at most,
    // plus one per notification), not at each waiter's.
    let polls = app.consistency.checkpoint_reads() - reads_before;
    let one_watcher = started.elapsed().as_millis() as u64 / 50 + 10;
    assert!(
        polls <= one_watcher,
        "{polls} checkpoint reads while {WAITERS} reads waited (one watcher: {one_watcher})"
    );

    // Once the projector runs again, every wait ends with the write reflected.
    let _projector = projector::spawn_workers(&app.db.pool, Default::default());
    for waiter in waiters {
        let (status, page) = waiter.await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["pagination"]["total"], 1);
    }
}

#[tokio::test]
async fn reads_over_the_waiting_cap_are_refused_with_retry_after() {
    let mut app = TestApp::spawn_with(
        20,
        ConsistencyConfig {
            max_wait: Duration::from_secs(10),
            max_waiters: 4,
        },
    )
    .await;
    let org = app.create_organization("Capped Corp").await;
    assert_eq!(app.get(&format!("/api/organizations/{org}")).await.0, 200);
    app.stop_projector();
    app.create_environment(&org, "Pending").await;
    let app = Arc::new(app);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.get("/api/organizations").await.0 })
        })
        .collect();
    while app.consistency.waiting() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = app
        .admin(Method::GET, "/api/organizations")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("already waiting"),
        "{body}"
    );
    let _projector = projector::spawn_workers(&app.db.pool, Default::default());
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), 200);
    }
}
