//! Usage and spend control over HTTP, with executions against the fake provider: usage reports equal
//! to the executions they cover in every grouping, budgets and their checks, usage alerts once per
//! threshold, the hard stop (sequential and under concurrent executions), billing health, and System
//! only.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, EXECUTIONS_PER_ORGANIZATION};

use crate::executions::Setup;

/// A template in `env` of the setup's organization, using `model`.
async fn template_in(s: &Setup, env: &str, model: &str) -> String {
    let (status, template) = s
        .app
        .post(
            "/api/prompt-templates",
            json!({
                "organizationId": s.org, "environmentId": env, "modelId": model,
                "name": format!("T {}", uuid::Uuid::new_v4()), "promptText": "Hi {{name}}",
                "variables": {"name": "string"},
                "variableSets": [{"name": "default", "values": {"name": "Ann"}}],
            }),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    template["id"].as_str().unwrap().to_owned()
}

/// A new organization, and one execution of its own.
pub(crate) async fn an_execution_of_another_organization(s: &Setup) -> (String, Value) {
    let org = s.app.create_organization("Other").await;
    let env = s.app.create_environment(&org, "Production").await;
    let (status, model) = s
        .app
        .post(
            "/api/models",
            json!({
                "organizationId": org, "name": "theirs", "modelUrl": s.provider.url("ok", "openai"),
                "provider": "openai", "providerModel": "test-model", "token": "sk-theirs",
                "inputPricePerMillionTokens": 1, "outputPricePerMillionTokens": 1, "currency": "USD",
            }),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let (status, template) = s
        .app
        .post(
            "/api/prompt-templates",
            json!({
                "organizationId": org, "environmentId": env, "modelId": model["id"],
                "name": "theirs", "promptText": "Hello", "variables": {},
            }),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let (_, answer) = s.execute(template["id"].as_str().unwrap(), json!({})).await;
    (org, s.execution(&answer["executionId"]).await)
}

/// Runs `template` and returns the recorded execution.
async fn run(s: &Setup, template: &str) -> Value {
    let (_, answer) = s.execute(template, json!({"variableSet": "default"})).await;
    s.execution(&answer["executionId"]).await
}

/// The sums `executions` make, keyed as `key` says, in the API's shape.
fn expected(executions: &[&Value], key: impl Fn(&Value) -> String) -> BTreeMap<String, Value> {
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for execution in executions {
        groups.entry(key(execution)).or_default().push(execution);
    }
    groups
        .into_iter()
        .map(|(key, mine)| (key, sums(&mine)))
        .collect()
}

fn sums(executions: &[&Value]) -> Value {
    let tokens = |field: &str| -> i64 {
        executions
            .iter()
            .map(|e| e["usage"][field].as_i64().unwrap_or(0))
            .sum()
    };
    let cost: f64 = executions
        .iter()
        .map(|e| e["cost"]["total"].as_f64().unwrap_or(0.0))
        .sum();
    json!({
        "executions": executions.len(),
        "failures": executions.iter().filter(|e| e["status"] == "failed").count(),
        "inputTokens": tokens("inputTokens"),
        "outputTokens": tokens("outputTokens"),
        "cost": (cost * 1e9).round() / 1e9,
    })
}

/// A reported group in the shape of [`sums`] (its cost in USD, rounded the same way).
fn reported(group: &Value) -> Value {
    let cost = group["cost"]["USD"].as_f64().unwrap_or(0.0);
    json!({
        "executions": group["executions"].as_u64().unwrap() as usize,
        "failures": group["failures"].as_u64().unwrap() as usize,
        "inputTokens": group["inputTokens"],
        "outputTokens": group["outputTokens"],
        "cost": (cost * 1e9).round() / 1e9,
    })
}

async fn usage(s: &Setup, query: &str) -> Value {
    let (status, body) = s.app.get(&format!("/api/v1/admin/usage?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

fn groups(body: &Value) -> BTreeMap<String, Value> {
    body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap().to_owned(), reported(g)))
        .collect()
}

#[tokio::test]
async fn usage_equals_the_executions_it_covers_in_every_grouping() {
    let s = Setup::start().await;
    let staging = s.app.create_environment(&s.org, "Staging").await;
    let ok = s.model("ok", "openai").await;
    let anthropic = s.model("ok", "anthropic").await;
    let failing = s.model("server-error", "openai").await;
    let mut executions = Vec::new();
    for (env, model, runs) in [
        (&s.env, &ok, 3),
        (&staging, &anthropic, 2),
        (&staging, &failing, 2),
    ] {
        let template = template_in(&s, env, model).await;
        for _ in 0..runs {
            executions.push(run(&s, &template).await);
        }
    }
    // Another organization's executions are in the platform's totals, not in this one's.
    let (other, theirs) = an_execution_of_another_organization(&s).await;

    let mine: Vec<&Value> = executions.iter().collect();
    let org = &s.org;
    let day = |e: &Value| e["finishedAt"].as_str().unwrap()[..10].to_owned();
    for (group_by, key) in [
        ("day", &day as &dyn Fn(&Value) -> String),
        ("month", &|e: &Value| day(e)[..7].to_owned()),
        ("model", &|e: &Value| {
            e["modelId"].as_str().unwrap().to_owned()
        }),
        ("environment", &|e: &Value| {
            e["environmentId"].as_str().unwrap().to_owned()
        }),
    ] {
        let body = usage(&s, &format!("organizationId={org}&groupBy={group_by}")).await;
        assert_eq!(groups(&body), expected(&mine, key), "grouped by {group_by}");
        assert_eq!(reported(&body["total"]), sums(&mine), "{group_by}");
    }
    // Filters: one environment, one model, and a range of days.
    let in_staging: Vec<&Value> = mine
        .iter()
        .copied()
        .filter(|e| e["environmentId"] == staging.as_str())
        .collect();
    let body = usage(&s, &format!("organizationId={org}&environmentId={staging}")).await;
    assert_eq!(reported(&body["total"]), sums(&in_staging));
    assert_eq!(in_staging.len(), 4);
    let of_model: Vec<&Value> = mine
        .iter()
        .copied()
        .filter(|e| e["modelId"] == ok.as_str())
        .collect();
    let body = usage(&s, &format!("modelId={ok}")).await;
    assert_eq!(reported(&body["total"]), sums(&of_model));
    let today = day(&executions[0]);
    let body = usage(
        &s,
        &format!("organizationId={org}&from={today}&to=2999-01-01"),
    )
    .await;
    assert_eq!(reported(&body["total"]), sums(&mine));
    let body = usage(&s, &format!("organizationId={org}&to={today}")).await;
    assert_eq!(body["total"]["executions"], 0, "before today: {body}");

    // Platform-wide over time (the platform's own daily sums): everyone's executions.
    let everyone: Vec<&Value> = mine.iter().copied().chain([&theirs]).collect();
    for group_by in ["day", "week", "month"] {
        let body = usage(&s, &format!("groupBy={group_by}")).await;
        assert_eq!(reported(&body["total"]), sums(&everyone), "{group_by}");
    }
    let body = usage(&s, "groupBy=day").await;
    assert_eq!(groups(&body), expected(&everyone, day));

    // Platform-wide by organization: each organization its own, with its name.
    let body = usage(&s, "groupBy=organization").await;
    let listed = &body["groups"];
    let acme = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == org.as_str())
        .unwrap();
    assert_eq!(acme["name"], "Acme");
    assert_eq!(reported(acme), sums(&mine));
    let other_group = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == other.as_str())
        .unwrap();
    assert_eq!(reported(other_group), sums(&[&theirs]));

    // Bad parameters are refused, naming the parameter; operators only.
    for (query, field) in [
        ("groupBy=hour", "groupBy"),
        ("from=yesterday", "from"),
        ("from=2026-01-01T10:00:00Z", "from"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("organizationId=acme", "organizationId"),
    ] {
        let (status, body) = s.app.get(&format!("/api/v1/admin/usage?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["details"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
    s.app.add_member(&s.org, "org-admin", "admin").await;
    for path in ["/api/v1/admin/usage", "/api/v1/admin/billing"] {
        let (status, _) = send(s.app.as_user("org-admin", Method::GET, path)).await;
        assert_eq!(status, 403, "{path}");
    }
}

/// The usage alerts of `org`, oldest threshold first.
async fn usage_alerts(s: &Setup, org: &str) -> Vec<Value> {
    let (status, page) = s
        .app
        .get(&format!(
            "/api/v1/admin/notifications?kind=usage&organizationId={org}&limit=100"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let mut alerts = page["data"].as_array().unwrap().clone();
    alerts.sort_by(|a, b| {
        a["source"]["threshold"]
            .as_f64()
            .partial_cmp(&b["source"]["threshold"].as_f64())
            .unwrap()
    });
    alerts
}

/// Sets the setup organization's budget.
async fn set_budget(s: &Setup, budget: Value) -> Value {
    let path = format!("/api/v1/admin/organizations/{}/budget", s.org);
    let (status, answer) = s.app.put(&path, budget).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn billing(s: &Setup) -> Value {
    let (status, page) = s.app.get("/api/v1/admin/billing?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["organizationId"] == s.org.as_str())
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_budget_alerts_once_per_threshold_and_its_hard_stop_refuses_executions_until_raised() {
    let s = Setup::start().await;
    let template = s
        .template("Hi {{name}}", &s.model("ok", "openai").await)
        .await;
    let cost = run(&s, &template).await["cost"]["total"].as_f64().unwrap();
    assert!(cost > 0.0);
    let budget_path = format!("/api/v1/admin/organizations/{}/budget", s.org);

    // Spent: one execution. The limit is 2.5 of them: alerts at half and at the whole.
    let budget = set_budget(
        &s,
        json!({"monthlyLimit": cost * 2.5, "currency": "USD", "alertAt": [1.0, 0.5], "hardStop": true}),
    )
    .await;
    assert_eq!(budget["alertAt"], json!([0.5, 1.0]));
    let (status, read) = s.app.get(&budget_path).await;
    assert_eq!(status, 200);
    assert_eq!(read, budget);
    assert!(usage_alerts(&s, &s.org).await.is_empty());
    assert_eq!(billing(&s).await["state"], "ok");

    run(&s, &template).await; // 2 of 2.5: half reached
    let alerts = usage_alerts(&s, &s.org).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(
        alerts[0]["subject"],
        "Spend reached 50% of the monthly budget"
    );
    assert_eq!(alerts[0]["severity"], "medium");
    assert_eq!(billing(&s).await["state"], "alerting");

    run(&s, &template).await; // 3 of 2.5: the whole, and the hard stop
    let alerts = usage_alerts(&s, &s.org).await;
    assert_eq!(alerts.len(), 2, "each threshold once: {alerts:#?}");
    assert_eq!(alerts[1]["severity"], "high");
    assert!(
        alerts[1]["summary"]
            .as_str()
            .unwrap()
            .contains("executions are stopped"),
        "{}",
        alerts[1]
    );
    assert_eq!(alerts[0]["occurrences"], 1, "the half is not alerted again");
    let row = billing(&s).await;
    assert_eq!(row["state"], "exhausted");
    assert!(
        (row["spent"].as_f64().unwrap() - 3.0 * cost).abs() < 1e-9,
        "{row}"
    );

    let calls = s.provider.requests().len();
    let (status, refused) = s
        .execute(&template, json!({"variableSet": "default"}))
        .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["error"], "Budget exhausted");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("monthly budget"),
        "{refused}"
    );
    assert_eq!(
        s.provider.requests().len(),
        calls,
        "a refused execution calls no model"
    );

    // Without the hard stop, or with a raised limit, executions run again.
    set_budget(&s, json!({"monthlyLimit": cost * 2.5, "currency": "USD", "alertAt": [0.5, 1.0], "hardStop": false})).await;
    assert_eq!(run(&s, &template).await["status"], "succeeded");
    set_budget(&s, json!({"monthlyLimit": cost * 100.0, "currency": "USD", "alertAt": [0.5, 1.0], "hardStop": true})).await;
    assert_eq!(run(&s, &template).await["status"], "succeeded");
    // A budget in another currency counts none of this spend.
    set_budget(
        &s,
        json!({"monthlyLimit": cost, "currency": "EUR", "hardStop": true}),
    )
    .await;
    assert_eq!(run(&s, &template).await["status"], "succeeded");

    // Lowered under this month's spend: stopped at once; the whole was alerted this month already,
    // so it is not alerted again.
    set_budget(
        &s,
        json!({"monthlyLimit": cost, "currency": "USD", "alertAt": [1.0], "hardStop": true}),
    )
    .await;
    let (status, _) = s
        .execute(&template, json!({"variableSet": "default"}))
        .await;
    assert_eq!(status, 402);
    assert_eq!(usage_alerts(&s, &s.org).await.len(), 2);
    // A threshold never reached this month, already passed by the spend when the budget is set: alerted
    // at once, by the setting.
    set_budget(
        &s,
        json!({"monthlyLimit": cost * 2.5, "currency": "USD", "alertAt": [0.8], "hardStop": false}),
    )
    .await;
    let alerts = usage_alerts(&s, &s.org).await;
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    assert_eq!(
        alerts[1]["subject"],
        "Spend reached 80% of the monthly budget"
    );

    // Removed: no stop, no row in billing health; removing again is 404.
    let (status, _) = s.app.delete(&budget_path).await;
    assert_eq!(status, 200);
    assert_eq!(run(&s, &template).await["status"], "succeeded");
    assert_eq!(billing(&s).await, Value::Null);
    let (status, body) = s.app.delete(&budget_path).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = s.app.get(&budget_path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_budget_is_checked_and_operators_only() {
    let s = Setup::start().await;
    let path = format!("/api/v1/admin/organizations/{}/budget", s.org);
    for (body, field) in [
        (
            json!({"monthlyLimit": 0, "currency": "USD"}),
            "monthlyLimit",
        ),
        (
            json!({"monthlyLimit": -5, "currency": "USD"}),
            "monthlyLimit",
        ),
        (
            json!({"monthlyLimit": 10, "currency": "dollars"}),
            "currency",
        ),
        (
            json!({"monthlyLimit": 10, "currency": "USD", "alertAt": [0]}),
            "alertAt",
        ),
        (
            json!({"monthlyLimit": 10, "currency": "USD", "alertAt": [0.5, 20]}),
            "alertAt",
        ),
        (json!({"currency": "USD"}), "monthlyLimit"),
        (
            json!({"monthlyLimit": 10, "currency": "USD", "cap": 3}),
            "cap",
        ),
    ] {
        let (status, answer) = s.app.put(&path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    let (status, _) = s.app.get(&path).await;
    assert_eq!(status, 404, "nothing was set");
    let missing = uuid::Uuid::now_v7();
    let (status, _) = s
        .app
        .put(
            &format!("/api/v1/admin/organizations/{missing}/budget"),
            json!({"monthlyLimit": 10, "currency": "USD"}),
        )
        .await;
    assert_eq!(status, 404);

    s.app.add_member(&s.org, "org-admin", "admin").await;
    let body = json!({"monthlyLimit": 10, "currency": "USD"});
    let (status, _) = send(s.app.as_user("org-admin", Method::PUT, &path).json(&body)).await;
    assert_eq!(
        status, 403,
        "an organization's admin does not set its budget"
    );
    let (status, _) = send(s.app.as_user("org-admin", Method::GET, &path)).await;
    assert_eq!(status, 403);

    // Set, with defaults; setting it again changes nothing; it is in the audit trail.
    let (status, budget) = s.app.put(&path, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(budget["alertAt"], json!([0.5, 0.8, 1.0]));
    assert_eq!(budget["hardStop"], false);
    let events = s.app.event_count().await;
    let (status, again) = s.app.put(&path, body).await;
    assert_eq!(status, 200);
    assert_eq!(again, budget);
    assert_eq!(s.app.event_count().await, events);
    let (status, trail) = s
        .app
        .get(&format!(
            "/api/audit-events?resourceType=budget&resourceId={}",
            s.org
        ))
        .await;
    assert_eq!(status, 200, "{trail}");
    assert_eq!(trail["data"][0]["type"], "budget.set", "{trail}");
}

#[tokio::test]
async fn the_hard_stop_holds_under_concurrent_executions_to_the_executions_in_flight() {
    let s = Setup::start().await;
    let template = s
        .template("Hi {{name}}", &s.model("slow-300", "openai").await)
        .await;
    let cost = run(&s, &template).await["cost"]["total"].as_f64().unwrap();
    // Spent: 1 execution; the limit: 2.5.
    set_budget(
        &s,
        json!({"monthlyLimit": cost * 2.5, "currency": "USD", "hardStop": true}),
    )
    .await;

    // Rounds of as many concurrent executions as the organization may run at once.
    let mut succeeded = 1;
    for _ in 0..3 {
        let rounds = (0..EXECUTIONS_PER_ORGANIZATION)
            .map(|_| s.execute(&template, json!({"variableSet": "default"})));
        for (status, answer) in futures::future::join_all(rounds).await {
            match status {
                200 => succeeded += 1,
                402 | 429 => {}
                other => panic!("{other}: {answer}"),
            }
        }
    }
    // Before the limit was reached, at most one round was in flight: everything after it was refused.
    assert!(
        succeeded <= 2 + EXECUTIONS_PER_ORGANIZATION,
        "{succeeded} executions ran against a limit of 2.5"
    );
    assert!(
        succeeded >= 3,
        "executions under the limit ran: {succeeded}"
    );
    // The spend the stop reads is every finished execution's cost, none lost to concurrency.
    let row = billing(&s).await;
    assert!(
        (row["spent"].as_f64().unwrap() - succeeded as f64 * cost).abs() < 1e-9,
        "{succeeded} executions, {row}"
    );
    let (status, _) = s
        .execute(&template, json!({"variableSet": "default"}))
        .await;
    assert_eq!(status, 402);
}

#[tokio::test]
async fn the_model_catalog_shows_each_models_use_and_health_from_its_executions() {
    let s = Setup::start().await;
    let ok = s.model("ok", "openai").await;
    let failing = s.model("echo-credential", "anthropic").await;
    let good = s.template("Hi {{name}}", &ok).await;
    let bad = s.template("Hi {{name}}", &failing).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(run(&s, &good).await);
    }
    let failed = run(&s, &bad).await;
    assert_eq!(failed["status"], "failed");

    let (status, page) = s
        .app
        .get(&format!(
            "/api/v1/admin/models?organizationId={}&window=7d",
            s.org
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["pagination"]["total"], 2);
    let model = |id: &str| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    let healthy = model(&ok);
    assert_eq!(healthy["kind"], "model");
    assert_eq!(healthy["provider"], "openai");
    assert_eq!(
        healthy["usedBy"],
        json!({"promptTemplates": 1, "prompts": 0})
    );
    let health = &healthy["health"];
    assert_eq!(health["window"], "7d");
    assert_eq!(health["executions"], 3);
    assert_eq!(health["failures"], 0);
    assert_eq!(health["successRate"], 1.0);
    let mine: Vec<&Value> = runs.iter().collect();
    let expected = sums(&mine);
    assert_eq!(health["inputTokens"], expected["inputTokens"]);
    assert_eq!(health["outputTokens"], expected["outputTokens"]);
    let cost = health["cost"]["USD"].as_f64().unwrap();
    assert!(
        (cost - expected["cost"].as_f64().unwrap()).abs() < 1e-9,
        "{health}"
    );
    let latencies: Vec<f64> = runs
        .iter()
        .map(|r| r["latencyMs"].as_f64().unwrap())
        .collect();
    let p50 = health["latencyMs"]["p50"].as_f64().unwrap();
    assert!(
        latencies.iter().cloned().fold(f64::MAX, f64::min) <= p50
            && p50 <= latencies.iter().cloned().fold(0.0, f64::max),
        "{health} vs {latencies:?}"
    );
    assert_eq!(health["lastError"], Value::Null);

    let unhealthy = model(&failing)["health"].clone();
    assert_eq!(unhealthy["failures"], 1);
    assert_eq!(unhealthy["successRate"], 0.0);
    assert_eq!(
        unhealthy["lastError"]["reason"], "provider_refused",
        "{unhealthy}"
    );
    assert!(unhealthy["lastError"]["at"].is_string());
    assert!(
        !unhealthy.to_string().contains("sk-live-"),
        "the provider echoed the credential; the catalog must not: {unhealthy}"
    );

    for query in ["window=1h", "kind=models", "provider=mistral"] {
        let (status, _) = s.app.get(&format!("/api/v1/admin/models?{query}")).await;
        assert_eq!(status, 400, "{query}");
    }
    s.app.add_member(&s.org, "org-admin", "admin").await;
    let (status, _) = send(
        s.app
            .as_user("org-admin", Method::GET, "/api/v1/admin/models"),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_probe_calls_the_model_once_through_the_outbound_path_and_the_catalog_shows_it() {
    let s = Setup::start().await;
    let ok = s.model("ok", "openai").await;
    let failing = s.model("echo-credential", "anthropic").await;
    let calls = s.provider.requests().len();
    let (status, probe) = s
        .app
        .post(&format!("/api/v1/admin/models/{ok}/probe"), json!({}))
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["ok"], true);
    assert!(probe["latencyMs"].is_u64() && probe["probedAt"].is_string());
    let sent = s.provider.requests();
    assert_eq!(sent.len(), calls + 1, "one request per probe");
    assert_eq!(
        sent.last().unwrap().body["max_tokens"],
        1,
        "{:?}",
        sent.last().unwrap().body
    );

    let (status, probe) = s
        .app
        .post(&format!("/api/v1/admin/models/{failing}/probe"), json!({}))
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["ok"], false);
    assert!(probe["providerStatus"].is_u64(), "{probe}");
    assert!(!probe.to_string().contains("sk-live-"), "{probe}");

    // A probe is no execution: usage and spend stay as they were.
    let (_, usage) = s
        .app
        .get(&format!("/api/v1/admin/usage?organizationId={}", s.org))
        .await;
    assert_eq!(usage["total"]["executions"], 0, "{usage}");
    let (_, page) = s
        .app
        .get(&format!("/api/v1/admin/models?organizationId={}", s.org))
        .await;
    let last_probe = |id: &str| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["lastProbe"]
            .clone()
    };
    assert_eq!(last_probe(&ok)["ok"], true);
    assert_eq!(last_probe(&ok)["by"], s.app.admin_id.as_str());
    let failed = last_probe(&failing);
    assert_eq!(failed["ok"], false);
    assert!(
        failed["error"].is_string() && !failed.to_string().contains("sk-live-"),
        "{failed}"
    );

    // A model at a private address is refused by the outbound guard, as an execution would be.
    let guarded = s
        .model_at("http://10.255.255.1/v1/chat/completions", "openai")
        .await;
    let (status, probe) = s
        .app
        .post(&format!("/api/v1/admin/models/{guarded}/probe"), json!({}))
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["ok"], false);
    assert_eq!(probe["providerStatus"], Value::Null);

    let missing = uuid::Uuid::now_v7();
    let (status, _) = s
        .app
        .post(&format!("/api/v1/admin/models/{missing}/probe"), json!({}))
        .await;
    assert_eq!(status, 404);
    s.app.add_member(&s.org, "org-admin", "admin").await;
    let (status, _) = send(s.app.as_user(
        "org-admin",
        Method::POST,
        &format!("/api/v1/admin/models/{ok}/probe"),
    ))
    .await;
    assert_eq!(status, 403);
}
