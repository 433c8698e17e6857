//! Executing prompt templates against models, over HTTP, against the fake provider speaking
//! OpenAI's and Anthropic's wire formats: rendering, both providers with and without streaming,
//! every failure mapping and its retries, cancellation when the client goes away, the per-organization
//! cap, the outbound guard, permissions, the recorded executions and their totals, and sentiment.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tests::fake_provider::{FakeProvider, Outcome};
use tests::{send, TestApp, EXECUTIONS_PER_ORGANIZATION};

/// An organization and environment with a model on the fake provider and a template that uses it
/// (also what `usage` runs its executions in).
pub(crate) struct Setup {
    pub(crate) app: TestApp,
    pub(crate) provider: FakeProvider,
    pub(crate) org: String,
    pub(crate) env: String,
    token: String,
}

impl Setup {
    pub(crate) async fn start() -> Setup {
        let app = TestApp::spawn().await;
        let provider = FakeProvider::spawn()
            .await
            .expect("starting the fake provider");
        let org = app.create_organization("Acme").await;
        let env = app.create_environment(&org, "Production").await;
        Setup {
            app,
            provider,
            org,
            env,
            token: format!("sk-live-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// A model of the organization at `scenario` of the fake provider, speaking `provider`'s format.
    pub(crate) async fn model(&self, scenario: &str, provider: &str) -> String {
        self.model_at(&self.provider.url(scenario, provider), provider)
            .await
    }

    pub(crate) async fn model_at(&self, url: &str, provider: &str) -> String {
        let (status, model) = self
            .app
            .post(
                "/api/models",
                json!({
                    "organizationId": self.org, "name": format!("{provider} {}", uuid::Uuid::new_v4()),
                    "modelUrl": url, "provider": provider, "providerModel": "test-model",
                    "token": self.token,
                    "inputPricePerMillionTokens": 2.5, "outputPricePerMillionTokens": 10, "currency": "USD",
                }),
            )
            .await;
        assert_eq!(status, 201, "{model}");
        model["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn template(&self, text: &str, model: &str) -> String {
        let (status, template) = self
            .app
            .post(
                "/api/prompt-templates",
                json!({
                    "organizationId": self.org, "environmentId": self.env, "modelId": model,
                    "name": format!("T {}", uuid::Uuid::new_v4()), "promptText": text,
                    "variables": {"name": "string", "order": "string"},
                    "variableSets": [{"name": "default", "values": {"name": "Ann", "order": "1"}}],
                }),
            )
            .await;
        assert_eq!(status, 201, "{template}");
        template["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn execute(&self, template: &str, body: Value) -> (u16, Value) {
        self.app
            .post(&format!("/api/prompt-templates/{template}/execute"), body)
            .await
    }

    pub(crate) async fn execution(&self, id: &Value) -> Value {
        let (status, body) = self
            .app
            .get(&format!("/api/executions/{}", id.as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A streamed answer's events, `(name, data)`, read to the end.
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut pending = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(
            &chunk.expect("reading the stream"),
        ));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("JSON event data")));
            }
        }
    }
    events
}

#[tokio::test]
async fn a_template_runs_on_both_providers_rendered_strictly_and_recorded() {
    let setup = Setup::start().await;
    let app = &setup.app;
    for provider in ["openai", "anthropic"] {
        let model = setup.model("ok", provider).await;
        let template = setup
            .template("Hello {{name}}, order {{ order }}", &model)
            .await;
        let (status, execution) = setup
            .execute(
                &template,
                json!({"variableSet": "default", "variables": {"order": "{{name}} & <b>", "unused": 1},
                       "parameters": {"temperature": 0.5, "maxTokens": 50}}),
            )
            .await;
        assert_eq!(status, 200, "{execution}");
        // The set's value, the request's override inserted as text and never rendered again.
        assert_eq!(
            execution["renderedPrompt"],
            "Hello Ann, order {{name}} & <b>"
        );
        assert_eq!(execution["output"], "Echo: Hello Ann, order {{name}} & <b>");
        assert_eq!(execution["status"], "succeeded");
        assert_eq!(execution["provider"], provider);
        assert_eq!(execution["templateVersion"], 1);
        assert_eq!(execution["modelId"], model.as_str());
        // The fake counts words: 6 in, 7 out (its reply is "Echo: " and the prompt), priced at
        // 2.5 and 10 USD per million.
        assert_eq!(
            execution["usage"],
            json!({"inputTokens": 6, "outputTokens": 7, "totalTokens": 13})
        );
        assert_eq!(
            execution["cost"],
            json!({"currency": "USD", "input": 0.000015, "output": 0.00007, "total": 0.000085})
        );
        assert!(execution["latencyMs"].as_u64().is_some());
        assert_eq!(execution["requestedBy"], app.admin_id.as_str());

        // The provider got the credential in its format, and the parameters.
        let sent = setup.provider.requests().pop().unwrap();
        assert_eq!(sent.provider, provider);
        assert_eq!(sent.credential.as_deref(), Some(setup.token.as_str()));
        assert_eq!(sent.body["model"], "test-model");
        assert_eq!(sent.body["temperature"], 0.5);
        assert_eq!(sent.body["max_tokens"], 50);
        if provider == "anthropic" {
            assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
        }

        // An older version renders that version's text.
        let (status, _) = app
            .put(
                &format!("/api/prompt-templates/{template}"),
                json!({"promptText": "Bye {{name}}"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, old) = setup
            .execute(&template, json!({"version": 1, "variableSet": "default"}))
            .await;
        assert_eq!(status, 200, "{old}");
        assert_eq!(old["renderedPrompt"], "Hello Ann, order 1");
        let (status, current) = setup
            .execute(&template, json!({"variables": {"name": "Bo"}}))
            .await;
        assert_eq!(status, 200, "{current}");
        assert_eq!(current["renderedPrompt"], "Bye Bo");
        assert_eq!(current["templateVersion"], 2);

        // The record reads back as it was answered, and the template lists its executions.
        assert_eq!(setup.execution(&execution["executionId"]).await, execution);
        let (status, page) = app
            .get(&format!(
                "/api/prompt-templates/{template}/executions?limit=2"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["pagination"]["total"], 3);
        assert_eq!(page["data"][0], current);
        assert_eq!(page["data"][1], old);
    }

    // Refusals change nothing: no execution is recorded and the provider is not called.
    let model = setup.model("ok", "openai").await;
    let template = setup.template("{{name}} {{order}} {{other}}", &model).await;
    let calls = setup.provider.requests().len();
    let events = app.event_count().await;
    for (body, status, details) in [
        (
            json!({"variables": {"name": "x"}}),
            400,
            "no value for order, other",
        ),
        (
            json!({"variableSet": "nope"}),
            400,
            "no variable set named \"nope\"",
        ),
        (
            json!({"version": 9}),
            404,
            "has 1 versions; there is no version 9",
        ),
        (
            json!({"modelId": uuid::Uuid::new_v4(), "variables": {"name": 1, "order": 2, "other": 3}}),
            400,
            "no model or visible system model",
        ),
        (
            json!({"version": 0}),
            400,
            "version: must be a positive integer",
        ),
        (
            json!({"parameters": {"temperature": 3}}),
            400,
            "parameters.temperature",
        ),
        (json!({"parameters": {"seed": 1}}), 400, "seed"),
        (json!({"colour": "red"}), 400, "colour"),
    ] {
        let (got, answer) = setup.execute(&template, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["details"]
                .as_str()
                .unwrap_or_default()
                .contains(details),
            "{body}: {answer}"
        );
    }
    let (status, _) = setup
        .execute(&uuid::Uuid::new_v4().to_string(), json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(setup.provider.requests().len(), calls);
    assert_eq!(app.event_count().await, events);
}

#[tokio::test]
async fn streaming_sends_the_text_as_it_arrives_then_the_recorded_execution() {
    let setup = Setup::start().await;
    for provider in ["openai", "anthropic"] {
        let model = setup.model("ok", provider).await;
        let template = setup
            .template("Tell me about {{name}} and the order {{order}}", &model)
            .await;
        let path = format!("/api/prompt-templates/{template}/execute");
        // `stream: true`, and `Accept: text/event-stream` without it.
        for request in [
            setup
                .app
                .admin(Method::POST, &path)
                .json(&json!({"variableSet": "default", "stream": true})),
            setup
                .app
                .admin(Method::POST, &path)
                .header("accept", "text/event-stream")
                .json(&json!({"variableSet": "default"})),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"));
            let events = events(response).await;
            let (last, deltas) = events.split_last().expect("events");
            assert_eq!(last.0, "done", "{events:?}");
            assert!(deltas.len() >= 8, "one delta per token: {events:?}");
            assert!(deltas.iter().all(|(name, _)| name == "delta"));
            let text: String = deltas
                .iter()
                .map(|(_, data)| data["text"].as_str().unwrap())
                .collect();
            let done = &last.1;
            assert_eq!(text, "Echo: Tell me about Ann and the order 1");
            assert_eq!(done["output"], text);
            assert_eq!(done["usage"]["outputTokens"], 9);
            assert_eq!(done["usage"]["inputTokens"], 8);
            assert!(done["timeToFirstTokenMs"].as_u64().is_some(), "{done}");
            assert_eq!(setup.execution(&done["executionId"]).await, *done);
        }
    }
}

#[tokio::test]
async fn provider_failures_are_answered_retried_and_recorded() {
    let setup = Setup::start().await;
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/v1/chat/completions")
    };
    // scenario, status, calls made, failure reason, words the details hold
    let cases = [
        (
            "bad-request",
            502,
            1,
            "provider_refused",
            "max_tokens: must be at most 4096",
        ),
        ("rate-limited", 429, 3, "rate_limited", "ate limit"),
        ("server-error", 502, 3, "provider_failed", ""),
        (
            "slow-3000",
            504,
            1,
            "timed_out",
            "did not answer within 2 s",
        ),
        (
            "malformed",
            502,
            1,
            "malformed_response",
            "not in its format",
        ),
        ("echo-credential", 502, 1, "provider_refused", "[redacted]"),
    ];
    for provider in ["openai", "anthropic"] {
        for (scenario, status, calls, reason, details) in cases {
            let model = setup.model(scenario, provider).await;
            let template = setup.template("Hi {{name}}", &model).await;
            let before = setup.provider.requests().len();
            let (got, answer) = setup
                .execute(&template, json!({"variableSet": "default"}))
                .await;
            assert_eq!(got, status, "{provider} {scenario}: {answer}");
            let details_text = answer["details"].as_str().unwrap_or_default();
            assert!(
                details_text.contains(details),
                "{provider} {scenario}: {answer}"
            );
            assert!(!answer.to_string().contains(&setup.token), "{answer}");
            assert_eq!(
                setup.provider.requests().len() - before,
                calls,
                "{provider} {scenario}: calls"
            );
            let recorded = setup.execution(&answer["executionId"]).await;
            assert_eq!(recorded["status"], "failed", "{recorded}");
            assert_eq!(recorded["error"]["reason"], reason, "{recorded}");
            assert!(!recorded.to_string().contains(&setup.token), "{recorded}");
        }
        // Refused once, or failing once: retried, and answered.
        for scenario in ["rate-limited-once", "flaky"] {
            let model = setup.model(scenario, provider).await;
            let template = setup.template("Retry {{name}}", &model).await;
            let (status, answer) = setup
                .execute(&template, json!({"variables": {"name": provider}}))
                .await;
            assert_eq!(status, 200, "{provider} {scenario}: {answer}");
            assert_eq!(answer["output"], format!("Echo: Retry {provider}"));
        }
    }
    // A 429 carries the provider's Retry-After on to the client.
    let model = setup.model("rate-limited", "openai").await;
    let template = setup.template("Hi", &model).await;
    let response = setup
        .app
        .admin(
            Method::POST,
            &format!("/api/prompt-templates/{template}/execute"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");

    let model = setup.model_at(&unreachable, "openai").await;
    let template = setup.template("Hi", &model).await;
    let (status, answer) = setup.execute(&template, json!({})).await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer["details"]
        .as_str()
        .unwrap()
        .contains("could not be reached"));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_call_and_it_is_recorded() {
    let setup = Setup::start().await;
    let model = setup.model("drip-200", "openai").await;
    let template = setup
        .template(
            "one two three four five six seven eight nine ten {{name}}",
            &model,
        )
        .await;
    let response = setup
        .app
        .admin(
            Method::POST,
            &format!("/api/prompt-templates/{template}/execute"),
        )
        .json(&json!({"variableSet": "default", "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("delta"));
    drop(body);
    let mut waited = Duration::ZERO;
    loop {
        let requests = setup.provider.requests();
        if requests.last().map(|r| r.outcome) == Some(Outcome::Cancelled) {
            break;
        }
        assert!(
            waited < Duration::from_secs(10),
            "the upstream call was not cancelled: {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let (status, page) = setup
        .app
        .get(&format!("/api/prompt-templates/{template}/executions"))
        .await;
    assert_eq!(status, 200);
    let recorded = &page["data"][0];
    assert_eq!(recorded["status"], "failed", "{page}");
    assert_eq!(recorded["error"]["reason"], "cancelled", "{page}");
}

#[tokio::test]
async fn an_organization_runs_at_most_its_cap_at_once() {
    let setup = Setup::start().await;
    let model = setup.model("slow-1500", "openai").await;
    let template = setup.template("Hi {{name}}", &model).await;
    let path = format!("/api/prompt-templates/{template}/execute");
    let running: Vec<_> = (0..EXECUTIONS_PER_ORGANIZATION)
        .map(|n| {
            let request = setup
                .app
                .admin(Method::POST, &path)
                .json(&json!({"variables": {"name": n.to_string()}}));
            tokio::spawn(send(request))
        })
        .collect();
    while setup
        .provider
        .requests()
        .iter()
        .filter(|r| r.outcome == Outcome::Pending)
        .count()
        < EXECUTIONS_PER_ORGANIZATION
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = setup
        .app
        .admin(Method::POST, &path)
        .json(&json!({"variables": {"name": "one too many"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    // Another organization is not held back.
    let other = setup.app.create_organization("Other").await;
    let other_env = setup.app.create_environment(&other, "P").await;
    let fast = setup.provider.url("ok", "openai");
    let (_, model) = setup
        .app
        .post(
            "/api/models",
            json!({"organizationId": other, "name": "M", "modelUrl": fast, "token": "sk-other"}),
        )
        .await;
    let (_, template) = setup
        .app
        .post(
            "/api/prompt-templates",
            json!({"organizationId": other, "environmentId": other_env, "modelId": model["id"],
                   "name": "T", "promptText": "Hi"}),
        )
        .await;
    let (status, answer) = setup
        .execute(template["id"].as_str().unwrap(), json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    for request in running {
        assert_eq!(request.await.unwrap().0, 200);
    }
    let (status, _) = setup
        .execute(&template_of(&path), json!({"variables": {"name": "again"}}))
        .await;
    assert_eq!(status, 200, "the cap is given back when executions end");
}

fn template_of(execute_path: &str) -> String {
    execute_path.split('/').nth(3).unwrap().to_owned()
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let setup = Setup::start().await;
    let port = setup.provider.addr().port();
    // 127.0.0.1 is allowed (the tests' OUTBOUND_ALLOW); other loopback, private and link-local
    // addresses are not, and are never called.
    for url in [
        format!("http://127.0.0.2:{port}/ok/v1/chat/completions"),
        format!("http://[::1]:{port}/ok/v1/chat/completions"),
        "http://10.255.255.1/v1/chat/completions".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("http://localhost.:{port}/ok/v1/chat/completions"),
    ] {
        let model = setup.model_at(&url, "openai").await;
        let template = setup.template("Hi", &model).await;
        let (status, answer) = setup.execute(&template, json!({})).await;
        if url.contains("localhost.") {
            // A name is checked on the addresses it resolves to: localhost is 127.0.0.1 (allowed)
            // or ::1 (refused); either way no other address is reached.
            assert!(matches!(status, 200 | 502), "{url}: {answer}");
            continue;
        }
        assert_eq!(status, 502, "{url}: {answer}");
        assert_eq!(
            answer["error"], "The model's address is not allowed",
            "{url}: {answer}"
        );
        let recorded = setup.execution(&answer["executionId"]).await;
        assert_eq!(recorded["error"]["reason"], "address_refused");
    }
    assert!(
        setup.provider.requests().len() <= 1,
        "refused addresses were called: {:?}",
        setup.provider.requests()
    );
}

#[tokio::test]
async fn every_role_may_run_templates_of_its_organization_and_no_other() {
    let setup = Setup::start().await;
    let model = setup.model("ok", "openai").await;
    let template = setup.template("Hi {{name}}", &model).await;
    let path = format!("/api/prompt-templates/{template}/execute");
    for role in ["admin", "user", "guest"] {
        let sub = format!("{role}-member");
        setup.app.add_member(&setup.org, &sub, role).await;
        let (status, answer) = send(
            setup
                .app
                .as_user(&sub, Method::POST, &path)
                .json(&json!({"variableSet": "default"})),
        )
        .await;
        assert_eq!(status, 200, "{role}: {answer}");
        let (status, read) = send(setup.app.as_user(
            &sub,
            Method::GET,
            &format!(
                "/api/executions/{}",
                answer["executionId"].as_str().unwrap()
            ),
        ))
        .await;
        assert_eq!(status, 200, "{role}: {read}");
    }
    // Another tenant's member, and a user of no organization: as if the template did not exist.
    let other = setup.app.create_organization("Other").await;
    setup.app.add_member(&other, "outsider", "admin").await;
    let (status, answer) = setup
        .execute(&template, json!({"variableSet": "default"}))
        .await;
    assert_eq!(status, 200);
    let execution = answer["executionId"].as_str().unwrap();
    for sub in ["outsider", "nobody"] {
        let (status, body) = send(
            setup
                .app
                .as_user(sub, Method::POST, &path)
                .json(&json!({"variableSet": "default"})),
        )
        .await;
        assert!(matches!(status, 403 | 404), "{sub}: {status} {body}");
        let (status, _) = send(setup.app.as_user(
            sub,
            Method::GET,
            &format!("/api/executions/{execution}"),
        ))
        .await;
        assert!(
            matches!(status, 403 | 404),
            "{sub} read another tenant's execution"
        );
        let (status, _) = send(setup.app.as_user(
            sub,
            Method::GET,
            &format!("/api/prompt-templates/{template}/executions"),
        ))
        .await;
        assert!(
            matches!(status, 403 | 404),
            "{sub} listed another tenant's executions"
        );
    }
    // A repeat with the same key gets the recorded answer; the model is not called again.
    let calls = setup.provider.requests().len();
    let send_keyed = || {
        setup
            .app
            .admin(Method::POST, &path)
            .header("idempotency-key", "run-1")
            .json(&json!({"variableSet": "default"}))
            .send()
    };
    let first = send_keyed().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let again = send_keyed().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(setup.provider.requests().len(), calls + 1);
}

#[tokio::test]
async fn executions_are_in_the_audit_trail_and_their_totals_add_up() {
    let setup = Setup::start().await;
    let ok = setup.model("ok", "openai").await;
    let failing = setup.model("bad-request", "anthropic").await;
    let good = setup.template("Hi {{name}}", &ok).await;
    let bad = setup.template("Hi {{name}}", &failing).await;
    let mut executions = Vec::new();
    for (template, runs) in [(&good, 3), (&bad, 2)] {
        for _ in 0..runs {
            let (_, answer) = setup
                .execute(template, json!({"variableSet": "default"}))
                .await;
            executions.push(setup.execution(&answer["executionId"]).await);
        }
    }
    // The totals read model equals the sum of the executions it covers.
    let totals: Vec<(String, i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT model_id::text, executions, failures, input_tokens, output_tokens, cost::text \
         FROM read_models.execution_totals WHERE organization_id = $1::uuid ORDER BY model_id",
    )
    .bind(&setup.org)
    .fetch_all(&setup.app.db.pool)
    .await
    .unwrap();
    assert_eq!(totals.len(), 2, "{totals:?}");
    for (model, count, failures, input, output, cost) in &totals {
        let mine: Vec<&Value> = executions
            .iter()
            .filter(|e| e["modelId"] == model.as_str())
            .collect();
        assert_eq!(*count as usize, mine.len());
        assert_eq!(
            *failures as usize,
            mine.iter().filter(|e| e["status"] == "failed").count()
        );
        let sum = |field: &str| -> i64 {
            mine.iter()
                .map(|e| e["usage"][field].as_i64().unwrap_or(0))
                .sum()
        };
        assert_eq!(*input, sum("inputTokens"));
        assert_eq!(*output, sum("outputTokens"));
        let total: f64 = mine
            .iter()
            .map(|e| e["cost"]["total"].as_f64().unwrap_or(0.0))
            .sum();
        assert!(
            (cost.parse::<f64>().unwrap() - total).abs() < 1e-9,
            "{cost} vs {total}"
        );
    }
    // The audit trail shows who ran what and how it ended.
    let id = executions[0]["executionId"].as_str().unwrap();
    let (status, trail) = setup
        .app
        .get(&format!(
            "/api/audit-events?resourceType=execution&resourceId={id}"
        ))
        .await;
    assert_eq!(status, 200, "{trail}");
    let types: Vec<&str> = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["execution.succeeded", "execution.requested"],
        "{trail}"
    );
    assert_eq!(
        trail["data"][0]["changes"]["status"]["to"], "succeeded",
        "{trail}"
    );
}

#[tokio::test]
async fn sentiment_is_analysed_recorded_and_not_a_new_version() {
    let setup = Setup::start().await;
    let app = &setup.app;
    let model = setup.model("ok", "openai").await;
    let template = setup.template("The book was good.", &model).await;
    let path = format!("/api/prompt-templates/{template}");
    let (_, before) = app.get(&path).await;
    assert_eq!(before["rawSentimentAnalysis"], Value::Null);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_analyses = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    // Without an execution: the text only.
    let (status, analysed) = app
        .post(&format!("{path}/analyze-sentiment"), json!({}))
        .await;
    assert_eq!(status, 200, "{analysed}");
    let raw = &analysed["rawSentimentAnalysis"];
    assert_eq!(raw["label"], "positive");
    assert_eq!(raw["score"], 0.4404);
    assert_eq!(raw["method"], "lexicon");
    assert_eq!(raw["templateVersion"], 1);
    assert_eq!(analysed["resultSentimentAnalysis"], Value::Null);
    assert_eq!(analysed["version"], 1, "an analysis is not a version");
    assert_eq!(analysed["organization"]["name"], "Acme", "{analysed}");
    assert_eq!(analysed["environment"]["name"], "Production", "{analysed}");

    // With the latest successful execution's output.
    let (_, execution) = setup.execute(&template, json!({})).await;
    let (status, analysed) = app
        .post(&format!("{path}/analyze-sentiment"), json!({}))
        .await;
    assert_eq!(status, 200, "{analysed}");
    let result = &analysed["resultSentimentAnalysis"];
    assert_eq!(result["executionId"], execution["executionId"]);
    assert_eq!(result["label"], "positive");
    assert_eq!(analysed["version"], 1);
    let (_, read) = app.get(&path).await;
    assert_eq!(
        read["rawSentimentAnalysis"],
        analysed["rawSentimentAnalysis"]
    );
    assert_eq!(
        read["resultSentimentAnalysis"],
        analysed["resultSentimentAnalysis"]
    );
    assert_eq!(read["version"], 1);
    let (_, versions) = app.get(&format!("{path}/versions")).await;
    assert_eq!(versions["pagination"]["total"], 1, "{versions}");

    // An edit after analyses is version 2, listed as such.
    let (status, edited) = app
        .put(&path, json!({"promptText": "A horrible, sad book."}))
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["version"], 2);
    let (_, version) = app.get(&format!("{path}/versions/2")).await;
    assert_eq!(version["promptText"], "A horrible, sad book.");
    let (status, analysed) = app
        .post(
            &format!("{path}/analyze-sentiment"),
            json!({"executionId": execution["executionId"]}),
        )
        .await;
    assert_eq!(status, 200, "{analysed}");
    assert_eq!(analysed["rawSentimentAnalysis"]["label"], "negative");
    assert_eq!(analysed["rawSentimentAnalysis"]["templateVersion"], 2);

    // Bad requests change nothing.
    for (body, details) in [
        (json!({"executionId": uuid::Uuid::new_v4()}), "no execution"),
        (json!({"method": "guess"}), "method"),
    ] {
        let (status, answer) = app.post(&format!("{path}/analyze-sentiment"), body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["details"].as_str().unwrap().contains(details),
            "{answer}"
        );
    }

    // The model method asks the model; an answer that is not a verdict is a 502.
    let (status, answer) = app
        .post(
            &format!("{path}/analyze-sentiment"),
            json!({"method": "model"}),
        )
        .await;
    assert_eq!(status, 502, "{answer}");
    let verdict_model = setup.model("verdict", "anthropic").await;
    let (status, _) = app.put(&path, json!({"modelId": verdict_model})).await;
    assert_eq!(status, 200);
    let (status, analysed) = app
        .post(
            &format!("{path}/analyze-sentiment"),
            json!({"method": "model"}),
        )
        .await;
    assert_eq!(status, 200, "{analysed}");
    assert_eq!(analysed["rawSentimentAnalysis"]["method"], "model");
    assert_eq!(analysed["rawSentimentAnalysis"]["label"], "negative");

    // The analyses are in the audit trail, and a read as of before them shows none.
    let (_, trail) = app
        .get(&format!(
            "/api/audit-events?resourceType=prompt_template&resourceId={template}"
        ))
        .await;
    let analysed_events = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "prompt_template.sentiment_analyzed")
        .count();
    assert_eq!(analysed_events, 4, "{trail}");
    let (status, past) = app
        .get(&format!(
            "{path}?asOf={}",
            before_analyses.replace('+', "%2B")
        ))
        .await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(past["rawSentimentAnalysis"], Value::Null);
}

/// The operator surface's notifications: failed executions raise one alert per organization, cause
/// and hour, counting its occurrences, with credentials scrubbed; operators acknowledge and resolve
/// it (who and when), a new failure makes a resolved alert unread again, and the badge counts
/// unread alerts by severity. System only.
#[tokio::test]
async fn failed_executions_raise_one_alert_per_cause_that_operators_acknowledge_and_resolve() {
    let s = Setup::start().await;
    let failing = s
        .template("Hi {{name}}", &s.model("server-error", "openai").await)
        .await;
    let refusing = s
        .template("Hi {{name}}", &s.model("echo-credential", "openai").await)
        .await;
    for _ in 0..2 {
        let (status, _) = s.execute(&failing, json!({"variableSet": "default"})).await;
        assert_eq!(status, 502);
    }
    let (status, _) = s
        .execute(&refusing, json!({"variableSet": "default"}))
        .await;
    assert_eq!(status, 502);
    let (status, _) = s.execute(&failing, json!({"variableSet": "default"})).await;
    assert_eq!(status, 502);

    let alerts = |query: &'static str| {
        let app = &s.app;
        async move {
            let (status, page) = app
                .get(&format!("/api/v1/admin/notifications?{query}"))
                .await;
            assert_eq!(status, 200, "{page}");
            page["data"].as_array().unwrap().clone()
        }
    };
    let listed = alerts("kind=message&severity=high").await;
    assert_eq!(listed.len(), 2, "one alert per cause: {listed:#?}");
    let failed = listed
        .iter()
        .find(|a| a["source"]["reason"] == "provider_failed")
        .unwrap()
        .clone();
    let refused = listed
        .iter()
        .find(|a| a["source"]["reason"] == "provider_refused")
        .unwrap();
    assert_eq!(failed["occurrences"], 3);
    assert_eq!(failed["organizationId"], s.org);
    assert_eq!(failed["state"], "unread");
    assert!(
        failed["summary"]
            .as_str()
            .unwrap()
            .starts_with("3 failures since"),
        "{failed}"
    );
    assert!(
        !refused.to_string().contains(&s.token),
        "the provider echoed the credential; the alert must not: {refused}"
    );
    let (_, badge) = s.app.get("/api/v1/admin/notifications/unread").await;
    assert_eq!(
        badge,
        json!({ "total": 2, "bySeverity": { "low": 0, "medium": 0, "high": 2, "critical": 0 } })
    );

    let id = failed["id"].as_str().unwrap();
    let (status, answer) = s
        .app
        .post(
            &format!("/api/v1/admin/notifications/{id}/acknowledge"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["acknowledgedAt"].is_string());
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/admin/notifications/{id}/resolve"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let resolved = alerts("state=resolved").await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["resolvedBy"], s.app.admin_id);
    assert_eq!(resolved[0]["acknowledgedBy"], s.app.admin_id);
    let (_, badge) = s.app.get("/api/v1/admin/notifications/unread").await;
    assert_eq!(badge["total"], 1);

    // It fires again: unread again, counted on.
    let (status, _) = s.execute(&failing, json!({"variableSet": "default"})).await;
    assert_eq!(status, 502);
    let again = alerts("state=unread").await;
    let again = again.iter().find(|a| a["id"] == failed["id"]).unwrap();
    assert_eq!(again["occurrences"], 4);

    let missing = uuid::Uuid::now_v7();
    let (status, _) = s
        .app
        .post(
            &format!("/api/v1/admin/notifications/{missing}/resolve"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.app.get("/api/v1/admin/notifications?state=closed").await;
    assert_eq!(status, 400);
    s.app.add_member(&s.org, "org-admin", "admin").await;
    for (method, path) in [
        (Method::GET, "/api/v1/admin/notifications".to_owned()),
        (Method::GET, "/api/v1/admin/notifications/unread".to_owned()),
        (
            Method::POST,
            format!("/api/v1/admin/notifications/{id}/resolve"),
        ),
    ] {
        let (status, _) = send(s.app.as_user("org-admin", method, &path).json(&json!({}))).await;
        assert_eq!(status, 403, "{path}");
    }
}
