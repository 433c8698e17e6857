//! The catalog resources through the REST API: seed 001's request examples sent verbatim (with real
//! ids), each resource's life cycle, lists, partial updates and references between resources.

use serde_json::{json, Value};
use tests::TestApp;

/// The built-in `Event` workflow entity type (events::catalog::kinds::BUILT_IN_ENTITY_TYPES).
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

/// An organization and an environment, as in the seed.
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
