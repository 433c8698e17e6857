//! The catalog resources through the REST API: the catalog description's request examples (contract
//! §8, `events/docs/contract.md`) sent verbatim (with real ids), each resource's life cycle, lists,
//! partial updates and references between resources.

use serde_json::{json, Value};
use tests::TestApp;

/// The built-in `Event` workflow entity type (domain::catalog::kinds::BUILT_IN_ENTITY_TYPES).
const EVENT_TYPE: &str = "01930000-0000-7000-8000-000000000101";

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys
}

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, created) = app.post(path, body).await;
    assert_eq!(status, 201, "POST {path}: {created}");
    created
}

/// An organization and an environment, as in the catalog description's examples.
async fn tenant(app: &TestApp) -> (String, String) {
    let org = app.create_organization("Acme Corp").await;
    let env = app.create_environment(&org, "Production").await;
    (org, env)
}

#[tokio::test]
async fn the_seed_examples_answer_with_the_seed_fields() {
    let app = TestApp::spawn().await;
    let (org, env) = tenant(&app).await;

    let variable = created(
        &app,
        "/api/variables",
        json!({"organizationId": org, "environmentId": env, "name": "OPENAI_API_KEY", "value": "sk-proj-xxxxxxxxxxxx"}),
    )
    .await;
    assert_eq!(variable["name"], "OPENAI_API_KEY");
    assert_eq!(variable["organizationId"], org.as_str());
    assert_eq!(variable["environmentId"], env.as_str());
    assert_eq!(variable["hasValue"], true);
    assert!(variable.get("value").is_none());
    for field in [
        "id",
        "organizationId",
        "environmentId",
        "name",
        "createdAt",
        "updatedAt",
    ] {
        assert!(variable.get(field).is_some(), "variable lacks {field}");
    }

    let model = created(
        &app,
        "/api/models",
        json!({"organizationId": org, "name": "GPT-4 Turbo", "description": "Production model",
               "modelUrl": "https://api.openai.com/v1/chat/completions", "token": "sk-proj-xxxxxxxxxxxx"}),
    )
    .await;
    assert_eq!(
        keys(&model),
        sorted(&[
            "id",
            "organizationId",
            "organization",
            "name",
            "description",
            "modelUrl",
            // Beyond the seed's fields: how the model is called and what it costs.
            "provider",
            "providerModel",
            "inputPricePerMillionTokens",
            "outputPricePerMillionTokens",
            "currency",
            "hasToken",
            "hasClientKey",
            "hasSecretKey",
            "createdAt",
            "updatedAt"
        ])
    );
    assert_eq!(model["hasToken"], true);
    assert_eq!(model["hasClientKey"], false);
    let model_id = model["id"].as_str().unwrap().to_owned();

    let entity = created(
        &app,
        "/api/workflow-entities",
        json!({"organizationId": org, "name": "Check User Type", "description": "Evaluates if user is premium",
               "workflowEntityTypeId": EVENT_TYPE,
               "condition": {"type": "group", "operator": "AND", "conditions": [
                   {"type": "rule", "field": "message.type", "comparison": "equals", "value": "user.signup"}]},
               "script": "// Optional post-condition script", "tfCondition": "True/False",
               "arguments": [{"argumentName": "userId", "argumentValue": "{{message.user.id}}",
                              "argumentDescription": "The user's unique identifier"}]}),
    )
    .await;
    assert_eq!(entity["condition"]["conditions"][0]["comparison"], "equals");
    assert_eq!(entity["arguments"][0]["argumentName"], "userId");
    let entity_id = entity["id"].as_str().unwrap().to_owned();

    let workflow = created(
        &app,
        "/api/workflows",
        json!({"organizationId": org, "environmentId": env, "name": "New User Welcome",
               "description": "Welcome flow for new signups",
               "workflowData": {"root": {"name": "Check User", "entityId": entity_id, "entityType": "event",
                   "presentation": {"type": "circle", "position": {"x": 100, "y": 200}}, "children": []}}}),
    )
    .await;
    assert_eq!(
        workflow["workflowData"]["root"]["entityId"],
        entity_id.as_str()
    );
    assert_eq!(workflow["environment"]["name"], "Production");

    let template = created(
        &app,
        "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "Welcome Message Generator",
               "description": "Generates personalized welcome messages",
               "promptText": "You are a friendly assistant. Write a warm welcome message for {{userName}} who just joined {{productName}}. Keep it under 280 characters.",
               "modelId": model_id, "variables": {"userName": "string", "productName": "string"},
               "variableSets": [{"name": "Happy User", "values": {"userName": "Sarah", "productName": "Pulse"}}]}),
    )
    .await;
    for field in [
        "id",
        "name",
        "description",
        "promptText",
        "version",
        "modelId",
        "model",
        "organization",
        "environment",
        "variables",
        "variableSets",
        "rawSentimentAnalysis",
        "resultSentimentAnalysis",
        "createdAt",
        "updatedAt",
    ] {
        assert!(template.get(field).is_some(), "template lacks {field}");
    }
    assert_eq!(template["version"], 1);
    assert_eq!(
        template["model"],
        json!({"id": model_id, "name": "GPT-4 Turbo"})
    );
    assert_eq!(template["organization"], json!({"name": "Acme Corp"}));
    assert_eq!(template["environment"], json!({"name": "Production"}));
    assert_eq!(template["rawSentimentAnalysis"], Value::Null);
    let template_id = template["id"].as_str().unwrap().to_owned();

    let (status, updated) = app
        .put(
            &format!("/api/prompt-templates/{template_id}"),
            json!({"name": "Welcome Message v2", "promptText": "Create an exciting welcome for {{userName}}!",
                   "variableSets": [{"name": "Test 1", "values": {"userName": "Alex"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["name"], "Welcome Message v2");
    assert_eq!(
        updated["description"],
        "Generates personalized welcome messages"
    );

    let prompt = created(
        &app,
        "/api/prompts",
        json!({"organizationId": org, "modelId": model_id, "title": "Customer Support Response",
               "content": "You are a helpful customer support agent. Respond to: {{customerMessage}}",
               "outputFormat": "text", "outputTemplate": null}),
    )
    .await;
    for field in [
        "id",
        "organizationId",
        "modelId",
        "model",
        "organization",
        "title",
        "content",
        "outputFormat",
        "outputTemplate",
        "createdAt",
        "updatedAt",
    ] {
        assert!(prompt.get(field).is_some(), "prompt lacks {field}");
    }
    assert_eq!(prompt["model"]["name"], "GPT-4 Turbo");
    let prompt_id = prompt["id"].as_str().unwrap().to_owned();
    let (status, updated) = app
        .put(
            &format!("/api/prompts/{prompt_id}"),
            json!({"title": "Customer Support Response v2",
                   "content": "You are an empathetic support agent. Address: {{customerMessage}}",
                   "outputFormat": "json",
                   "outputTemplate": "{ \"response\": \"{{response}}\", \"sentiment\": \"{{sentiment}}\" }"}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["outputFormat"], "json");

    // Every write reads back as it was answered.
    for (path, written) in [
        (
            format!("/api/variables/{}", variable["id"].as_str().unwrap()),
            &variable,
        ),
        (format!("/api/models/{model_id}"), &model),
        (format!("/api/workflow-entities/{entity_id}"), &entity),
        (
            format!("/api/workflows/{}", workflow["id"].as_str().unwrap()),
            &workflow,
        ),
        (format!("/api/prompts/{prompt_id}"), &updated),
    ] {
        let (status, read) = app.get(&path).await;
        assert_eq!(status, 200, "GET {path}: {read}");
        assert_eq!(&read, written, "GET {path}");
    }

    let (status, deleted) = app.delete(&format!("/api/prompts/{prompt_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(deleted, json!({"success": true, "id": prompt_id}));
    let (status, _) = app.get(&format!("/api/prompts/{prompt_id}")).await;
    assert_eq!(status, 404);
}

/// What every kind needs for a life-cycle test: where it lives, a valid body for a given name, and a
/// partial update with the field it changes.
struct Case {
    path: &'static str,
    body: Value,
    update: Value,
    /// The field names and searches match (`title` for prompts).
    name_field: &'static str,
}

/// One valid resource of every kind, inside `org`/`env`, referring to `model` and `entity`.
fn cases(org: &str, env: &str, model: &str, entity: &str) -> Vec<Case> {
    vec![
        Case {
            path: "variables",
            body: json!({"organizationId": org, "environmentId": env, "value": "v"}),
            update: json!({"description": "rotated monthly"}),
            name_field: "name",
        },
        Case {
            path: "models",
            body: json!({"organizationId": org, "modelUrl": "https://models.example/v1"}),
            update: json!({"modelUrl": "https://models.example/v2"}),
            name_field: "name",
        },
        Case {
            path: "system-models",
            body: json!({"modelUrl": "https://models.example/v1", "visible": true}),
            update: json!({"visible": false}),
            name_field: "name",
        },
        Case {
            path: "workflows",
            body: json!({"organizationId": org, "environmentId": env,
                         "workflowData": {"root": {"name": "Start", "entityId": entity, "entityType": "event"}}}),
            update: json!({"workflowData": {"root": null}}),
            name_field: "name",
        },
        Case {
            path: "workflow-entities",
            body: json!({"organizationId": org, "environmentId": env, "workflowEntityTypeId": EVENT_TYPE}),
            update: json!({"script": "return true;"}),
            name_field: "name",
        },
        Case {
            path: "workflow-entity-types",
            body: json!({"organizationId": org}),
            update: json!({"description": "Custom"}),
            name_field: "name",
        },
        Case {
            path: "prompt-templates",
            body: json!({"organizationId": org, "environmentId": env, "promptText": "Hello", "modelId": model}),
            update: json!({"promptText": "Hello again"}),
            name_field: "name",
        },
        Case {
            path: "prompts",
            body: json!({"organizationId": org, "modelId": model, "content": "Hi"}),
            update: json!({"content": "Hi there"}),
            name_field: "title",
        },
    ]
}

fn named(case: &Case, name: &str) -> Value {
    let mut body = case.body.clone();
    body[case.name_field] = json!(name);
    body
}

/// A tenant with a model and a workflow entity, for resources that refer to them.
async fn fixtures(app: &TestApp) -> (String, String, String, String) {
    let (org, env) = tenant(app).await;
    let model = created(
        app,
        "/api/models",
        json!({"organizationId": org, "name": "Fixture model", "modelUrl": "https://models.example/v1"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entity = created(
        app,
        "/api/workflow-entities",
        json!({"organizationId": org, "name": "Fixture entity", "workflowEntityTypeId": EVENT_TYPE}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (org, env, model, entity)
}

/// The rows of a list that this test created (fixtures and built-in types are there too).
fn names_in(list: &Value, field: &str, prefix: &str) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row[field].as_str())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_kind_is_created_read_listed_updated_and_deleted() {
    let app = TestApp::spawn().await;
    let (org, env, model, entity) = fixtures(&app).await;
    for case in cases(&org, &env, &model, &entity) {
        let path = case.path;
        let field = case.name_field;
        let mut ids = Vec::new();
        for name in ["Case Alpha", "Case Beta", "Case Gamma 50%"] {
            ids.push(
                created(&app, &format!("/api/{path}"), named(&case, name)).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let scope = if path == "system-models" {
            String::new()
        } else {
            format!("organizationId={org}&")
        };

        // Newest first, paginated with exact totals.
        let (status, all) = app.get(&format!("/api/{path}?{scope}limit=100")).await;
        assert_eq!(status, 200, "{path}: {all}");
        assert_eq!(
            names_in(&all, field, "Case "),
            ["Case Gamma 50%", "Case Beta", "Case Alpha"],
            "{path}"
        );
        let total = all["pagination"]["total"].as_i64().unwrap();
        let (_, page2) = app.get(&format!("/api/{path}?{scope}limit=2&page=2")).await;
        assert_eq!(page2["pagination"]["total"], total, "{path}");
        assert_eq!(page2["pagination"]["totalPages"], (total + 1) / 2, "{path}");
        assert_eq!(
            page2["data"].as_array().unwrap().len(),
            (total as usize - 2).min(2),
            "{path}"
        );

        // Search is a case-insensitive substring match, with % taken literally.
        let (_, found) = app.get(&format!("/api/{path}?{scope}search=bEtA")).await;
        assert_eq!(names_in(&found, field, ""), ["Case Beta"], "{path}");
        assert_eq!(found["pagination"]["total"], 1, "{path}");
        let (_, percent) = app.get(&format!("/api/{path}?{scope}search=50%25")).await;
        assert_eq!(names_in(&percent, field, ""), ["Case Gamma 50%"], "{path}");

        if case.body.get("environmentId").is_some() {
            let other_env = app
                .create_environment(&org, &format!("Staging {path}"))
                .await;
            let (_, none) = app
                .get(&format!("/api/{path}?{scope}environmentId={other_env}"))
                .await;
            assert_eq!(none["pagination"]["total"], 0, "{path}");
            assert_eq!(
                none["data"],
                json!([]),
                "{path}: rows of another environment"
            );
            let (_, here) = app
                .get(&format!("/api/{path}?{scope}environmentId={env}"))
                .await;
            assert_eq!(names_in(&here, field, "Case ").len(), 3, "{path}");
            assert_eq!(
                here["pagination"]["total"],
                here["data"].as_array().unwrap().len(),
                "{path}"
            );
        }

        // A partial update changes what it names and nothing else.
        let item = format!("/api/{path}/{}", ids[0]);
        let (_, before) = app.get(&item).await;
        let (status, after) = app.put(&item, case.update.clone()).await;
        assert_eq!(status, 200, "PUT {item}: {after}");
        for (key, value) in before.as_object().unwrap() {
            match case.update.get(key) {
                Some(changed) => assert_eq!(&after[key], changed, "{path}.{key}"),
                None if key == "updatedAt" || key == "version" => {}
                None => assert_eq!(&after[key], value, "{path}.{key} changed"),
            }
        }
        let (_, read) = app.get(&item).await;
        assert_eq!(read, after, "{path}");

        // Delete answers as the API does (contract §4); the resource is gone from reads and lists.
        let (status, deleted) = app.delete(&item).await;
        assert_eq!(status, 200, "DELETE {item}: {deleted}");
        assert_eq!(deleted, json!({"success": true, "id": ids[0]}));
        let (status, _) = app.get(&item).await;
        assert_eq!(status, 404, "{path}");
        let (status, _) = app.delete(&item).await;
        assert_eq!(status, 404, "{path}");
        let (_, after_delete) = app.get(&format!("/api/{path}?{scope}limit=100")).await;
        assert_eq!(after_delete["pagination"]["total"], total - 1, "{path}");
    }
}

#[tokio::test]
async fn names_are_unique_where_the_api_says_case_insensitively() {
    let app = TestApp::spawn().await;
    let (org, env, model, entity) = fixtures(&app).await;
    let other_env = app.create_environment(&org, "Staging").await;
    for case in cases(&org, &env, &model, &entity) {
        if matches!(case.path, "workflows" | "workflow-entities" | "prompts") {
            continue;
        }
        created(
            &app,
            &format!("/api/{}", case.path),
            named(&case, "Unique Name"),
        )
        .await;
        let events = app.event_count().await;
        let (status, body) = app
            .post(&format!("/api/{}", case.path), named(&case, "unique NAME"))
            .await;
        assert_eq!(status, 409, "{}: {body}", case.path);
        assert!(
            body["details"].as_str().unwrap().contains("unique NAME"),
            "{body}"
        );
        assert_eq!(app.event_count().await, events);
        // Environment-scoped names may repeat in another environment.
        if case.body.get("environmentId").is_some() {
            let mut elsewhere = named(&case, "Unique Name");
            elsewhere["environmentId"] = json!(other_env);
            created(&app, &format!("/api/{}", case.path), elsewhere).await;
        }
    }
    // A renamed resource frees its old name.
    let first = created(
        &app,
        "/api/models",
        json!({"organizationId": org, "name": "Old", "modelUrl": "https://m.example"}),
    )
    .await;
    let (status, _) = app
        .put(
            &format!("/api/models/{}", first["id"].as_str().unwrap()),
            json!({"name": "New"}),
        )
        .await;
    assert_eq!(status, 200);
    created(
        &app,
        "/api/models",
        json!({"organizationId": org, "name": "old", "modelUrl": "https://m.example"}),
    )
    .await;
}

#[tokio::test]
async fn deleting_what_others_refer_to_is_refused_until_the_reference_is_gone() {
    let app = TestApp::spawn().await;
    let (org, env, model, entity) = fixtures(&app).await;
    let template = created(
        &app,
        "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "T", "promptText": "p", "modelId": model}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let workflow = created(
        &app,
        "/api/workflows",
        json!({"organizationId": org, "name": "W",
               "workflowData": {"root": {"name": "a", "entityId": entity, "entityType": "event"}}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entity_type = created(
        &app,
        "/api/workflow-entity-types",
        json!({"organizationId": org, "name": "Webhook"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let typed_entity = created(
        &app,
        "/api/workflow-entities",
        json!({"organizationId": org, "name": "Typed", "workflowEntityTypeId": entity_type}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let variable = created(
        &app,
        "/api/variables",
        json!({"organizationId": org, "environmentId": env, "name": "KEY", "value": "secret"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // (what is deleted, what refers to it, what removes the reference)
    let rules = [
        (
            format!("/api/models/{model}"),
            template.clone(),
            format!("/api/prompt-templates/{template}"),
        ),
        (
            format!("/api/workflow-entities/{entity}"),
            workflow.clone(),
            format!("/api/workflows/{workflow}"),
        ),
        (
            format!("/api/workflow-entity-types/{entity_type}"),
            typed_entity.clone(),
            format!("/api/workflow-entities/{typed_entity}"),
        ),
        (
            format!("/api/environments/{env}"),
            variable.clone(),
            format!("/api/variables/{variable}"),
        ),
    ];
    for (target, referrer, referrer_path) in &rules {
        let events = app.event_count().await;
        let (status, body) = app.delete(target).await;
        assert_eq!(status, 409, "DELETE {target}: {body}");
        assert!(
            body["details"]
                .as_str()
                .unwrap()
                .contains(referrer.as_str()),
            "{target}: {body}"
        );
        assert_eq!(
            app.event_count().await,
            events,
            "a refused delete appended events"
        );
        let (status, _) = app.delete(referrer_path).await;
        assert_eq!(status, 200, "DELETE {referrer_path}");
    }
    // The model was still used by nothing else, the entity type by nothing: now they go.
    for (target, _, _) in &rules[..3] {
        let (status, body) = app.delete(target).await;
        assert_eq!(status, 200, "DELETE {target}: {body}");
    }
    // The organization still holds its environment, and the fixtures' entity.
    let (status, body) = app.delete(&format!("/api/organizations/{org}")).await;
    assert_eq!(status, 409, "{body}");
    // An update that drops a reference releases it: the workflow no longer holds the entity.
    let entity2 = created(
        &app,
        "/api/workflow-entities",
        json!({"organizationId": org, "name": "E2", "workflowEntityTypeId": EVENT_TYPE}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flow = created(
        &app,
        "/api/workflows",
        json!({"organizationId": org, "name": "W2",
        "workflowData": {"root": {"name": "a", "entityId": entity2, "entityType": "event"}}}),
    )
    .await;
    let (status, usage) = app
        .get(&format!("/api/workflow-entities/{entity2}/usage-count"))
        .await;
    assert_eq!((status, usage["count"].as_i64()), (200, Some(1)));
    let (status, _) = app
        .put(
            &format!("/api/workflows/{}", flow["id"].as_str().unwrap()),
            json!({"workflowData": {"root": null}}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, usage) = app
        .get(&format!("/api/workflow-entities/{entity2}/usage-count"))
        .await;
    assert_eq!(usage["count"], 0);
    let (status, body) = app
        .delete(&format!("/api/workflow-entities/{entity2}"))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn references_must_name_live_resources_of_the_same_organization() {
    let app = TestApp::spawn().await;
    let (org, env, model, _) = fixtures(&app).await;
    let other = app.create_organization("Other Corp").await;
    let other_env = app.create_environment(&other, "Elsewhere").await;
    let other_model = created(
        &app,
        "/api/models",
        json!({"organizationId": other, "name": "Theirs", "modelUrl": "https://m.example"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = uuid::Uuid::now_v7();
    let cases = [
        (
            "/api/variables",
            json!({"organizationId": org, "environmentId": other_env, "name": "X", "value": "v"}),
            "environmentId",
        ),
        (
            "/api/variables",
            json!({"organizationId": org, "environmentId": missing, "name": "X", "value": "v"}),
            "environmentId",
        ),
        (
            "/api/prompt-templates",
            json!({"organizationId": org, "environmentId": env, "name": "T", "promptText": "p", "modelId": other_model}),
            "modelId",
        ),
        (
            "/api/prompts",
            json!({"organizationId": org, "title": "T", "content": "c", "modelId": missing}),
            "modelId",
        ),
        (
            "/api/workflow-entities",
            json!({"organizationId": org, "name": "E", "workflowEntityTypeId": missing}),
            "workflowEntityTypeId",
        ),
        (
            "/api/workflows",
            json!({"organizationId": org, "name": "W", "workflowData": {"root": {"name": "a", "entityId": missing, "entityType": "event"}}}),
            "workflowData",
        ),
    ];
    for (path, body, field) in cases {
        let events = app.event_count().await;
        let (status, answer) = app.post(path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().starts_with(field),
            "{path}: {answer}"
        );
        assert_eq!(app.event_count().await, events);
    }
    let (status, _) = app
        .post(
            "/api/models",
            json!({"organizationId": missing, "name": "M", "modelUrl": "https://m.example"}),
        )
        .await;
    assert_eq!(status, 404);
    // A deleted model cannot be referred to either.
    let (status, _) = app.delete(&format!("/api/models/{model}")).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(
            "/api/prompts",
            json!({"organizationId": org, "title": "T", "content": "c", "modelId": model}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn nested_names_follow_renames() {
    let app = TestApp::spawn().await;
    let (org, env, model, _) = fixtures(&app).await;
    let template = created(&app, "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "T", "promptText": "p", "modelId": model})).await;
    let path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
    for (resource, body) in [
        (
            format!("/api/models/{model}"),
            json!({"name": "Renamed model"}),
        ),
        (
            format!("/api/environments/{env}"),
            json!({"name": "Renamed environment"}),
        ),
        (
            format!("/api/organizations/{org}"),
            json!({"name": "Renamed organization"}),
        ),
    ] {
        let (status, _) = app.put(&resource, body).await;
        assert_eq!(status, 200, "{resource}");
    }
    let (_, read) = app.get(&path).await;
    assert_eq!(read["model"]["name"], "Renamed model");
    assert_eq!(read["environment"]["name"], "Renamed environment");
    assert_eq!(read["organization"]["name"], "Renamed organization");
    let (_, list) = app
        .get(&format!("/api/prompt-templates?organizationId={org}"))
        .await;
    assert_eq!(list["data"][0]["model"]["name"], "Renamed model");
    // A write's own answer nests the current names too.
    let (_, updated) = app.put(&path, json!({"description": "d"})).await;
    assert_eq!(updated["organization"]["name"], "Renamed organization");
    assert_eq!(updated["model"]["name"], "Renamed model");
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let (org, env, model, entity) = fixtures(&app).await;
    let template = created(&app, "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "T", "promptText": "p", "variables": {"a": "string"}})).await;
    let template_path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
    let deep = (0..101).fold(
        json!({"name": "leaf", "entityType": "event"}),
        |child, _| json!({"name": "n", "entityType": "event", "children": [child]}),
    );
    let long = "x".repeat(201);
    let cases: Vec<(&str, String, Value, &str)> = vec![
        (
            "POST",
            "/api/variables".into(),
            json!({"organizationId": org, "environmentId": env, "name": "K"}),
            "value",
        ),
        (
            "POST",
            "/api/variables".into(),
            json!({"organizationId": org, "environmentId": env, "name": "K", "value": 5}),
            "value",
        ),
        (
            "POST",
            "/api/variables".into(),
            json!({"organizationId": org, "environmentId": "nope", "name": "K", "value": "v"}),
            "environmentId",
        ),
        (
            "POST",
            "/api/variables".into(),
            json!({"organizationId": org, "environmentId": env, "name": long, "value": "v"}),
            "name",
        ),
        (
            "POST",
            "/api/models".into(),
            json!({"organizationId": org, "name": "M", "modelUrl": "ftp://x"}),
            "modelUrl",
        ),
        (
            "POST",
            "/api/models".into(),
            json!({"organizationId": org, "name": "M"}),
            "body",
        ),
        (
            "POST",
            "/api/models".into(),
            json!({"organizationId": org, "name": "M", "modelUrl": "https://m", "colour": 1}),
            "body",
        ),
        (
            "POST",
            "/api/models".into(),
            json!({"organizationId": org, "name": "M", "modelUrl": "https://m", "description": "d".repeat(2001)}),
            "description",
        ),
        (
            "POST",
            "/api/system-models".into(),
            json!({"name": "S", "modelUrl": "https://m", "visible": "yes"}),
            "visible",
        ),
        (
            "POST",
            "/api/workflows".into(),
            json!({"organizationId": org, "name": "W", "workflowData": {"root": deep}}),
            "workflowData",
        ),
        (
            "POST",
            "/api/workflows".into(),
            json!({"organizationId": org, "name": "W", "workflowData": {"root": {"name": "a", "entityType": "event", "entityId": entity, "presentation": 3}}}),
            "workflowData",
        ),
        (
            "POST",
            "/api/workflow-entities".into(),
            json!({"organizationId": org, "name": "E", "workflowEntityTypeId": EVENT_TYPE, "condition": {"type": "rule", "field": "f", "comparison": "like", "value": 1}}),
            "condition",
        ),
        (
            "POST",
            "/api/workflow-entities".into(),
            json!({"organizationId": org, "name": "E", "workflowEntityTypeId": EVENT_TYPE, "condition": {"type": "group", "operator": "NAND", "conditions": []}}),
            "condition",
        ),
        (
            "POST",
            "/api/prompt-templates".into(),
            json!({"organizationId": org, "environmentId": env, "name": "T2", "promptText": "x".repeat(100_001)}),
            "promptText",
        ),
        (
            "POST",
            "/api/prompt-templates".into(),
            json!({"organizationId": org, "environmentId": env, "name": "T2", "promptText": "p", "variables": {"a": "string"}, "variableSets": [{"name": "s", "values": {"b": 1}}]}),
            "variableSets[0].values.b",
        ),
        (
            "POST",
            "/api/prompt-templates".into(),
            json!({"organizationId": org, "environmentId": env, "name": "T2", "promptText": "p", "variables": {"a": "colour"}}),
            "variables.a",
        ),
        (
            "POST",
            "/api/prompts".into(),
            json!({"organizationId": org, "title": "P", "content": "c", "outputFormat": "xml"}),
            "outputFormat",
        ),
        (
            "POST",
            "/api/prompts".into(),
            json!({"organizationId": org, "title": "P", "content": "c", "outputFormat": "json", "outputTemplate": "{oops"}),
            "outputTemplate",
        ),
        (
            "PUT",
            template_path.clone(),
            json!({"organizationId": uuid::Uuid::now_v7()}),
            "organizationId",
        ),
        ("PUT", template_path.clone(), json!({"name": null}), "name"),
        (
            "PUT",
            template_path.clone(),
            json!({"variableSets": [{"name": "s", "values": {"zzz": 1}}]}),
            "variableSets[0].values.zzz",
        ),
        (
            "PUT",
            format!("/api/models/{model}"),
            json!({"token": ""}),
            "token",
        ),
        (
            "PUT",
            "/api/models/not-a-uuid".into(),
            json!({"name": "x"}),
            "id",
        ),
    ];
    for (method, path, body, field) in cases {
        let events = app.event_count().await;
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, answer) = tests::send(app.admin(method.clone(), &path).json(&body)).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        let details = answer["details"].as_str().unwrap_or_default();
        assert!(
            details.starts_with(field) || (field == "body" && !details.is_empty()),
            "{method} {path}: expected details about {field}, got {answer}"
        );
        assert_eq!(
            app.event_count().await,
            events,
            "{method} {path} appended events"
        );
    }
    // Reads refuse malformed ids and filters the same way.
    for path in [
        "/api/models/nope",
        "/api/variables?environmentId=nope",
        "/api/prompt-templates",
        "/api/models?organizationId=x",
    ] {
        let (status, answer) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_of_a_template_each_make_exactly_one_version() {
    let app = TestApp::spawn().await;
    let (org, env) = tenant(&app).await;
    let template = created(
        &app,
        "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "Busy", "promptText": "v0"}),
    )
    .await;
    let path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
    let updates = (1..=32).map(|n| {
        let app = &app;
        let path = path.clone();
        async move {
            app.put(&path, json!({"promptText": format!("edit {n}")}))
                .await
        }
    });
    let answers = futures::future::join_all(updates).await;
    let mut versions: Vec<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["version"].as_i64().unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, (2..=33).collect::<Vec<_>>());

    let (status, listed) = app.get(&format!("{path}/versions?limit=100")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["pagination"]["total"], 33);
    let numbers: Vec<i64> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=33).rev().collect::<Vec<_>>(),
        "newest first, each version once"
    );
    // Each version is the state after its change, and says who changed what.
    for answer in answers.iter().map(|(_, body)| body) {
        let n = answer["version"].as_i64().unwrap();
        let (status, version) = app.get(&format!("{path}/versions/{n}")).await;
        assert_eq!(status, 200);
        assert_eq!(version["promptText"], answer["promptText"], "version {n}");
        assert_eq!(version["changes"], json!(["promptText"]), "version {n}");
        assert_eq!(version["changedBy"]["id"], app.admin_id.as_str());
        assert_eq!(version["changedBy"]["role"], "system");
    }
    let (_, first) = app.get(&format!("{path}/versions/1")).await;
    assert_eq!(first["promptText"], "v0");
    assert_eq!(first["name"], "Busy");
    let (status, _) = app.get(&format!("{path}/versions/34")).await;
    assert_eq!(status, 404);
    let (status, _) = app.get(&format!("{path}/versions/zero")).await;
    assert_eq!(status, 400);
    let (_, current) = app.get(&path).await;
    assert_eq!(current["version"], 33);
}

#[tokio::test]
async fn the_built_in_entity_types_exist_from_the_start_and_system_models_show_when_visible() {
    let app = TestApp::spawn().await;
    let (status, types) = app.get("/api/workflow-entity-types?limit=100").await;
    assert_eq!(status, 200, "{types}");
    let mut names: Vec<&str> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Action", "Event", "Prompt", "Result"]);
    assert_eq!(types["pagination"]["total"], 4);

    let org = app.create_organization("Acme Corp").await;
    app.add_member(&org, "gus", "guest").await;
    for (name, visible) in [("Shown", true), ("Hidden", false)] {
        created(&app, "/api/system-models", json!({"name": name, "modelUrl": "https://m.example", "visible": visible, "token": "t"})).await;
    }
    let (status, visible) =
        tests::send(app.as_user("gus", reqwest::Method::GET, "/api/system-models/visible")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = visible["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Shown"]);
    assert_eq!(visible["pagination"]["total"], 1);
    // An organization's own entity types show next to the platform's, to its members only.
    created(
        &app,
        "/api/workflow-entity-types",
        json!({"organizationId": org, "name": "Webhook"}),
    )
    .await;
    let (_, theirs) =
        tests::send(app.as_user("gus", reqwest::Method::GET, "/api/workflow-entity-types")).await;
    assert_eq!(theirs["pagination"]["total"], 5);
    let (_, outsider) =
        tests::send(app.as_user("olga", reqwest::Method::GET, "/api/workflow-entity-types")).await;
    assert_eq!(outsider["pagination"]["total"], 4);
}

/// The catalog read model as rows of text, in a stable order.
async fn catalog_tables(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT row_to_json(c)::text FROM read_models.catalog c ORDER BY id",
        "SELECT row_to_json(c)::text FROM read_models.catalog_counts c WHERE count <> 0 ORDER BY scope",
        "SELECT row_to_json(u)::text FROM read_models.workflow_entity_usage u ORDER BY entity_id, workflow_id",
        "SELECT row_to_json(v)::text FROM read_models.prompt_template_versions v ORDER BY template_id, version",
    ] {
        let found: Vec<String> = sqlx::query_scalar(query).fetch_all(&app.db.pool).await.unwrap();
        rows.extend(found);
    }
    rows
}

#[tokio::test]
async fn a_rebuilt_catalog_equals_the_live_one() {
    let app = TestApp::spawn().await;
    let (org, env, model, entity) = fixtures(&app).await;
    // Creates, updates and deletes of every kind, some of them of the same resource in a row, so that
    // a rebuild folds several changes of one row within one batch.
    for case in cases(&org, &env, &model, &entity) {
        for n in 0..3 {
            let id = created(
                &app,
                &format!("/api/{}", case.path),
                named(&case, &format!("R{n}")),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let item = format!("/api/{}/{id}", case.path);
            let (status, _) = app.put(&item, case.update.clone()).await;
            assert_eq!(status, 200);
            if n == 1 {
                let (status, _) = app.delete(&item).await;
                assert_eq!(status, 200);
            }
        }
    }
    // Reading with the default consistency waits for the projector to catch up.
    let (status, _) = app.get(&format!("/api/models?organizationId={org}")).await;
    assert_eq!(status, 200);
    let live = catalog_tables(&app).await;
    assert!(live.len() > 30, "{}", live.len());
    projector::rebuild::rebuild(&app.db.pool, &projector::catalog::Catalog, |_| {})
        .await
        .unwrap();
    assert_eq!(catalog_tables(&app).await, live);
}

/// Every version of a template, newest first, read page by page.
async fn all_versions(app: &TestApp, template: &str) -> Vec<Value> {
    let mut versions = Vec::new();
    for page in 1.. {
        let (status, body) = app
            .get(&format!(
                "/api/prompt-templates/{template}/versions?page={page}&limit=100"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        if data.is_empty() {
            break;
        }
        versions.extend(data.iter().cloned());
    }
    versions
}

#[tokio::test]
async fn a_page_of_versions_reads_the_page_and_not_the_log() {
    let app = TestApp::spawn().await;
    let (org, env, model, _) = fixtures(&app).await;
    let other_model = created(
        &app,
        "/api/models",
        json!({"organizationId": org, "name": "Other model", "modelUrl": "https://models.example/v2"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = created(
        &app,
        "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "Long history", "modelId": model,
               "promptText": "Version 1"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    const VERSIONS: i64 = 300;
    for n in 2..=VERSIONS {
        // Every tenth version names the other model, so that each version shows its own model's name.
        let body = if n % 10 == 0 {
            json!({"promptText": format!("Version {n}"), "modelId": other_model})
        } else {
            json!({"promptText": format!("Version {n}"), "modelId": model})
        };
        let (status, body) = app
            .put(&format!("/api/prompt-templates/{template}"), body)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Another template's history, deleted: it leaves no rows behind.
    let deleted = created(
        &app,
        "/api/prompt-templates",
        json!({"organizationId": org, "environmentId": env, "name": "Gone", "modelId": model,
               "promptText": "Soon gone"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app
        .put(
            &format!("/api/prompt-templates/{deleted}"),
            json!({"promptText": "Still gone"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .delete(&format!("/api/prompt-templates/{deleted}"))
        .await;
    assert_eq!(status, 200);

    let live = all_versions(&app, &template).await;
    assert_eq!(live.len() as i64, VERSIONS);
    for (i, version) in live.iter().enumerate() {
        let n = VERSIONS - i as i64;
        assert_eq!(version["version"], n);
        assert_eq!(version["promptText"], format!("Version {n}"));
        let model_name = if n % 10 == 0 {
            "Other model"
        } else {
            "Fixture model"
        };
        assert_eq!(
            version["model"]["name"], model_name,
            "version {n}: {version}"
        );
        assert_eq!(version["organization"]["name"], "Acme Corp");
        let changes = version["changes"].as_array().unwrap();
        let set = if n == 1 { "name" } else { "promptText" };
        assert!(changes.contains(&json!(set)), "version {n}: {changes:?}");
        assert!(version["changedAt"].is_string());
        assert_eq!(version["changedBy"]["id"], app.admin_id);
    }
    let tables = catalog_tables(&app).await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_models.prompt_template_versions WHERE template_id = $1::uuid",
    )
    .bind(&deleted)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0, "a deleted template keeps no versions");

    // A rebuild from the log makes the same rows, and the same answers.
    projector::rebuild::rebuild(&app.db.pool, &projector::catalog::Catalog, |_| {})
        .await
        .unwrap();
    assert_eq!(catalog_tables(&app).await, tables);
    assert_eq!(all_versions(&app, &template).await, live);

    // A query-api whose connections may read the read models but not the log answers every page and
    // version as the full one does: reading versions costs the rows shown, not the template's stream.
    let (restricted, role) = app.pool_without_the_log().await;
    let base = app.query_api_over(restricted.clone()).await;
    let get = |path: String| {
        let request = app
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&app.admin_token);
        tests::send(request)
    };
    let (status, page) = get(format!(
        "/api/prompt-templates/{template}/versions?page=2&limit=7"
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"], json!(live[7..14]));
    assert_eq!(page["pagination"]["total"], VERSIONS);
    for n in [1, 150, VERSIONS] {
        let (status, version) = get(format!("/api/prompt-templates/{template}/versions/{n}")).await;
        assert_eq!(status, 200, "{version}");
        assert_eq!(version, live[(VERSIONS - n) as usize]);
    }
    let (status, missing) = get(format!(
        "/api/prompt-templates/{template}/versions/{}",
        VERSIONS + 1
    ))
    .await;
    assert_eq!(status, 404, "{missing}");
    let (status, _) = get(format!("/api/prompt-templates/{deleted}/versions")).await;
    assert_eq!(status, 404);

    app.drop_role(restricted, &role).await;
}

#[tokio::test]
async fn models_carry_their_provider_and_prices_and_refuse_bad_ones() {
    let app = TestApp::spawn().await;
    let (org, _) = tenant(&app).await;
    let claude = created(
        &app,
        "/api/models",
        json!({"organizationId": org, "name": "Claude", "modelUrl": "https://api.anthropic.com/v1/messages",
               "inputPricePerMillionTokens": 3, "outputPricePerMillionTokens": 15, "currency": "USD"}),
    )
    .await;
    let path = format!("/api/models/{}", claude["id"].as_str().unwrap());
    let (status, read) = app.get(&path).await;
    assert_eq!(status, 200, "{read}");
    for body in [&claude, &read] {
        assert_eq!(body["provider"], "anthropic", "{body}");
        assert_eq!(body["inputPricePerMillionTokens"], 3.0);
        assert_eq!(body["outputPricePerMillionTokens"], 15.0);
        assert_eq!(body["currency"], "USD");
    }

    // A local server speaks the OpenAI wire format unless the model says otherwise.
    let local = created(
        &app,
        "/api/system-models",
        json!({"name": "Local", "modelUrl": "http://localhost:8000/v1/chat/completions"}),
    )
    .await;
    assert_eq!(local["provider"], "openai");
    assert_eq!(local["currency"], Value::Null);

    // Moving the model keeps the provider it has; `null` infers it again from the new URL.
    let (status, moved) = app
        .put(
            &path,
            json!({"modelUrl": "https://gateway.example/v1/chat/completions"}),
        )
        .await;
    assert_eq!(
        (status, &moved["provider"]),
        (200, &json!("anthropic")),
        "{moved}"
    );
    let (status, reinferred) = app.put(&path, json!({"provider": null})).await;
    assert_eq!(
        (status, &reinferred["provider"]),
        (200, &json!("openai")),
        "{reinferred}"
    );

    let events = app.event_count().await;
    for (bad, field) in [
        (
            json!({"outputPricePerMillionTokens": -0.5}),
            "outputPricePerMillionTokens",
        ),
        (json!({"currency": "dollars"}), "currency"),
        (json!({"provider": "cohere"}), "provider"),
        (json!({"currency": null}), "currency"),
    ] {
        let (status, body) = app.put(&path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["details"].as_str().unwrap().contains(field),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        app.event_count().await,
        events,
        "a refused change appended events"
    );
    let (_, unchanged) = app.get(&path).await;
    assert_eq!(unchanged["currency"], "USD");
}
