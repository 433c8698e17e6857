//! Write-only values (variable values, model credentials) never leave the system: not in any HTTP
//! response, not in stored events outside their sealed field, not in read models, not in the services'
//! logs. What is stored opens only with the owner's data key, for the field it was written to, and not
//! at all once that key is destroyed with the organization; history still reads without it.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};
use tests::TestApp;

/// Everything every service logs while the tests of this file run.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// Secrets unlike anything else in a response, so that a match cannot be a coincidence.
fn secret(n: u32) -> String {
    format!("sk-live-{n}-{}", uuid::Uuid::new_v4().simple())
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} contains a secret: {text}"
        );
    }
}

#[tokio::test]
async fn written_secrets_never_leave_in_responses_events_read_models_or_logs() {
    let logs = captured_logs();
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let secrets: Vec<String> = (0..8).map(secret).collect();
    let mut responses: Vec<Value> = Vec::new();
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move { app.post(path, body).await }
    };
    let (_, variable) = post(
        "/api/variables",
        json!({"organizationId": org, "environmentId": env, "name": "KEY", "value": secrets[0]}),
    )
    .await;
    let (_, model) = post(
        "/api/models",
        json!({"organizationId": org, "name": "M", "modelUrl": "https://m.example",
        "token": secrets[1], "clientKey": secrets[2], "secretKey": secrets[3]}),
    )
    .await;
    let (_, system) = post(
        "/api/system-models",
        json!({"name": "S", "modelUrl": "https://m.example", "visible": true, "token": secrets[4]}),
    )
    .await;
    // A refused request carrying a secret does not echo it either.
    let (status, refused) = post(
        "/api/variables",
        json!({"organizationId": org, "environmentId": env, "name": "", "value": secrets[5]}),
    )
    .await;
    assert_eq!(status, 400);
    responses.extend([variable.clone(), model.clone(), system.clone(), refused]);
    assert_eq!(variable["hasValue"], true);
    assert_eq!(
        (
            model["hasToken"].clone(),
            model["hasClientKey"].clone(),
            model["hasSecretKey"].clone()
        ),
        (json!(true), json!(true), json!(true))
    );

    let model_path = format!("/api/models/{}", model["id"].as_str().unwrap());
    let variable_path = format!("/api/variables/{}", variable["id"].as_str().unwrap());
    let (status, updated) = app
        .put(&model_path, json!({"token": secrets[6], "clientKey": null}))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["hasToken"].clone(), updated["hasClientKey"].clone()),
        (json!(true), json!(false))
    );
    let (_, rotated) = app.put(&variable_path, json!({"value": secrets[7]})).await;
    responses.extend([updated, rotated]);
    for path in [
        model_path.clone(),
        variable_path.clone(),
        format!("/api/models?organizationId={org}"),
        format!("/api/variables?organizationId={org}"),
        "/api/system-models".into(),
        format!("/api/system-models/{}", system["id"].as_str().unwrap()),
        "/api/system-models/visible".into(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        responses.push(body);
    }
    let (_, visible) = app.get("/api/system-models/visible").await;
    assert!(visible["data"][0].get("hasToken").is_none(), "{visible}");
    for response in &responses {
        assert_clean("a response", &response.to_string(), &secrets);
    }

    // Stored events hold sealed values only, under `secrets`.
    let stored: Vec<(String, Value, Value)> =
        sqlx::query_as("SELECT event_type, data, metadata FROM events")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    for (event_type, data, metadata) in &stored {
        assert_clean(event_type, &data.to_string(), &secrets);
        assert_clean(event_type, &metadata.to_string(), &secrets);
        if let Some(sealed) = data.get("secrets") {
            for value in sealed.as_object().unwrap().values() {
                assert!(
                    value.is_null() || value.as_str().unwrap().starts_with("v1."),
                    "{data}"
                );
            }
        }
    }
    let rows: Vec<(Value, Value)> =
        sqlx::query_as("SELECT fields, secrets FROM read_models.catalog")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    for (fields, names) in &rows {
        assert_clean("a read model", &fields.to_string(), &secrets);
        assert!(
            !fields.to_string().contains("v1."),
            "ciphertext in a read model: {fields}"
        );
        assert!(names.as_array().unwrap().iter().all(|n| [
            "value",
            "token",
            "clientKey",
            "secretKey"
        ]
        .contains(&n.as_str().unwrap())));
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("POST"),
        "the services' logs were not captured"
    );
    assert_clean("the logs", &logged, &secrets);
}

/// A model's credential used in executions, echoed back by its provider and streamed: it reaches the
/// provider, and nothing else (answers, stream events, events, read models, the audit trail, logs).
#[tokio::test]
async fn a_model_credential_reaches_its_provider_and_nothing_else() {
    let logs = captured_logs();
    let app = TestApp::spawn().await;
    let provider = tests::fake_provider::FakeProvider::spawn().await.unwrap();
    let org = app.create_organization("Acme Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let token = secret(0);
    let mut answers = Vec::new();
    for scenario in ["ok", "echo-credential"] {
        for kind in ["openai", "anthropic"] {
            let (status, model) = app
                .post(
                    "/api/models",
                    json!({"organizationId": org, "name": format!("{scenario} {kind}"), "provider": kind,
                           "modelUrl": provider.url(scenario, kind), "token": token}),
                )
                .await;
            assert_eq!(status, 201, "{model}");
            let (status, template) = app
                .post(
                    "/api/prompt-templates",
                    json!({"organizationId": org, "environmentId": env, "modelId": model["id"],
                           "name": format!("T {scenario} {kind}"), "promptText": "Say hi"}),
                )
                .await;
            assert_eq!(status, 201, "{template}");
            let path = format!(
                "/api/prompt-templates/{}/execute",
                template["id"].as_str().unwrap()
            );
            let (_, answer) = app.post(&path, json!({})).await;
            answers.push(answer.to_string());
            let streamed = app
                .admin(reqwest::Method::POST, &path)
                .json(&json!({"stream": true}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            answers.push(streamed);
            let (_, executions) = app
                .get(&format!(
                    "/api/prompt-templates/{}/executions",
                    template["id"].as_str().unwrap()
                ))
                .await;
            answers.push(executions.to_string());
        }
    }
    assert!(
        provider
            .requests()
            .iter()
            .all(|r| r.credential.as_deref() == Some(token.as_str())),
        "the provider did not get the credential"
    );
    assert!(
        answers.iter().any(|a| a.contains("[redacted]")),
        "{answers:?}"
    );
    let secrets = [token];
    for answer in &answers {
        assert_clean("an answer", answer, &secrets);
    }
    let everything: Vec<String> = sqlx::query_scalar(
        "SELECT data::text || metadata::text FROM events \
         UNION ALL SELECT data::text FROM read_models.executions \
         UNION ALL SELECT changes::text FROM read_models.audit_index \
         UNION ALL SELECT value::text FROM read_models.audit_values \
         UNION ALL SELECT state::text FROM read_models.audit_states",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(everything.iter().any(|row| row.contains("execution")));
    for row in &everything {
        assert_clean("the database", row, &secrets);
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("execute"),
        "the services' logs were not captured"
    );
    assert_clean("the logs", &logged, &secrets);
}

#[tokio::test]
async fn sealed_values_open_only_for_their_owner_and_field() {
    captured_logs();
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme Corp").await;
    let token = secret(1);
    let (status, model) = app
        .post("/api/models", json!({"organizationId": org, "name": "M", "modelUrl": "https://m.example", "token": token}))
        .await;
    assert_eq!(status, 201);
    let id = model["id"].as_str().unwrap();
    let sealed: String =
        sqlx::query_scalar("SELECT data->'secrets'->>'token' FROM events WHERE stream_id = $1")
            .bind(format!("model-{id}"))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let org: uuid::Uuid = org.parse().unwrap();
    let pool = &app.db.pool;
    let context = format!("model-{id}/token");
    assert_eq!(
        app.secrets
            .open(pool, org, &context, &sealed)
            .await
            .unwrap(),
        token
    );
    assert!(app
        .secrets
        .open(pool, org, &format!("model-{id}/clientKey"), &sealed)
        .await
        .is_err());
    assert!(app
        .secrets
        .open(pool, uuid::Uuid::nil(), &context, &sealed)
        .await
        .is_err());
    let other_key =
        commands::secrets::Secrets::from_base64(&commands::secrets::Secrets::generate_key())
            .unwrap();
    assert!(other_key.open(pool, org, &context, &sealed).await.is_err());
}

#[tokio::test]
async fn deleting_an_organization_destroys_its_data_key_and_its_history_still_reads() {
    captured_logs();
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let (status, variable) = app
        .post(
            "/api/variables",
            json!({"organizationId": org, "environmentId": env, "name": "KEY", "value": secret(1)}),
        )
        .await;
    assert_eq!(status, 201, "{variable}");
    let (status, model) = app
        .post("/api/models", json!({"organizationId": org, "name": "M", "modelUrl": "https://m.example", "token": secret(2)}))
        .await;
    assert_eq!(status, 201, "{model}");
    let variable = format!("/api/variables/{}", variable["id"].as_str().unwrap());
    let model = format!("/api/models/{}", model["id"].as_str().unwrap());
    let before_deletion = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for path in [
        variable.clone(),
        model.clone(),
        format!("/api/environments/{env}"),
        format!("/api/organizations/{org}"),
    ] {
        let (status, body) = app.delete(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let owner: uuid::Uuid = org.parse().unwrap();
    let pool = &app.db.pool;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE owner = $1")
        .bind(owner)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "the organization's data key outlived it");
    let sealed: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT e.stream_id, s.key, s.value FROM events e, jsonb_each_text(e.data->'secrets') s \
         WHERE e.metadata->>'organizationId' = $1",
    )
    .bind(&org)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(sealed.len(), 2, "{sealed:?}");
    for (stream, field, value) in &sealed {
        assert!(matches!(
            app.secrets
                .open(pool, owner, &format!("{stream}/{field}"), value)
                .await,
            Err(commands::secrets::SecretsError::Destroyed(_))
        ));
    }

    // History needs none of the values: it shows that they were set, never what they were.
    for (path, flag) in [(&variable, "hasValue"), (&model, "hasToken")] {
        let (status, then) = app.get(&format!("{path}?asOf={before_deletion}")).await;
        assert_eq!((status, then[flag].clone()), (200, json!(true)), "{then}");
    }
    let (status, trail) = app
        .get(&format!("/api/audit-events?organizationId={org}&limit=100"))
        .await;
    assert_eq!(status, 200, "{trail}");
    let changes_of = |event_type: &str| {
        trail["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["type"] == event_type)
            .map(|row| row["changes"].clone())
            .unwrap_or_else(|| panic!("no {event_type} row in {trail}"))
    };
    assert_eq!(changes_of("variable.created")["value"]["to"], "[redacted]");
    assert_eq!(changes_of("model.created")["token"]["to"], "[redacted]");
    let progress = projector::replay::replay(
        pool,
        projector::scratch::Until::End,
        "after_shredding",
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(progress.applied as i64, app.event_count().await);
}
