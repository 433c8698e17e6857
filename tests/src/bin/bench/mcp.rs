//! (o) The MCP server: `tools/call` of `list_prompts` (a page of 10 of an organization's 50 prompts)
//! from `--clients` HTTP clients, as stateless JSON-RPC over Streamable HTTP, against the equivalent
//! `GET /api/prompts` sent straight to query-api, in the same run and both orders, averaged. Both
//! answer from the same read model with the same authorisation; the tool call adds the JSON-RPC
//! envelope, the transport's checks and an in-process pass through query-api's router.

use std::time::Duration;

use serde_json::json;
use tests::TestApp;

use super::{run_for, Measured};

pub async fn run(app: &TestApp, clients: usize, duration: Duration) -> anyhow::Result<()> {
    let mcp = app.start_mcp(|_| {}).await;
    let org = app.create_organization("MCP Bench").await;
    for n in 0..50 {
        let (status, body) = app
            .post(
                "/api/prompts",
                json!({"organizationId": org, "title": format!("Prompt {n}"), "content": "Hi {{who}}"}),
            )
            .await;
        anyhow::ensure!(status == 201, "creating a prompt: {body}");
    }
    let http = reqwest::Client::new();
    let rest_url = format!(
        "{}/api/prompts?organizationId={org}&limit=10",
        app.query_url
    );
    let token = app.admin_token.clone();
    let rest = {
        let (http, url, token) = (http.clone(), rest_url, token.clone());
        move || {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(response) if response.status() == 200 => response.bytes().await.is_ok(),
                    _ => false,
                }
            }
        }
    };
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "list_prompts", "arguments": {"organizationId": org, "limit": 10}}})
    .to_string();
    let tool = {
        let (http, url, token) = (http.clone(), format!("{mcp}/mcp"), token.clone());
        move || {
            let (http, url, token, call) = (http.clone(), url.clone(), token.clone(), call.clone());
            async move {
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("accept", "application/json, text/event-stream")
                    .header("content-type", "application/json")
                    .header("mcp-protocol-version", "2025-11-25")
                    .body(call)
                    .send()
                    .await;
                let Ok(response) = response else {
                    return false;
                };
                let body: serde_json::Value = match response.json().await {
                    Ok(body) => body,
                    Err(_) => return false,
                };
                body["result"]["structuredContent"]["data"]
                    .as_array()
                    .is_some_and(|rows| rows.len() == 10)
            }
        }
    };
    // Warm both up, then measure each twice, alternating, so that neither has the machine's better half.
    let warm = Duration::from_secs(1);
    let (warm_rest, warm_tool) = (rest.clone(), tool.clone());
    run_for(clients, warm, move |_, _| warm_rest()).await;
    run_for(clients, warm, move |_, _| warm_tool()).await;
    let mut rest_runs = Vec::new();
    let mut tool_runs = Vec::new();
    for _ in 0..2 {
        let rest = rest.clone();
        rest_runs.push(run_for(clients, duration, move |_, _| rest()).await);
        let tool = tool.clone();
        tool_runs.push(run_for(clients, duration, move |_, _| tool()).await);
    }
    let (rest, tool) = (average(&rest_runs), average(&tool_runs));
    println!(
        "(o) MCP tools/call list_prompts (10 of 50 rows), {clients} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
         GET /api/prompts straight to query-api: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; ratio {:.2} (target >= 0.7)",
        tool.rate, tool.p50, tool.p99, tool.errors, rest.rate, rest.p50, rest.p99, rest.errors,
        tool.rate / rest.rate
    );
    Ok(())
}

fn average(runs: &[Measured]) -> Measured {
    let n = runs.len() as f64;
    Measured {
        rate: runs.iter().map(|m| m.rate).sum::<f64>() / n,
        p50: runs.iter().map(|m| m.p50).sum::<f64>() / n,
        p99: runs.iter().map(|m| m.p99).sum::<f64>() / n,
        errors: runs.iter().map(|m| m.errors).sum(),
        cpu: None,
    }
}
