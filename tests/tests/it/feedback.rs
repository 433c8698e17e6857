//! The operator surface's triage queue over HTTP: capture by any member, classification and quality
//! kept with each submission, duplicate and burst groups (also under concurrent submissions), every
//! workflow move and the refused ones, group moves, filters and paging, and who may do what (System
//! only under `/api/v1/admin`, members of the organization for `POST /api/feedback`).

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

async fn submit(app: &TestApp, sub: &str, body: Value) -> (u16, Value) {
    send(app.as_user(sub, Method::POST, "/api/feedback").json(&body)).await
}

async fn items(app: &TestApp, query: &str) -> (i64, Vec<Value>) {
    let (status, page) = app.get(&format!("/api/v1/admin/feedback?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    (
        page["pagination"]["total"].as_i64().unwrap(),
        page["data"].as_array().unwrap().clone(),
    )
}

async fn transition(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    app.post(&format!("/api/v1/admin/feedback/{id}/transitions"), body)
        .await
}

#[tokio::test]
async fn members_report_feedback_that_operators_see_classified_and_others_cannot_reach() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let other = app.create_organization("Other").await;
    app.add_member(&acme, "guest-1", "guest").await;
    app.add_member(&other, "admin-2", "admin").await;

    let (status, report) = submit(
        &app,
        "guest-1",
        json!({ "organizationId": acme, "message": "Please add dark mode",
                "category": "ui", "page": "/settings", "metadata": { "browser": "firefox" } }),
    )
    .await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["state"], "open");
    assert_eq!(report["quality"], "short_actionable");
    assert_eq!(report["severity"], "medium");
    assert_eq!(report["groups"], json!([]));
    let (status, probe) = submit(
        &app,
        "guest-1",
        json!({ "organizationId": acme, "message": "' OR '1'='1' --", "severity": "low" }),
    )
    .await;
    assert_eq!(status, 201, "{probe}");
    assert_eq!(probe["groups"], json!(["sql"]));
    assert_eq!(probe["quality"], "security_probe");
    assert_eq!(
        probe["severity"], "high",
        "a probe's classes raise the severity it was sent with"
    );
    // An operator may turn classification off: reports are then recorded without attack classes.
    let unclassified = app
        .another_command_api_with(|config| config.feedback_classification = false)
        .await;
    let (status, plain) = send(
        app.http
            .post(format!("{unclassified}/api/feedback"))
            .bearer_auth(app.issuer.token("guest-1"))
            .json(&json!({ "organizationId": acme, "message": "' OR '1'='1' --" })),
    )
    .await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["groups"], json!([]));
    assert_ne!(plain["quality"], "security_probe");
    let (status, template) = submit(
        &app,
        "guest-1",
        json!({ "organizationId": acme, "message": "{{customer_name}} is not replaced in my template" }),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        template["groups"],
        json!([]),
        "the product's own variables are not template probes"
    );

    // Not a member: the organization does not exist for it. Bad input: 400 naming the field.
    let (status, _) = submit(
        &app,
        "admin-2",
        json!({ "organizationId": acme, "message": "hi" }),
    )
    .await;
    assert_eq!(status, 404);
    for (body, field) in [
        (
            json!({ "organizationId": acme, "message": "  " }),
            "message",
        ),
        (
            // Too long, but no probe (a run of one character would be reported as fuzzing, and listed).
            json!({ "organizationId": acme, "message": "word ".repeat(801) }),
            "message",
        ),
        (
            json!({ "organizationId": acme, "message": "ok", "severity": "urgent" }),
            "severity",
        ),
        (
            json!({ "organizationId": acme, "message": "ok", "metadata": [1] }),
            "metadata",
        ),
        (
            json!({ "organizationId": acme, "message": "ok", "extra": 1 }),
            "extra",
        ),
    ] {
        let (status, error) = submit(&app, "guest-1", body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["details"].as_str().unwrap().contains(field),
            "{error}"
        );
    }

    // The queue is the operators' alone.
    for path in [
        "/api/v1/admin/feedback",
        "/api/v1/admin/feedback/groups",
        &format!("/api/v1/admin/feedback/{}", report["id"].as_str().unwrap()),
    ] {
        let (status, error) = send(app.as_user("admin-2", Method::GET, path)).await;
        assert_eq!(status, 403, "{path}: {error}");
        assert_eq!(
            error["error"],
            "Forbidden: You do not have permission to read the operator surface"
        );
    }
    let (status, _) = send(
        app.as_user(
            "guest-1",
            Method::POST,
            &format!(
                "/api/v1/admin/feedback/{}/transitions",
                report["id"].as_str().unwrap()
            ),
        )
        .json(&json!({ "to": "triaged" })),
    )
    .await;
    assert_eq!(status, 403);

    let (total, rows) = items(&app, "").await;
    assert_eq!(total, 4);
    assert_eq!(rows[0]["id"], template["id"], "newest first");
    let (status, item) = app
        .get(&format!(
            "/api/v1/admin/feedback/{}",
            report["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(item["message"], "Please add dark mode");
    assert_eq!(item["metadata"], json!({ "browser": "firefox" }));
    assert_eq!(item["organizationId"], acme);
    assert!(item["groupId"].is_string(), "{item}");
    assert_eq!(item["submittedBy"]["role"], "guest");

    let (total, rows) = items(&app, "group=sql").await;
    assert_eq!((total, rows[0]["id"].clone()), (1, probe["id"].clone()));
    // Totals come from the kept counts for one filter, and are counted for several: the same answer.
    let (total, _) = items(&app, "quality=security_probe").await;
    assert_eq!(total, 1);
    let (total, _) = items(&app, "state=open").await;
    assert_eq!(total, 4);
    let (total, rows) = items(&app, "state=open&group=sql&source=user").await;
    assert_eq!((total, rows.len()), (1, 1));
    let (total, _) = items(&app, &format!("organizationId={other}")).await;
    assert_eq!(total, 0);
    let (total, rows) = items(&app, "search=DARK").await;
    assert_eq!((total, rows[0]["id"].clone()), (1, report["id"].clone()));
    let (_, rows) = items(&app, "sort=severity").await;
    assert_eq!(rows[0]["id"], probe["id"], "the most severe first");
    let (total, rows) = items(&app, "limit=1&page=2").await;
    assert_eq!((total, rows.len()), (4, 1));
    for query in [
        "state=closed",
        "group=xss",
        "sort=oldest",
        "mode=other",
        "severity=9",
        "from=yesterday",
    ] {
        let (status, error) = app.get(&format!("/api/v1/admin/feedback?{query}")).await;
        assert_eq!(status, 400, "{query}: {error}");
    }
}

#[tokio::test]
async fn the_workflow_moves_step_by_step_records_who_and_refuses_invalid_moves() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    app.add_member(&acme, "user-1", "user").await;
    let operator = app.user_id("operator").await;
    let (_, report) = submit(
        &app,
        "user-1",
        json!({ "organizationId": acme, "message": "Exports fail for big ranges" }),
    )
    .await;
    let id = report["id"].as_str().unwrap();

    let (status, error) = transition(&app, id, json!({ "to": "done" })).await;
    assert_eq!(status, 409, "open cannot jump to done: {error}");
    assert_eq!(error["error"], "Invalid transition");
    let (status, error) = transition(&app, id, json!({ "to": "finished" })).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = transition(
        &app,
        id,
        json!({ "to": "triaged", "assigneeId": uuid::Uuid::now_v7() }),
    )
    .await;
    assert_eq!(status, 400, "an assignee must be a user: {error}");
    let missing = uuid::Uuid::now_v7();
    let (status, _) = transition(&app, &missing.to_string(), json!({ "to": "triaged" })).await;
    assert_eq!(status, 404);

    for (to, note) in [
        ("triaged", "reproduced"),
        ("in_progress", "fixing"),
        ("done", "released in 1.4"),
        ("archived", "closed"),
    ] {
        let (status, moved) = transition(
            &app,
            id,
            json!({ "to": to, "note": note, "assigneeId": operator }),
        )
        .await;
        assert_eq!(status, 200, "{to}: {moved}");
        assert_eq!(moved["state"], to);
    }
    let (status, _) = transition(&app, id, json!({ "to": "in_progress" })).await;
    assert_eq!(status, 409, "archived items only reopen");

    let (_, item) = app.get(&format!("/api/v1/admin/feedback/{id}")).await;
    assert_eq!(item["state"], "archived");
    assert_eq!(item["assigneeId"], operator);
    let moves = item["transitions"].as_array().unwrap();
    assert_eq!(moves.len(), 4);
    assert_eq!(moves[0]["from"], "open");
    assert_eq!(moves[0]["to"], "triaged");
    assert_eq!(moves[0]["note"], "reproduced");
    assert_eq!(moves[0]["by"], app.admin_id);
    assert!(moves[3]["at"].as_str().unwrap().ends_with('Z'));

    // A stale If-Match is refused and moves nothing.
    let (status, _) = send(
        app.admin(
            Method::POST,
            &format!("/api/v1/admin/feedback/{id}/transitions"),
        )
        .header("if-match", "\"2\"")
        .json(&json!({ "to": "open" })),
    )
    .await;
    assert_eq!(status, 412);
    let (total, _) = items(&app, "state=archived").await;
    assert_eq!(total, 1);
    let (total, _) = items(&app, "state=open").await;
    assert_eq!(total, 0, "the kept count of the state it left");
}

#[tokio::test]
async fn duplicates_and_bursts_are_grouped_and_moved_once() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    for sub in ["a", "b", "c", "prober"] {
        app.add_member(&acme, sub, "user").await;
    }
    // The same report from three users, with different numbers: one duplicate group.
    for (sub, job) in [("a", 12), ("b", 345), ("c", 6789)] {
        let (status, _) = submit(
            &app,
            sub,
            json!({ "organizationId": acme, "message": format!("Export job {job} failed") }),
        )
        .await;
        assert_eq!(status, 201);
    }
    // Twenty probes from one source at once: one burst group, whatever order they commit in.
    let probes = (0..20).map(|n| {
        let app = &app;
        let acme = acme.clone();
        async move {
            submit(
                app,
                "prober",
                json!({ "organizationId": acme, "message": format!("<script>alert({n})</script> variant {}", "x".repeat(n)) }),
            )
            .await
        }
    });
    for (status, body) in futures::future::join_all(probes).await {
        assert_eq!(status, 201, "{body}");
    }

    let (status, groups) = app.get("/api/v1/admin/feedback/groups").await;
    assert_eq!(status, 200, "{groups}");
    let groups = groups["data"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let burst = groups.iter().find(|g| g["kind"] == "burst").unwrap();
    let duplicate = groups.iter().find(|g| g["kind"] == "duplicate").unwrap();
    assert_eq!(burst["items"], 20);
    assert_eq!(burst["counts"]["open"], 20);
    assert_eq!(duplicate["items"], 3);
    assert_eq!(duplicate["state"], "open");
    let (total, _) = items(&app, &format!("groupId={}", burst["id"].as_str().unwrap())).await;
    assert_eq!(total, 20, "every probe is in the burst group");

    // One move for the whole group, then archive it.
    let group_path = format!(
        "/api/v1/admin/feedback/groups/{}/transitions",
        duplicate["id"].as_str().unwrap()
    );
    let (status, error) = app.post(&group_path, json!({ "to": "done" })).await;
    assert_eq!(status, 409, "{error}");
    let (total, _) = items(&app, "state=open").await;
    assert_eq!(total, 23, "a refused group move moves nothing");
    for to in ["triaged", "done", "archived"] {
        let (status, moved) = app.post(&group_path, json!({ "to": to })).await;
        assert_eq!(status, 200, "{to}: {moved}");
        assert_eq!(moved["moved"].as_array().unwrap().len(), 3, "{moved}");
    }
    let (_, groups) = app
        .get("/api/v1/admin/feedback/groups?state=archived")
        .await;
    assert_eq!(groups["pagination"]["total"], 1);

    // A new duplicate of archived items reopens their group; moving it again skips the archived.
    let (_, again) = submit(
        &app,
        "a",
        json!({ "organizationId": acme, "message": "export JOB 42 FAILED" }),
    )
    .await;
    let (_, item) = app
        .get(&format!(
            "/api/v1/admin/feedback/{}",
            again["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(item["groupId"], duplicate["id"]);
    let (_, reopened) = app
        .get("/api/v1/admin/feedback/groups?kind=duplicate")
        .await;
    assert_eq!(reopened["data"][0]["state"], "open");
    assert_eq!(reopened["data"][0]["items"], 4);
    assert_eq!(reopened["data"][0]["counts"]["archived"], 3);
    let (status, moved) = app.post(&group_path, json!({ "to": "triaged" })).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["moved"], json!([again["id"]]));
    assert_eq!(moved["skipped"].as_array().unwrap().len(), 3);
}
