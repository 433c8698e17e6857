//! `GET /api/audit-events` and `asOf` reads at their edges: who may read the trail, what each filter
//! narrows it to, bad input, written secrets, what a page reads (its own rows, never the log), and
//! point-in-time reads before a resource existed, after it was deleted and of another tenant's
//! resource.

use chrono::{SecondsFormat, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

async fn trail(app: &TestApp, sub: Option<&str>, query: &str) -> (u16, Value) {
    let path = format!("/api/audit-events?{query}");
    match sub {
        None => app.get(&path).await,
        Some(sub) => send(app.as_user(sub, Method::GET, &path)).await,
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[tokio::test]
async fn system_users_read_the_whole_trail_admins_their_organizations_and_nobody_else_any() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let globex = app.create_organization("Globex").await;
    app.create_environment(&acme, "Production").await;
    app.create_environment(&globex, "Production").await;
    app.add_member(&acme, "alice", "admin").await;
    app.add_member(&acme, "uma", "user").await;
    app.add_member(&acme, "gus", "guest").await;

    let (status, all) = trail(&app, None, "limit=100").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all["pagination"]["total"],
        json!(app.event_count().await),
        "one row per event of the log"
    );
    let organizations: Vec<Value> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["organizationId"].clone())
        .collect();
    assert!(organizations.contains(&json!(acme)) && organizations.contains(&json!(globex)));
    assert!(
        organizations.contains(&Value::Null),
        "System users see platform rows (user registrations) too"
    );

    let (status, own) = trail(&app, Some("alice"), "limit=100").await;
    assert_eq!(status, 200, "{own}");
    let rows = own["data"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|row| row["organizationId"] == json!(acme)));
    assert_eq!(own["pagination"]["total"], json!(rows.len()));

    let (status, hidden) = trail(&app, Some("alice"), &format!("organizationId={globex}")).await;
    assert_eq!(status, 404, "another tenant's trail is not found: {hidden}");
    let (status, _) = trail(&app, Some("alice"), &format!("organizationId={acme}")).await;
    assert_eq!(status, 200);

    for sub in ["uma", "gus"] {
        let (status, body) = trail(&app, Some(sub), "").await;
        assert_eq!(status, 403, "{sub}: {body}");
        assert_eq!(
            body["error"],
            "Forbidden: You do not have permission to read audit events"
        );
    }
    let (status, _) = send(app.request(Method::GET, "/api/audit-events")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn each_filter_narrows_the_trail_and_bad_filters_are_refused_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let alice = app.add_member(&acme, "alice", "admin").await;
    let production = app.create_environment(&acme, "Production").await;
    app.create_environment(&acme, "Staging").await;
    let before_rename = now();
    let (status, _) = send(
        app.as_user(
            "alice",
            Method::PUT,
            &format!("/api/environments/{production}"),
        )
        .json(&json!({ "name": "Prod" })),
    )
    .await;
    assert_eq!(status, 200);
    let after_rename = now();

    let types = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, by_type) = trail(
        &app,
        None,
        &format!("organizationId={acme}&resourceType=environment"),
    )
    .await;
    assert_eq!(
        types(&by_type),
        [
            "environment.updated",
            "environment.created",
            "environment.created"
        ]
    );
    assert_eq!(by_type["pagination"]["total"], 3);

    let (_, by_resource) = trail(&app, None, &format!("resourceId={production}")).await;
    assert_eq!(
        types(&by_resource),
        ["environment.updated", "environment.created"]
    );
    assert_eq!(
        by_resource["data"][0]["changes"],
        json!({ "name": { "from": "Production", "to": "Prod" } })
    );

    let (_, by_actor) = trail(&app, None, &format!("actor={alice}")).await;
    assert_eq!(
        types(&by_actor),
        ["environment.updated", "user.registered"],
        "her rename, and her own registration on her first request"
    );
    assert_eq!(by_actor["data"][0]["actor"]["role"], "admin");

    let (_, window) = trail(
        &app,
        None,
        &format!("from={before_rename}&to={after_rename}"),
    )
    .await;
    assert_eq!(types(&window), ["environment.updated"]);

    let (_, member_rows) = trail(
        &app,
        None,
        &format!("resourceType=member&resourceId={alice}"),
    )
    .await;
    assert_eq!(types(&member_rows), ["member.added"]);
    assert_eq!(member_rows["data"][0]["organizationId"], json!(acme));

    let (_, paged) = trail(&app, None, &format!("organizationId={acme}&limit=2&page=2")).await;
    assert_eq!(paged["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        paged["pagination"]["total"], 5,
        "organization, member, two environments, rename"
    );
    assert_eq!(paged["pagination"]["totalPages"], 3);

    for (query, field) in [
        ("resourceType=widget", "resourceType"),
        ("resourceId=not-a-uuid", "resourceId"),
        ("organizationId=42", "organizationId"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("limit=101", "limit"),
        ("page=0", "page"),
    ] {
        let (status, body) = trail(&app, None, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["details"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn no_audit_row_or_export_holds_a_written_secret() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let env = app.create_environment(&acme, "Production").await;
    let secrets = [
        "sk-audit-variable-value-1",
        "sk-audit-model-token-2",
        "ck-audit-client-key-3",
        "sk-audit-rotated-token-4",
    ];
    let (status, variable) = app
        .post(
            "/api/variables",
            json!({ "organizationId": acme, "environmentId": env, "name": "OPENAI_API_KEY", "value": secrets[0] }),
        )
        .await;
    assert_eq!(status, 201, "{variable}");
    let (status, model) = app
        .post(
            "/api/models",
            json!({ "organizationId": acme, "name": "GPT", "modelUrl": "https://m.test/v1",
                    "token": secrets[1], "clientKey": secrets[2] }),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let model_id = model["id"].as_str().unwrap();
    let (status, _) = app
        .put(
            &format!("/api/models/{model_id}"),
            json!({ "token": secrets[3], "clientKey": null }),
        )
        .await;
    assert_eq!(status, 200);

    let (status, page) = trail(&app, None, "limit=100").await;
    assert_eq!(status, 200);
    let export = app
        .admin(Method::GET, "/api/audit-events")
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page_text = page.to_string();
    for text in [&page_text, &export] {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{secret} leaked into the audit trail"
            );
        }
        assert!(
            !text.contains("v1."),
            "ciphertext leaked into the audit trail"
        );
    }
    let rows = page["data"].as_array().unwrap();
    let changes_of = |event_type: &str| {
        rows.iter()
            .find(|r| r["type"] == event_type)
            .map(|r| r["changes"].clone())
            .unwrap()
    };
    assert_eq!(
        changes_of("variable.created")["value"],
        json!({ "from": null, "to": "[redacted]" })
    );
    assert_eq!(
        changes_of("model.updated"),
        json!({
            "clientKey": { "from": "[redacted]", "to": null },
            "token": { "from": "[redacted]", "to": "[redacted]" },
        })
    );
    assert_eq!(export.lines().count(), rows.len());
}

#[tokio::test]
async fn as_of_reads_say_when_a_resource_did_not_exist_yet_or_was_deleted_and_hide_other_tenants() {
    let app = TestApp::spawn().await;
    let before_anything = now();
    let acme = app.create_organization("Acme").await;
    let globex = app.create_organization("Globex").await;
    app.add_member(&acme, "alice", "admin").await;
    let env = app.create_environment(&acme, "Production").await;
    let foreign = app.create_environment(&globex, "Production").await;
    let (status, model) = app
        .post(
            "/api/models",
            json!({ "organizationId": acme, "name": "GPT", "modelUrl": "https://m.test/v1" }),
        )
        .await;
    assert_eq!(status, 201);
    let model_id = model["id"].as_str().unwrap().to_owned();
    let while_named_acme = now();
    assert_eq!(
        app.put(
            &format!("/api/organizations/{acme}"),
            json!({ "name": "Acme Holdings" })
        )
        .await
        .0,
        200
    );
    let (status, _) = app.delete(&format!("/api/models/{model_id}")).await;
    assert_eq!(status, 200);
    let after_delete = now();

    let app = &app;
    let read = |path: String| async move { send(app.as_user("alice", Method::GET, &path)).await };
    let (status, body) = read(format!("/api/models/{model_id}?asOf={before_anything}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["details"].as_str().unwrap().contains("existed at"));

    let (status, then) = read(format!("/api/models/{model_id}?asOf={while_named_acme}")).await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["name"], "GPT");
    assert_eq!(then["organization"]["name"], "Acme", "the name it had then");

    let (status, gone) = read(format!("/api/models/{model_id}?asOf={after_delete}")).await;
    assert_eq!(status, 410, "{gone}");
    assert_eq!(gone["error"], "Model deleted");
    assert!(gone["details"].as_str().unwrap().contains("was deleted at"));
    let (status, _) = read(format!("/api/models/{model_id}")).await;
    assert_eq!(
        status, 404,
        "without asOf a deleted model is simply not found"
    );

    let (status, env_then) = read(format!("/api/environments/{env}?asOf={while_named_acme}")).await;
    assert_eq!(status, 200);
    assert_eq!(env_then["organization"]["name"], "Acme");
    let (status, org_now) = read(format!("/api/organizations/{acme}?asOf={after_delete}")).await;
    assert_eq!(status, 200);
    assert_eq!(org_now["name"], "Acme Holdings");

    // Another tenant's environment answers exactly as one that never existed.
    let missing = uuid::Uuid::now_v7();
    let (foreign_status, foreign_body) =
        read(format!("/api/environments/{foreign}?asOf={after_delete}")).await;
    let (missing_status, missing_body) =
        read(format!("/api/environments/{missing}?asOf={after_delete}")).await;
    assert_eq!((foreign_status, missing_status), (404, 404));
    assert_eq!(
        foreign_body["details"]
            .as_str()
            .unwrap()
            .replace(&foreign, "<id>"),
        missing_body["details"]
            .as_str()
            .unwrap()
            .replace(&missing.to_string(), "<id>")
    );

    let (status, body) = read(format!("/api/models/{model_id}?asOf=last-tuesday")).await;
    assert_eq!(status, 400);
    assert!(body["details"].as_str().unwrap().starts_with("asOf"));
}

/// Every row of `/api/audit-events?<query>` through the query-api at `base`, page by page.
async fn every_row(app: &TestApp, base: &str, query: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for page in 1.. {
        let (status, body) = send(
            app.http
                .get(format!(
                    "{base}/api/audit-events?{query}&limit=100&page={page}"
                ))
                .bearer_auth(&app.admin_token),
        )
        .await;
        assert_eq!(status, 200, "{query}: {body}");
        let data = body["data"].as_array().unwrap();
        if data.is_empty() {
            break;
        }
        rows.extend(data.iter().cloned());
    }
    rows
}

/// The NDJSON export of `/api/audit-events?<query>` through the query-api at `base`.
async fn export(app: &TestApp, base: &str, query: &str) -> String {
    let response = app
        .http
        .get(format!("{base}/api/audit-events?{query}"))
        .bearer_auth(&app.admin_token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The audit read model as rows of text, in a stable order.
async fn audit_tables(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT row_to_json(a)::text FROM read_models.audit_index a ORDER BY global_position",
        "SELECT row_to_json(c)::text FROM read_models.audit_counts c ORDER BY scope",
        "SELECT row_to_json(v)::text FROM read_models.audit_values v ORDER BY hash",
        "SELECT row_to_json(s)::text FROM read_models.audit_states s ORDER BY key",
    ] {
        let found: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
        rows.extend(found);
    }
    rows
}

#[tokio::test]
async fn audit_pages_and_exports_read_their_own_rows_and_not_the_log() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let env = app.create_environment(&acme, "Production").await;
    let bob = app.add_member(&acme, "bob", "user").await;
    app.add_member(&acme, "carol", "admin").await;
    for role in ["guest", "admin"] {
        let (status, _) = app
            .put(
                &format!("/api/organizations/{acme}/members/{bob}"),
                json!({ "role": role }),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, model) = app
        .post(
            "/api/models",
            json!({ "organizationId": acme, "name": "GPT", "modelUrl": "https://m.test/v1",
                    "token": "sk-stored-state-token" }),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let model = model["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .put(
            &format!("/api/models/{model}"),
            json!({ "token": "sk-stored-state-token-2" }),
        )
        .await;
    assert_eq!(status, 200);

    // A template with a history longer than two pages. Most versions are short; every fifth is one of
    // two long texts, which are stored apart, once each, however often they are shown.
    let long_a = format!("A long prompt. {}", "Answer politely. ".repeat(100));
    let long_b = format!("B long prompt. {}", "Answer briefly. ".repeat(100));
    let text = |n: usize| match n % 10 {
        5 => long_a.clone(),
        0 => long_b.clone(),
        _ => format!("Version {n}"),
    };
    let (status, template) = app
        .post(
            "/api/prompt-templates",
            json!({ "organizationId": acme, "environmentId": env, "name": "Long history",
                    "modelId": model, "promptText": text(1) }),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let template = template["id"].as_str().unwrap().to_owned();
    const VERSIONS: usize = 60;
    for n in 2..=VERSIONS {
        let (status, body) = app
            .put(
                &format!("/api/prompt-templates/{template}"),
                json!({ "promptText": text(n) }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // Each row of a later page shows its change from the version before, which that page does not hold.
    let of_template = format!("resourceId={template}&limit=25");
    let mut pages = Vec::new();
    for page in 1..=3 {
        let (status, body) = trail(&app, None, &format!("{of_template}&page={page}")).await;
        assert_eq!(status, 200, "{body}");
        for (i, row) in body["data"].as_array().unwrap().iter().enumerate() {
            let n = VERSIONS - (page - 1) * 25 - i;
            let from = if n == 1 {
                Value::Null
            } else {
                json!(text(n - 1))
            };
            assert_eq!(
                row["changes"]["promptText"],
                json!({ "from": from, "to": text(n) }),
                "version {n}, row {i} of page {page}"
            );
        }
        pages.push(body);
    }
    assert_eq!(pages[2]["data"].as_array().unwrap().len(), VERSIONS - 50);
    let long_values: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.audit_values")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(long_values, 2, "each long text is stored once");

    // The total of one resource's trail is kept per resource (and per organization that sees it).
    for (sub, query, total) in [
        (
            None,
            format!("resourceType=prompt_template&resourceId={template}"),
            VERSIONS,
        ),
        (None, format!("resourceType=model&resourceId={model}"), 2),
        (None, format!("resourceType=member&resourceId={bob}"), 3),
        (None, format!("resourceType=user&resourceId={bob}"), 1),
        (
            Some("carol"),
            format!("resourceType=member&resourceId={bob}"),
            3,
        ),
        (
            Some("carol"),
            format!("resourceType=user&resourceId={bob}"),
            0,
        ),
        (
            None,
            format!("organizationId={acme}&resourceType=member&resourceId={bob}"),
            3,
        ),
    ] {
        let (status, body) = trail(&app, sub, &format!("{query}&limit=100")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["pagination"]["total"], total, "{sub:?} {query}");
        assert_eq!(
            body["data"].as_array().unwrap().len(),
            total,
            "{sub:?} {query}"
        );
    }

    let whole = every_row(&app, &app.query_url, "").await;
    assert_eq!(whole.len() as i64, app.event_count().await);
    let of_acme = format!("organizationId={acme}");
    let exported = export(&app, &app.query_url, &of_acme).await;
    assert!(exported.lines().count() > VERSIONS + 6);
    assert!(!exported.contains("sk-stored-state-token"));

    // A query-api that may not read the log answers every page and export the same.
    let (restricted, role) = app.pool_without_the_log().await;
    let base = app.query_api_over(restricted.clone()).await;
    for (page, expected) in pages.iter().enumerate() {
        let path = format!("/api/audit-events?{of_template}&page={}", page + 1);
        let (status, body) = send(
            app.http
                .get(format!("{base}{path}"))
                .bearer_auth(&app.admin_token),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(&body, expected, "{path}");
    }
    assert_eq!(every_row(&app, &base, "").await, whole);
    assert_eq!(
        every_row(&app, &base, &format!("{of_acme}&resourceType=member")).await,
        every_row(
            &app,
            &app.query_url,
            &format!("{of_acme}&resourceType=member")
        )
        .await
    );
    assert_eq!(export(&app, &base, &of_acme).await, exported);
    assert_eq!(
        export(&app, &base, "").await,
        export(&app, &app.query_url, "").await
    );
    app.drop_role(restricted, &role).await;

    // Rebuilding the trail from the log stores the same rows, values and states, and verifying it
    // finds them equal.
    let tables = audit_tables(&app).await;
    projector::rebuild::rebuild(&app.db.pool, &projector::audit::Audit, |_| {})
        .await
        .unwrap();
    assert_eq!(audit_tables(&app).await, tables);
    let report = projector::verify::verify(&app.db.pool, &projector::audit::Audit, |_| {})
        .await
        .unwrap();
    assert!(report.matches(), "{:?}", report.tables);
    assert_eq!(report.tables.len(), 4);
    assert_eq!(every_row(&app, &app.query_url, "").await, whole);
}
