//! The gateway, with real nginx: `deploy/nginx.conf.template` rendered as `deploy/up.sh` renders it,
//! in front of the two APIs and the MCP server. Only `/api/`, `/mcp` with its protected resource
//! metadata, and the gateway's own `/healthz` are public; the services' `/metrics` and `/readyz` are
//! for operators and answer 404 through it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tests::process::free_addr;
use tests::{gateway_upstream, send, TestApp};

/// nginx on the rendered template, stopped (with its workers) when dropped.
struct Gateway {
    master: Child,
    dir: PathBuf,
    url: String,
}

impl Gateway {
    async fn start(app: &TestApp) -> Gateway {
        let dir = std::env::temp_dir().join(format!("gateway-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("nginx-tmp")).expect("creating the run directory");
        let addr = free_addr();
        let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf.template");
        let routes = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/gateway-routes.map");
        let mcp = app.start_mcp(|_| {}).await;
        let rendered = Command::new("envsubst")
            .arg("${RUN_DIR} ${GATEWAY_ADDR} ${COMMAND_API_ADDR} ${QUERY_API_ADDR} ${MCP_API_ADDR} ${GATEWAY_ROUTES}")
            .env("RUN_DIR", &dir)
            .env("GATEWAY_ROUTES", routes)
            .env("GATEWAY_ADDR", addr.to_string())
            .env(
                "COMMAND_API_ADDR",
                app.command_url.trim_start_matches("http://"),
            )
            .env(
                "QUERY_API_ADDR",
                app.query_url.trim_start_matches("http://"),
            )
            .env("MCP_API_ADDR", mcp.trim_start_matches("http://"))
            .stdin(std::fs::File::open(template).expect("reading the template"))
            .output()
            .expect("envsubst (Debian package gettext-base; deploy/test.sh installs it)");
        assert!(rendered.status.success(), "envsubst failed");
        let config = dir.join("nginx.conf");
        std::fs::write(&config, rendered.stdout).expect("writing the rendered config");
        let prefix = format!("{}/", dir.display());
        let master = Command::new("nginx")
            .args(["-p", &prefix, "-e"])
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx (Debian package nginx; deploy/test.sh installs it)");
        let gateway = Gateway {
            master,
            dir,
            url: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/healthz", gateway.url))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(gateway.dir.join("nginx-error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its workers too; SIGKILL would leave them serving.
        let _ = Command::new("kill")
            .args(["-TERM", &self.master.id().to_string()])
            .status();
        let _ = self.master.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_gateway_serves_the_api_and_hides_the_operators_endpoints() {
    let app = TestApp::spawn().await;
    let gateway = Gateway::start(&app).await;
    let http = reqwest::Client::new();
    let through = |method: Method, path: &str| {
        http.request(method, format!("{}{path}", gateway.url))
            .bearer_auth(&app.admin_token)
    };

    // Writes reach command-api, reads query-api.
    let (status, body) = send(
        through(Method::POST, "/api/organizations").json(&json!({ "name": "Through the gateway" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("an id");
    let (status, body) = send(through(Method::GET, &format!("/api/organizations/{id}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Through the gateway");
    let (status, body) = send(http.get(format!("{}/healthz", gateway.url))).await;
    assert_eq!((status, body), (200, json!("ok")));

    // Browser sign-in writes on GET: the gateway sends it to command-api, as the tests' client does
    // (both route by deploy/gateway-routes.map).
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let path = "/api/auth/login?returnTo=/organizations";
    assert_eq!(gateway_upstream(&Method::GET, path), "command_api");
    let status = |url: String| {
        let request = no_redirects.get(url);
        async move { request.send().await.expect("a response").status() }
    };
    let direct = status(format!("{}{path}", app.command_url)).await;
    assert!(
        direct.is_redirection(),
        "command-api answers sign-in with {direct}"
    );
    assert_eq!(status(format!("{}{path}", gateway.url)).await, direct);
    assert_eq!(
        gateway_upstream(&Method::HEAD, "/api/organizations"),
        "query_api"
    );
    assert_eq!(
        gateway_upstream(&Method::DELETE, "/api/organizations/x"),
        "command_api"
    );

    // Both services answer these themselves; the gateway does not pass them on.
    for service in [&app.command_url, &app.query_url] {
        let (status, _) = send(http.get(format!("{service}/metrics"))).await;
        assert_eq!(status, 200, "{service}/metrics");
    }
    for path in [
        "/metrics",
        "/readyz",
        "/metrics?format=prometheus",
        "/api/../metrics",
        "/readyz/",
        "/",
        "/openapi.yaml",
    ] {
        for method in [Method::GET, Method::POST] {
            let (status, body) = send(through(method.clone(), path)).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert!(body["error"].is_string(), "{method} {path}: {body}");
        }
    }

    // The MCP server answers at /mcp, and tells clients without a token where its metadata is.
    let list_tools = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let response = http
        .post(format!("{}/mcp", gateway.url))
        .json(&list_tools)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("/.well-known/oauth-protected-resource/mcp"));
    let (status, metadata) = send(http.get(format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        gateway.url
    )))
    .await;
    assert_eq!(status, 200, "{metadata}");
    let (status, body) = send(
        through(Method::POST, "/mcp")
            .header("accept", "application/json, text/event-stream")
            .json(&list_tools),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.len() > 20),
        "{body}"
    );
}

/// A streamed execution reaches the client through the gateway as it is written, not when it ends.
#[tokio::test]
async fn streamed_executions_pass_the_gateway_as_they_are_written() {
    use futures::StreamExt;
    use tests::fake_provider::{FakeProvider, Outcome};

    let app = TestApp::spawn().await;
    let gateway = Gateway::start(&app).await;
    let provider = FakeProvider::spawn().await.unwrap();
    let org = app.create_organization("Streaming").await;
    let env = app.create_environment(&org, "P").await;
    let (_, model) = app
        .post(
            "/api/models",
            json!({"organizationId": org, "name": "Slow", "modelUrl": provider.url("drip-300", "openai"), "token": "sk-x"}),
        )
        .await;
    let (_, template) = app
        .post(
            "/api/prompt-templates",
            json!({"organizationId": org, "environmentId": env, "modelId": model["id"], "name": "T",
                   "promptText": "one two three four five six"}),
        )
        .await;
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/prompt-templates/{}/execute",
            gateway.url,
            template["id"].as_str().unwrap()
        ))
        .bearer_auth(&app.admin_token)
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("event: delta"),
        "{first:?}"
    );
    assert_eq!(
        provider.requests().last().map(|r| r.outcome),
        Some(Outcome::Streaming),
        "the first delta arrived only once the provider had finished"
    );
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.contains("event: done"), "{rest}");

    // Through MCP too: the first progress message arrives while the provider still streams.
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", gateway.url))
        .bearer_auth(&app.admin_token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "execute_prompt_template", "arguments": {"id": template["id"]},
            "_meta": {"progressToken": "through-the-gateway"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("notifications/progress") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    assert_eq!(
        provider.requests().last().map(|r| r.outcome),
        Some(Outcome::Streaming),
        "the first progress message arrived only once the provider had finished"
    );
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(seen.contains("\"status\":\"succeeded\""), "{seen}");
}
