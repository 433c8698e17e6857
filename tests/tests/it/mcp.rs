//! The MCP server (`command-api/mcp`) through a client no one here wrote, rmcp's, over real HTTP:
//! initialization and protocol versions, tools authorised as REST authorises them, the events they
//! append, streamed executions, resources and prompts, read-only mode, and the transport's checks
//! (the 401 discovery flow, `Origin`, `Host`). `python_sdk_client` drives the official Python SDK
//! against the same server (`tests/mcp/client.py`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    GetPromptRequestParams, Implementation, NumberOrString, ProgressNotificationParam,
    ProgressToken, ProtocolVersion, ReadResourceRequestParams, RequestMetaObject, ResourceContents,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Map, Value};
use tests::process::Stack;
use tests::processed_messages::produce;
use tests::s3::S3Server;
use tests::{send, TestApp};

use crate::executions::Setup;

/// An MCP client that keeps the progress messages it is sent.
#[derive(Clone)]
struct Client {
    version: ProtocolVersion,
    progress: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("platform-tests", "1.0.0"),
        )
        .with_protocol_version(self.version.clone())
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push(params.message.unwrap_or_default());
    }
}

type Session = RunningService<RoleClient, Client>;

/// Connects to the server at `base` with `token`, speaking `version`.
async fn connect_with(base: &str, token: &str, version: ProtocolVersion) -> Session {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token),
    );
    Client {
        version,
        progress: Arc::default(),
    }
    .serve(transport)
    .await
    .expect("initializing")
}

async fn connect(base: &str, token: &str) -> Session {
    connect_with(base, token, ProtocolVersion::V_2025_11_25).await
}

async fn call(session: &Session, tool: &str, arguments: Value) -> CallToolResult {
    let arguments: Map<String, Value> = serde_json::from_value(arguments).unwrap();
    session
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("calling {tool}: {e}"))
}

/// A call that must succeed: its structured result.
async fn ok(session: &Session, tool: &str, arguments: Value) -> Value {
    let result = call(session, tool, arguments).await;
    assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    result.structured_content.expect("a structured result")
}

/// A call that must fail: the REST error in its text.
async fn refused(session: &Session, tool: &str, arguments: Value) -> Value {
    let result = call(session, tool, arguments).await;
    assert_eq!(result.is_error, Some(true), "{tool}: {result:?}");
    serde_json::from_str(&text(&result)).expect("the REST error as JSON")
}

fn text(result: &CallToolResult) -> String {
    let content = serde_json::to_value(&result.content).unwrap();
    content[0]["text"].as_str().unwrap_or_default().to_owned()
}

/// A REST error as the tool text carries it: the body with its status.
fn with_status(status: u16, mut body: Value) -> Value {
    body["status"] = json!(status);
    body
}

#[tokio::test]
async fn tools_mirror_the_api_with_schemas_and_honest_annotations() {
    let setup = Setup::start().await;
    let mcp = setup.app.start_mcp(|_| {}).await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let session = connect_with(&mcp, &setup.app.admin_token, version.clone()).await;
        let info = session.peer_info().expect("the server's answer");
        assert_eq!(info.protocol_version, version);
        assert_eq!(
            info.server_info.as_ref().map(|server| server.name.as_str()),
            Some("admin-platform")
        );
        let tools = session.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        for expected in [
            "list_organizations",
            "get_environment",
            "list_variables",
            "get_model",
            "list_workflows",
            "list_workflow_entities",
            "get_prompt_template_version",
            "list_prompts",
            "count_processed_messages",
            "list_audit_events",
            "create_prompt_template",
            "update_prompt",
            "execute_prompt_template",
            "analyze_prompt_template_sentiment",
            "move_feedback",
            "resolve_notification",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        for tool in &tools {
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            let output = tool.output_schema.as_ref().expect("an output schema");
            assert_eq!(output["type"], "object", "{}", tool.name);
            let hints = tool.annotations.as_ref().expect("annotations");
            let reads = tool.name.starts_with("list_")
                || tool.name.starts_with("get_")
                || tool.name.starts_with("count_");
            assert_eq!(hints.read_only_hint, Some(reads), "{}", tool.name);
            assert!(hints.destructive_hint.is_some() && hints.idempotent_hint.is_some());
            assert_eq!(
                hints.open_world_hint,
                Some(tool.name.starts_with("execute_") || tool.name.starts_with("analyze_")),
                "{}",
                tool.name
            );
        }
        let create = tools
            .iter()
            .find(|t| t.name == "create_prompt_template")
            .unwrap();
        let required = create.input_schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("organizationId")), "{required:?}");
        session.cancel().await.unwrap();
    }
    // A member of an organization is not offered the operator's tools.
    setup
        .app
        .add_member(&setup.org, "mcp-lister", "admin")
        .await;
    let member = connect(&mcp, &setup.app.issuer.token("mcp-lister")).await;
    let theirs: Vec<String> = member
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect();
    assert!(theirs.contains(&"create_prompt".to_owned()), "{theirs:?}");
    for operators in ["list_feedback", "move_feedback", "list_notifications"] {
        assert!(!theirs.contains(&operators.to_owned()), "{theirs:?}");
    }
}

#[tokio::test]
async fn tools_are_authorised_as_rest_is_and_answer_its_errors() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    let other_org = app.create_organization("Other").await;
    let other_env = app.create_environment(&other_org, "Prod").await;
    app.add_member(&setup.org, "mcp-guest", "guest").await;
    app.add_member(&setup.org, "mcp-user", "admin").await;
    let guest = app.issuer.token("mcp-guest");
    let user = app.issuer.token("mcp-user");
    let template = json!({
        "organizationId": setup.org, "environmentId": setup.env, "name": "Greeting",
        "promptText": "Hello {{name}}", "variables": {"name": "string"},
    });

    // A user writes; the answer is the REST answer.
    let as_user = connect(&mcp, &user).await;
    let created = ok(&as_user, "create_prompt_template", template.clone()).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["name"], "Greeting");
    let (_, rest) = send(
        app.request(Method::GET, &format!("/api/prompt-templates/{id}"))
            .bearer_auth(&user),
    )
    .await;
    assert_eq!(
        ok(&as_user, "get_prompt_template", json!({"id": id})).await,
        rest
    );
    let updated = ok(
        &as_user,
        "update_prompt_template",
        json!({"id": id, "promptText": "Hi {{name}}"}),
    )
    .await;
    assert_eq!(updated["version"], 2);

    // A guest reads but may not write: the same 403 as REST, and nothing is appended.
    let as_guest = connect(&mcp, &guest).await;
    let listed = ok(
        &as_guest,
        "list_prompt_templates",
        json!({"organizationId": setup.org}),
    )
    .await;
    assert_eq!(listed["data"][0]["id"], id);
    let events = app.event_count().await;
    let mut named = template.clone();
    named["name"] = json!("Guest's");
    let (status, rest) = send(
        app.request(Method::POST, "/api/prompt-templates")
            .bearer_auth(&guest)
            .json(&named),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        refused(&as_guest, "create_prompt_template", named).await,
        with_status(403, rest)
    );
    assert_eq!(app.event_count().await, events);

    // Another tenant's resources are missing, as over REST.
    let (_, foreign) = app
        .post(
            "/api/prompt-templates",
            json!({"organizationId": other_org, "environmentId": other_env, "name": "Theirs",
                   "promptText": "x"}),
        )
        .await;
    let foreign = foreign["id"].as_str().unwrap();
    let (status, rest) = send(
        app.request(Method::GET, &format!("/api/prompt-templates/{foreign}"))
            .bearer_auth(&user),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        refused(&as_user, "get_prompt_template", json!({"id": foreign})).await,
        with_status(404, rest)
    );
    let (status, rest) = send(
        app.request(
            Method::GET,
            &format!("/api/prompt-templates?organizationId={other_org}"),
        )
        .bearer_auth(&user),
    )
    .await;
    assert_eq!(
        refused(
            &as_user,
            "list_prompt_templates",
            json!({"organizationId": other_org})
        )
        .await,
        with_status(status, rest)
    );
    assert!(
        refused(
            &as_user,
            "update_prompt_template",
            json!({"id": foreign, "name": "Mine now"})
        )
        .await["status"]
            == 404
    );

    // Bad arguments are named, as REST names bad fields.
    let bad = refused(&as_user, "get_prompt_template", json!({})).await;
    assert_eq!(
        (bad["status"].clone(), bad["details"].clone()),
        (json!(400), json!("id: required"))
    );
    let bad = refused(
        &as_user,
        "create_prompt_template",
        json!({"organizationId": setup.org, "environmentId": setup.env, "name": "X",
               "promptText": "x", "colour": "red"}),
    )
    .await;
    assert_eq!(bad["status"], 400);
    assert!(bad["details"].as_str().unwrap().contains("colour"), "{bad}");

    // The operator's tools are for System users only.
    assert_eq!(
        refused(&as_user, "list_feedback", json!({})).await["status"],
        403
    );
    let as_system = connect(&mcp, &app.admin_token).await;
    let feedback = ok(&as_system, "list_feedback", json!({})).await;
    assert!(feedback["data"].is_array(), "{feedback}");
    assert!(ok(&as_system, "count_unread_notifications", json!({}))
        .await
        .is_object());

    // An unknown tool is a protocol error.
    let unknown = as_user
        .call_tool(CallToolRequestParams::new("drop_everything"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
}

#[tokio::test]
async fn writes_record_the_caller_and_that_they_came_through_mcp() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    app.add_member(&setup.org, "mcp-writer", "admin").await;
    let writer_id = app.user_id("mcp-writer").await;
    let session = connect(&mcp, &app.issuer.token("mcp-writer")).await;
    let created = ok(
        &session,
        "create_prompt",
        json!({"organizationId": setup.org, "title": "Reply", "content": "Answer {{question}}"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let (_, rest) = app
        .post(
            "/api/prompts",
            json!({"organizationId": setup.org, "title": "By REST", "content": "c"}),
        )
        .await;

    let (channel, actor): (Option<String>, String) = sqlx::query_as(
        "SELECT metadata->>'channel', metadata->'actor'->>'id' FROM events \
         WHERE stream_id = $1 AND event_type = 'prompt.created'",
    )
    .bind(format!("prompt-{id}"))
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (channel.as_deref(), actor.as_str()),
        (Some("mcp"), writer_id.as_str())
    );
    let rest_channel: Option<String> =
        sqlx::query_scalar("SELECT metadata->>'channel' FROM events WHERE stream_id = $1")
            .bind(format!("prompt-{}", rest["id"].as_str().unwrap()))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(rest_channel, None);

    // The audit trail shows it, to the caller through MCP too.
    let audit = ok(&session, "list_audit_events", json!({"resourceId": id})).await;
    let row = &audit["data"][0];
    assert_eq!(row["type"], "prompt.created", "{audit}");
    assert_eq!(
        (row["channel"].clone(), row["actor"]["id"].clone()),
        (json!("mcp"), json!(writer_id))
    );
    let (_, rest_audit) = app
        .get(&format!(
            "/api/audit-events?resourceId={}",
            rest["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest_audit["data"][0]["channel"], Value::Null);
}

#[tokio::test]
async fn variables_never_show_their_values_and_lists_page() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    let secret = format!("sk-{}", uuid::Uuid::new_v4().simple());
    let (status, _) = app
        .post(
            "/api/variables",
            json!({"organizationId": setup.org, "environmentId": setup.env, "name": "KEY",
                   "value": secret}),
        )
        .await;
    assert_eq!(status, 201);
    let model = setup.model("ok", "openai").await;
    let session = connect(&mcp, &app.admin_token).await;
    let variables = call(
        &session,
        "list_variables",
        json!({"organizationId": setup.org}),
    )
    .await;
    let variable_id = variables.structured_content.as_ref().unwrap()["data"][0]["id"].clone();
    let one = call(&session, "get_variable", json!({"id": variable_id})).await;
    let models = call(&session, "get_model", json!({"id": model})).await;
    for result in [&variables, &one, &models] {
        let shown = serde_json::to_string(result).unwrap();
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("sk-live-"), "the model's token: {shown}");
    }
    assert_eq!(one.structured_content.unwrap()["hasValue"], true);

    for n in 0..3 {
        app.post(
            "/api/prompts",
            json!({"organizationId": setup.org, "title": format!("P{n}"), "content": "c"}),
        )
        .await;
    }
    let second = ok(
        &session,
        "list_prompts",
        json!({"organizationId": setup.org, "limit": 2, "page": 2}),
    )
    .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(
        second["pagination"],
        json!({"page": 2, "limit": 2, "total": 3, "totalPages": 2})
    );
    let bad = refused(&session, "list_prompts", json!({"limit": 500})).await;
    assert_eq!(bad["status"], 400, "{bad}");
}

#[tokio::test]
async fn an_execution_streams_its_output_as_progress_and_answers_json_otherwise() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    let model = setup.model("ok", "openai").await;
    let template = setup
        .template("Tell me about {{name}} and the order {{order}}", &model)
        .await;

    // With a progress token: each piece of output as a progress message, then the execution.
    let session = connect(&mcp, &app.admin_token).await;
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(NumberOrString::String("run-1".into())));
    let mut params = CallToolRequestParams::new("execute_prompt_template").with_arguments(
        serde_json::from_value(json!({"id": template, "variableSet": "default"})).unwrap(),
    );
    params.meta = Some(meta);
    let result = session.call_tool(params).await.unwrap();
    let execution = result.structured_content.expect("the execution");
    assert_eq!(
        execution["output"],
        "Echo: Tell me about Ann and the order 1"
    );
    let progress = session.service().progress.clone();
    let streamed = wait_for(|| async {
        let pieces = progress.lock().unwrap();
        (pieces.concat() == "Echo: Tell me about Ann and the order 1").then(|| pieces.len())
    })
    .await;
    assert!(streamed >= 8, "one message per token: {streamed}");
    assert_eq!(setup.execution(&execution["executionId"]).await, execution);

    // Over HTTP: the streamed call answers with Server-Sent Events, a plain call with JSON.
    for (progress_token, media_type) in [
        (Some("run-2"), "text/event-stream"),
        (None, "application/json"),
    ] {
        let mut params = json!({"name": "execute_prompt_template",
                                "arguments": {"id": template, "variableSet": "default"}});
        if let Some(token) = progress_token {
            params["_meta"] = json!({"progressToken": token});
        }
        let response = rpc(&mcp, &app.admin_token, "tools/call", params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(media_type), "{content_type}");
        let body = response.text().await.unwrap();
        assert!(body.contains("Echo: Tell me about Ann"), "{body}");
        if progress_token.is_some() {
            assert!(body.contains("notifications/progress"), "{body}");
        }
    }

    // `stream` follows the progress token: without one the answer is the execution, as JSON.
    let plain = ok(
        &session,
        "execute_prompt_template",
        json!({"id": template, "variableSet": "default", "stream": true}),
    )
    .await;
    assert_eq!(plain["output"], "Echo: Tell me about Ann and the order 1");

    // A failure before the model is called is the REST error.
    let missing = refused(&session, "execute_prompt_template", json!({"id": template})).await;
    assert_eq!(missing["status"], 400, "{missing}");
    assert!(
        missing["details"].as_str().unwrap().contains("name"),
        "{missing}"
    );
}

#[tokio::test]
async fn templates_are_resources_and_prompts_are_prompts() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    let model = setup.model("ok", "openai").await;
    let template = setup.template("About {{name}}", &model).await;
    app.put(
        &format!("/api/prompt-templates/{template}"),
        json!({"promptText": "All about {{name}}"}),
    )
    .await;
    let other_org = app.create_organization("Other").await;
    let other_env = app.create_environment(&other_org, "Prod").await;
    let (_, foreign) = app
        .post(
            "/api/prompt-templates",
            json!({"organizationId": other_org, "environmentId": other_env, "name": "Theirs",
                   "promptText": "x"}),
        )
        .await;
    let (_, prompt) = app
        .post(
            "/api/prompts",
            json!({"organizationId": setup.org, "title": "Support reply",
                   "content": "Reply to {{customer}} about {{ order }}"}),
        )
        .await;
    app.add_member(&setup.org, "mcp-member", "guest").await;
    let member = connect(&mcp, &app.issuer.token("mcp-member")).await;

    // A member sees the templates of their organization, not another's.
    let resources = member.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris,
        [format!("admin-platform://prompt-templates/{template}")]
    );
    let templates = member.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 2);
    let read = member
        .read_resource(ReadResourceRequestParams::new(uris[0]))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents {
        text, mime_type, ..
    } = &read.contents[0]
    else {
        panic!("text contents: {read:?}");
    };
    assert_eq!(mime_type.as_deref(), Some("application/json"));
    let read: Value = serde_json::from_str(text).unwrap();
    assert_eq!(read["promptText"], "All about {{name}}");
    let first = member
        .read_resource(ReadResourceRequestParams::new(format!(
            "admin-platform://prompt-templates/{template}/versions/1"
        )))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &first.contents[0] else {
        panic!("text contents");
    };
    assert!(text.contains("About {{name}}"), "{text}");
    for missing in [
        format!(
            "admin-platform://prompt-templates/{}",
            foreign["id"].as_str().unwrap()
        ),
        "admin-platform://elsewhere".to_owned(),
    ] {
        let error = member
            .read_resource(ReadResourceRequestParams::new(missing.clone()))
            .await;
        assert!(
            format!("{error:?}").contains("-32002"),
            "{missing}: {error:?}"
        );
    }

    // Prompts, with their placeholders as arguments.
    let prompts = member.list_all_prompts().await.unwrap();
    let id = prompt["id"].as_str().unwrap();
    let listed = prompts.iter().find(|p| p.name == id).expect("the prompt");
    assert_eq!(listed.title.as_deref(), Some("Support reply"));
    let arguments: Vec<&str> = listed
        .arguments
        .iter()
        .flatten()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(arguments, ["customer", "order"]);
    let arguments: Map<String, Value> =
        serde_json::from_value(json!({"customer": "Ann", "order": "42"})).unwrap();
    let got = member
        .get_prompt(GetPromptRequestParams::new(id).with_arguments(arguments))
        .await
        .unwrap();
    let message = serde_json::to_value(&got.messages[0]).unwrap();
    assert_eq!(message["role"], "user");
    assert_eq!(message["content"]["text"], "Reply to Ann about 42");
    let error = member.get_prompt(GetPromptRequestParams::new(id)).await;
    assert!(
        format!("{error:?}").contains("customer, order"),
        "{error:?}"
    );
}

#[tokio::test]
async fn read_only_mode_offers_and_runs_only_reads() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|mcp| mcp.read_only = true).await;
    let session = connect(&mcp, &app.admin_token).await;
    let tools = session.list_all_tools().await.unwrap();
    assert!(!tools.is_empty());
    assert!(tools
        .iter()
        .all(|t| t.annotations.as_ref().unwrap().read_only_hint == Some(true)));
    let events = app.event_count().await;
    let write = session
        .call_tool(
            CallToolRequestParams::new("create_prompt").with_arguments(
                serde_json::from_value(
                    json!({"organizationId": setup.org, "title": "T", "content": "c"}),
                )
                .unwrap(),
            ),
        )
        .await;
    assert!(write.is_err(), "{write:?}");
    assert_eq!(app.event_count().await, events);
    assert!(ok(&session, "list_organizations", json!({})).await["data"].is_array());
}

#[tokio::test]
async fn the_transport_checks_tokens_origins_hosts_and_versions() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app
        .start_mcp(|mcp| mcp.allowed_origins = "https://console.example.com".into())
        .await;
    let initialize = json!({"protocolVersion": "2025-11-25", "capabilities": {},
                            "clientInfo": {"name": "curl", "version": "1"}});

    // No token: 401 pointing at the metadata, which names the issuer.
    let response = app
        .http
        .post(format!("{mcp}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = format!("{mcp}/.well-known/oauth-protected-resource/mcp");
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Unauthorized");
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, metadata) = send(app.http.get(format!("{mcp}{path}"))).await;
        assert_eq!(status, 200);
        assert_eq!(metadata["resource"], format!("{mcp}/mcp"));
        assert_eq!(metadata["authorization_servers"], json!([app.issuer.url]));
        assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    }
    // A bad token: 401, saying so.
    let response = rpc(&mcp, "not-a-token", "initialize", initialize.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\", resource_metadata="));

    // Origins: an allowed one and none pass, another is refused.
    for (origin, status) in [
        (Some("https://console.example.com"), 200),
        (None, 200),
        (Some("https://evil.example"), 403),
    ] {
        let mut request = rpc(&mcp, &app.admin_token, "initialize", initialize.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{origin:?}");
    }
    // A host that is not allowed (DNS rebinding) is refused.
    let response = rpc(&mcp, &app.admin_token, "initialize", initialize.clone())
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Versions: an unknown one in the header is 400; initialize with one is answered with ours.
    let response = rpc(&mcp, &app.admin_token, "tools/list", json!({}))
        .header("mcp-protocol-version", "1999-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let mut old = initialize.clone();
    old["protocolVersion"] = json!("1999-01-01");
    let response = rpc(&mcp, &app.admin_token, "initialize", old)
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["result"]["protocolVersion"], "2025-11-25",
        "{answer}"
    );
    // Stateless: no session id, and a call needs no initialize before it.
    let response = rpc(&mcp, &app.admin_token, "tools/list", json!({}))
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("mcp-session-id").is_none());
    let answer: Value = response.json().await.unwrap();
    assert!(answer["result"]["tools"].as_array().unwrap().len() > 20);
}

#[tokio::test]
async fn the_processed_queue_answers_through_mcp_as_over_rest() {
    let s3 = S3Server::start().await;
    let app = TestApp::spawn_with_queue(&s3).await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    let bucket = app.bucket.as_ref().expect("a bucket");
    let keys = produce(bucket, org.parse().unwrap(), env.parse().unwrap(), 3, 1, 0)
        .await
        .unwrap();
    let mcp = app.start_mcp(|_| {}).await;
    let session = connect(&mcp, &app.admin_token).await;
    let scope = json!({"organizationId": org});
    // Indexed, and every body read (so that the lists below are of settled rows).
    let counts = wait_for(|| async {
        let counts = ok(&session, "count_processed_messages", scope.clone()).await;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM read_models.processed_messages WHERE summary = 'pending'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        (counts["total"] == 3 && pending == 0).then_some(counts)
    })
    .await;
    let (_, rest) = app
        .get(&format!("/api/processed-queue/counts?organizationId={org}"))
        .await;
    assert_eq!(counts, rest);
    let listed = ok(&session, "list_processed_messages", scope.clone()).await;
    let (_, rest) = app
        .get(&format!("/api/processed-queue?organizationId={org}"))
        .await;
    assert_eq!(listed, rest);
    let one = ok(
        &session,
        "get_processed_message",
        json!({"organizationId": org, "key": keys[0]}),
    )
    .await;
    assert_eq!(one["key"], keys[0], "{one}");
    assert!(one.get("body").is_some(), "{one}");

    // Another organization's member sees none of it.
    let other = app.create_organization("Other").await;
    app.add_member(&other, "queue-outsider", "admin").await;
    let outsider = connect(&mcp, &app.issuer.token("queue-outsider")).await;
    let refusal = refused(&outsider, "list_processed_messages", scope).await;
    assert!(
        [403, 404].contains(&refusal["status"].as_u64().unwrap()),
        "{refusal}"
    );
}

/// The `mcp-api` binary, configured from the environment as deployed: it serves the tools, and
/// reports itself among the runtime's instances.
#[tokio::test]
async fn the_binary_serves_mcp_and_reports_its_heartbeat() {
    let app = TestApp::spawn().await;
    let instances = |service: &'static str| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM service_instances WHERE service = $1",
            )
            .bind(service)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = (instances("command-api").await, instances("query-api").await);
    let stack = Stack::new(&app.db, &app.issuer);
    let service = stack.mcp_api().await;
    let session = connect(&service.url, &app.admin_token).await;
    let organizations = ok(&session, "list_organizations", json!({})).await;
    assert!(organizations["data"].is_array(), "{organizations}");
    wait_for(|| async {
        let (_, runtime) = app.get("/api/v1/admin/runtime").await;
        let services = runtime["services"].as_array()?.clone();
        services
            .iter()
            .any(|s| s["service"] == "mcp-api")
            .then_some(())
    })
    .await;
    // It runs command-api's and query-api's handlers, but is not an instance of either.
    let after = (instances("command-api").await, instances("query-api").await);
    assert_eq!(after, before);
}

/// The official Python SDK (`mcp` on PyPI) against the server: `tests/mcp/client.py` says what it
/// checks. It runs on `MCP_PYTHON`, a python with `mcp` installed (`deploy/test.sh` makes one), or
/// else on `python3`.
#[tokio::test]
async fn python_sdk_client() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let mcp = app.start_mcp(|_| {}).await;
    let model = setup.model("ok", "openai").await;
    let template = setup.template("Tell me about {{name}}", &model).await;
    app.add_member(&setup.org, "py-guest", "guest").await;
    let other_org = app.create_organization("Other").await;
    let script = format!("{}/mcp/client.py", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("MCP_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("MCP_URL", format!("{mcp}/mcp"))
        .env("SYSTEM_TOKEN", &app.admin_token)
        .env("GUEST_TOKEN", app.issuer.token("py-guest"))
        .env("ORGANIZATION_ID", &setup.org)
        .env("ENVIRONMENT_ID", &setup.env)
        .env("OTHER_ORGANIZATION_ID", &other_org)
        .env("TEMPLATE_ID", &template)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A JSON-RPC request to the server, as a client without an SDK sends it.
fn rpc(base: &str, token: &str, method: &str, params: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
}

/// Waits until `check` gives a value (at most 30 s).
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    mut check: impl FnMut() -> F,
) -> T {
    for _ in 0..300 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 30 s")
}
