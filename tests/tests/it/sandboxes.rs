//! Sandbox status over HTTP: each environment's resources, executions in flight and failures of the
//! last hour, the busiest first with `active=true`, so that a spike can be traced to its tenant; and
//! System only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::send;

use crate::executions::Setup;

fn find<'a>(page: &'a Value, id: &str) -> Option<&'a Value> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == id)
}

/// The sandboxes `query` lists, once `ready` holds of them (or after 10 s).
async fn sandboxes(s: &Setup, query: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = s.app.get(&format!("/api/v1/admin/sandboxes?{query}")).await;
        assert_eq!(status, 200, "{page}");
        if ready(&page) || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operators_trace_running_and_failing_executions_to_their_environment() {
    let s = Setup::start().await;
    let staging = s.app.create_environment(&s.org, "Staging").await;
    let idle = s.app.create_environment(&s.org, "Idle").await;
    let failing = s
        .template("Hi {{name}}", &s.model("server-error", "openai").await)
        .await;
    let (status, _) = s.execute(&failing, json!({"variableSet": "default"})).await;
    assert_eq!(status, 502);
    let working = s
        .template("Hi {{name}}", &s.model("ok", "openai").await)
        .await;
    let (status, _) = s.execute(&working, json!({"variableSet": "default"})).await;
    assert_eq!(status, 200);

    // Two slow executions in Staging, still running while operators look.
    let slow = s.model("slow-1500", "openai").await;
    let (status, template) = s
        .app
        .post(
            "/api/prompt-templates",
            json!({
                "organizationId": s.org, "environmentId": staging, "modelId": slow,
                "name": "slow", "promptText": "Hi", "variables": {},
            }),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let path = format!(
        "/api/prompt-templates/{}/execute",
        template["id"].as_str().unwrap()
    );
    let running: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(s.app.admin(Method::POST, &path).json(&json!({})))))
        .collect();

    // A page's rows and its total are two statements run side by side, so the wait is for both to
    // have seen the executions start.
    let busy = sandboxes(&s, "active=true", |page| {
        find(page, &staging).is_some_and(|row| row["executionsInFlight"] == 2)
            && page["pagination"]["total"] == 2
    })
    .await;
    assert_eq!(busy["pagination"]["total"], 2, "Idle is not active: {busy}");
    assert_eq!(busy["data"][0]["id"], staging, "the busiest first: {busy}");
    assert_eq!(busy["data"][0]["executionsLastHour"], 2);
    let production = &busy["data"][1];
    assert_eq!(production["id"], s.env);
    assert_eq!(production["failuresLastHour"], 1);
    assert_eq!(production["executionsLastHour"], 2);
    assert_eq!(production["executionsInFlight"], 0);
    assert_eq!(production["organization"]["name"], "Acme");
    assert_eq!(
        production["resources"],
        json!({"prompt_template": 2}),
        "{production}"
    );
    assert!(production["lastActivityAt"].is_string());

    for task in running {
        assert_eq!(task.await.unwrap().0, 200);
    }
    let settled = sandboxes(&s, "active=true", |page| {
        find(page, &staging).is_some_and(|row| row["executionsInFlight"] == 0)
    })
    .await;
    assert_eq!(find(&settled, &staging).unwrap()["executionsLastHour"], 2);

    let all = sandboxes(&s, &format!("organizationId={}", s.org), |_| true).await;
    assert_eq!(all["pagination"]["total"], 3);
    let quiet = find(&all, &idle).unwrap();
    assert_eq!(quiet["executionsLastHour"], 0);
    assert_eq!(quiet["resources"], json!({}));
    let (_, searched) = s.app.get("/api/v1/admin/sandboxes?search=stag").await;
    assert_eq!(searched["data"][0]["id"], staging);
    assert_eq!(searched["pagination"]["total"], 1);

    s.app.add_member(&s.org, "org-admin", "admin").await;
    let (status, _) = send(
        s.app
            .as_user("org-admin", Method::GET, "/api/v1/admin/sandboxes"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = s.app.get("/api/v1/admin/sandboxes?active=yes").await;
    assert_eq!(status, 400);
}
