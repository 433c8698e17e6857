//! The permission matrix of contract §3 for every catalog endpoint (variables, models, system models,
//! workflows, workflow entities and their types, prompt templates, prompts), and tenant isolation:
//! another organization's catalog answers exactly like a missing one and never shows in lists.

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp, SYSTEM_ADMIN};

const EVENT_TYPE: &str = "01930000-0000-7000-8000-000000000101";

const ROLES: [(&str, &str); 4] = [
    ("system", SYSTEM_ADMIN),
    ("admin", "alice"),
    ("user", "uma"),
    ("guest", "gus"),
];

/// One catalog kind: its path, a valid body, and the permission word of its `403`s.
struct Kind {
    path: &'static str,
    body: Value,
    resource: &'static str,
    /// Which of system, admin, user, guest may create, update and delete.
    writers: [bool; 4],
}

struct World {
    org: String,
    env: String,
    model: String,
    entity: String,
}

fn kinds(w: &World) -> Vec<Kind> {
    let admins = [true, true, false, false];
    vec![
        Kind {
            path: "variables",
            resource: "variables",
            writers: admins,
            body: json!({"organizationId": w.org, "environmentId": w.env, "value": "v"}),
        },
        Kind {
            path: "models",
            resource: "entities",
            writers: admins,
            body: json!({"organizationId": w.org, "modelUrl": "https://m.example"}),
        },
        Kind {
            path: "workflows",
            resource: "workflows",
            writers: [true, true, true, false],
            body: json!({"organizationId": w.org, "workflowData": {"root": {"name": "a", "entityId": w.entity, "entityType": "event"}}}),
        },
        Kind {
            path: "workflow-entities",
            resource: "entities",
            writers: admins,
            body: json!({"organizationId": w.org, "workflowEntityTypeId": EVENT_TYPE}),
        },
        Kind {
            path: "workflow-entity-types",
            resource: "entities",
            writers: admins,
            body: json!({"organizationId": w.org}),
        },
        Kind {
            path: "prompt-templates",
            resource: "entities",
            writers: admins,
            body: json!({"organizationId": w.org, "environmentId": w.env, "promptText": "p", "modelId": w.model}),
        },
        Kind {
            path: "prompts",
            resource: "entities",
            writers: admins,
            body: json!({"organizationId": w.org, "content": "c", "modelId": w.model}),
        },
    ]
}

fn name_field(kind: &Kind) -> &'static str {
    if kind.path == "prompts" {
        "title"
    } else {
        "name"
    }
}

fn with_name(kind: &Kind, name: &str) -> Value {
    let mut body = kind.body.clone();
    body[name_field(kind)] = json!(name);
    body
}

async fn world(app: &TestApp) -> World {
    let org = app.create_organization("Acme Corp").await;
    for (role, sub) in &ROLES[1..] {
        app.add_member(&org, sub, role).await;
    }
    let env = app.create_environment(&org, "Production").await;
    let (_, model) = app
        .post(
            "/api/models",
            json!({"organizationId": org, "name": "Model", "modelUrl": "https://m.example"}),
        )
        .await;
    let (_, entity) = app
        .post(
            "/api/workflow-entities",
            json!({"organizationId": org, "name": "Entity", "workflowEntityTypeId": EVENT_TYPE}),
        )
        .await;
    World {
        org,
        env,
        model: model["id"].as_str().unwrap().into(),
        entity: entity["id"].as_str().unwrap().into(),
    }
}

async fn create(app: &TestApp, kind: &Kind, name: &str) -> String {
    let (status, body) = app
        .post(&format!("/api/{}", kind.path), with_name(kind, name))
        .await;
    assert_eq!(status, 201, "{}: {body}", kind.path);
    body["id"].as_str().unwrap().to_owned()
}

async fn expect(
    app: &TestApp,
    sub: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    allowed: u16,
    words: Option<String>,
) {
    let events = app.event_count().await;
    let mut request = app.as_user(sub, method.clone(), path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, answer) = send(request).await;
    let what = format!("{sub}: {method} {path}");
    match words {
        None => assert_eq!(status, allowed, "{what}: {answer}"),
        Some(words) => {
            assert_eq!(status, 403, "{what}: {answer}");
            assert_eq!(
                answer["error"],
                format!("Forbidden: You do not have permission to {words}"),
                "{what}"
            );
            assert_eq!(app.event_count().await, events, "{what} appended events");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_endpoint_answers_each_role_as_the_matrix_says() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let mut n = 0;
    for kind in kinds(&w) {
        let shared = create(&app, &kind, "Shared").await;
        for (i, (role, sub)) in ROLES.iter().enumerate() {
            let may_write = kind.writers[i];
            let refuse = |verb: &str| (!may_write).then(|| format!("{verb} {}", kind.resource));
            // Everyone in the organization reads.
            expect(
                &app,
                sub,
                Method::GET,
                &format!("/api/{}?organizationId={}", kind.path, w.org),
                None,
                200,
                None,
            )
            .await;
            expect(
                &app,
                sub,
                Method::GET,
                &format!("/api/{}/{shared}", kind.path),
                None,
                200,
                None,
            )
            .await;
            n += 1;
            expect(
                &app,
                sub,
                Method::POST,
                &format!("/api/{}", kind.path),
                Some(with_name(&kind, &format!("{role} {n}"))),
                201,
                refuse("create"),
            )
            .await;
            let target = create(&app, &kind, &format!("Target {n}")).await;
            let item = format!("/api/{}/{target}", kind.path);
            expect(
                &app,
                sub,
                Method::PUT,
                &item,
                Some(json!({ name_field(&kind): format!("Renamed {n}") })),
                200,
                refuse("update"),
            )
            .await;
            expect(
                &app,
                sub,
                Method::DELETE,
                &item,
                None,
                200,
                refuse("delete"),
            )
            .await;
        }
    }
    // Reads specific to some kinds: everyone in the organization may use them.
    let template = create(&app, &kinds(&w)[5], "Versioned").await;
    for (_, sub) in ROLES {
        for path in [
            format!("/api/prompt-templates/{template}/versions"),
            format!("/api/prompt-templates/{template}/versions/1"),
            format!("/api/workflow-entities/{}/usage-count", w.entity),
            "/api/system-models/visible".to_owned(),
            format!("/api/workflow-entity-types/{EVENT_TYPE}"),
        ] {
            expect(&app, sub, Method::GET, &path, None, 200, None).await;
        }
    }
    // System models and platform-wide entity types are the System role's alone.
    let (_, system_model) = app
        .post(
            "/api/system-models",
            json!({"name": "Shared", "modelUrl": "https://m.example", "visible": true}),
        )
        .await;
    let system_model = system_model["id"].as_str().unwrap();
    for (i, (_, sub)) in ROLES.iter().enumerate() {
        let system = i == 0;
        let refuse = |words: &str| (!system).then(|| words.to_owned());
        expect(
            &app,
            sub,
            Method::GET,
            "/api/system-models",
            None,
            200,
            refuse("read system models"),
        )
        .await;
        expect(
            &app,
            sub,
            Method::GET,
            &format!("/api/system-models/{system_model}"),
            None,
            200,
            refuse("read system models"),
        )
        .await;
        expect(
            &app,
            sub,
            Method::POST,
            "/api/system-models",
            Some(json!({"name": format!("S{i}"), "modelUrl": "https://m.example"})),
            201,
            refuse("create system models"),
        )
        .await;
        expect(
            &app,
            sub,
            Method::PUT,
            &format!("/api/system-models/{system_model}"),
            Some(json!({"description": format!("by {i}")})),
            200,
            refuse("update system models"),
        )
        .await;
        expect(
            &app,
            sub,
            Method::POST,
            "/api/workflow-entity-types",
            Some(json!({"name": format!("Platform {i}")})),
            201,
            refuse("create entities"),
        )
        .await;
        expect(
            &app,
            sub,
            Method::PUT,
            &format!("/api/workflow-entity-types/{EVENT_TYPE}"),
            Some(json!({"description": format!("by {i}")})),
            200,
            refuse("update entities"),
        )
        .await;
    }
    expect(
        &app,
        "gus",
        Method::DELETE,
        &format!("/api/system-models/{system_model}"),
        None,
        200,
        Some("delete system models".into()),
    )
    .await;
    expect(
        &app,
        SYSTEM_ADMIN,
        Method::DELETE,
        &format!("/api/system-models/{system_model}"),
        None,
        200,
        None,
    )
    .await;
}

#[tokio::test]
async fn another_tenants_catalog_answers_like_a_missing_one_and_never_appears_in_lists() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let other = app.create_organization("Other Corp").await;
    app.add_member(&other, "olga", "admin").await;
    let missing = uuid::Uuid::now_v7();
    for kind in kinds(&w) {
        let id = create(&app, &kind, "Private").await;
        let events = app.event_count().await;
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let mut answers = Vec::new();
            for target in [id.clone(), missing.to_string()] {
                let mut request = app.as_user(
                    "olga",
                    method.clone(),
                    &format!("/api/{}/{target}", kind.path),
                );
                if method == Method::PUT {
                    request = request.json(&json!({ name_field(&kind): "Mine now" }));
                }
                let (status, mut body) = send(request).await;
                body["details"] = body["details"]
                    .as_str()
                    .unwrap_or_default()
                    .replace(&target, "ID")
                    .into();
                answers.push((status, body));
            }
            assert_eq!(
                answers[0].0, 404,
                "{method} {}: {:?}",
                kind.path, answers[0]
            );
            assert_eq!(
                answers[0], answers[1],
                "{method} {}: another tenant's differs from a missing one",
                kind.path
            );
        }
        assert_eq!(app.event_count().await, events);
        let (status, _) = send(app.as_user(
            "olga",
            Method::GET,
            &format!("/api/{}?organizationId={}", kind.path, w.org),
        ))
        .await;
        assert_eq!(status, 404, "{}", kind.path);
        let (status, list) =
            send(app.as_user("olga", Method::GET, &format!("/api/{}", kind.path))).await;
        if status == 200 {
            let leaked: Vec<&Value> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["organizationId"] == json!(w.org))
                .collect();
            assert!(leaked.is_empty(), "{}: {leaked:?}", kind.path);
        } else {
            assert_eq!(status, 400, "{}: lists that need organizationId", kind.path);
        }
        // Nor can another tenant's resources be referred to.
        let mut foreign = with_name(&kind, "Sneaky");
        foreign["organizationId"] = json!(other);
        if foreign.get("environmentId").is_some()
            || foreign.get("modelId").is_some()
            || kind.path == "workflows"
        {
            let (status, answer) = send(
                app.as_user("olga", Method::POST, &format!("/api/{}", kind.path))
                    .json(&foreign),
            )
            .await;
            assert_eq!(status, 400, "{}: {answer}", kind.path);
        }
    }
}
