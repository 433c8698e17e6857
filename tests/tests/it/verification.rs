//! What the system promises auditors, checked against a real PostgreSQL: the read models are a
//! function of the log (`projector verify` finds any row that is not, and holds back no live
//! projection while it compares), the log is what was written (`projector verify --log` finds the
//! first event altered by hand), the read models of any past point can be rebuilt beside the live
//! ones (`projector replay`), rebuilds never take data away from readers, and events written by an
//! older schema version are still read, folded, audited and published in today's shape.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::Utc;
use contracts::published::Message;
use domain::LogPosition;
use event_log::read_log;
use projector::projections;
use projector::rebuild::rebuild;
use projector::replay::replay;
use projector::scratch::Until;
use projector::verify::{verify, verify_log, LogProblem, VerifyProgress};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tests::TestApp;

/// Organizations, environments, members and a few catalog resources, some changed and deleted.
async fn some_history(app: &TestApp) -> (String, String) {
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    app.add_member(&org, "alice", "admin").await;
    let (status, model) = app
        .post(
            "/api/models",
            json!({ "organizationId": org, "name": "GPT", "modelUrl": "https://m.test/v1", "token": "sk-verify-token" }),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let model_id = model["id"].as_str().unwrap().to_owned();
    for n in 0..3 {
        let (status, template) = app
            .post(
                "/api/prompt-templates",
                json!({ "organizationId": org, "environmentId": env, "modelId": model_id,
                        "name": format!("Template {n}"), "promptText": "Hello" }),
            )
            .await;
        assert_eq!(status, 201, "{template}");
        let path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
        assert_eq!(app.put(&path, json!({ "promptText": "Hi" })).await.0, 200);
    }
    let doomed = app.create_environment(&org, "Doomed").await;
    assert_eq!(
        app.delete(&format!("/api/environments/{doomed}")).await.0,
        200
    );
    assert_eq!(
        app.put(
            &format!("/api/organizations/{org}"),
            json!({ "name": "Acme Holdings" })
        )
        .await
        .0,
        200
    );
    // A read with the default consistency returns once every projection has caught up.
    assert_eq!(app.get(&format!("/api/models/{model_id}")).await.0, 200);
    assert_eq!(app.get("/api/audit-events").await.0, 200);
    (org, model_id)
}

#[tokio::test]
async fn verify_finds_the_rebuilt_read_models_equal_and_then_the_exact_row_altered_by_hand() {
    let app = TestApp::spawn().await;
    let (org, model_id) = some_history(&app).await;
    for projection in projections() {
        rebuild(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
    }

    // Writes go on while every projection is verified: each comparison is made at one checkpoint.
    let writing = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = create_environments_while(&app, &org, writing.clone(), written.clone());
    for projection in projections() {
        let report = verify(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
        assert!(report.matches(), "{report:#?}");
        assert!(report.tables.iter().all(|t| t.live_rows == t.rebuilt_rows));
    }
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        written.load(Ordering::SeqCst) > 0,
        "the writer wrote meanwhile"
    );

    sqlx::query(
        "UPDATE read_models.catalog SET fields = jsonb_set(fields, '{name}', '\"Tampered\"') WHERE id = $1",
    )
    .bind(model_id.parse::<uuid::Uuid>().unwrap())
    .execute(&app.db.pool)
    .await
    .unwrap();
    let catalog = projector::catalog::Catalog;
    let report = verify(&app.db.pool, &catalog, |_| {}).await.unwrap();
    assert!(!report.matches());
    for table in &report.tables {
        if table.table == "catalog" {
            assert!(!table.matches());
            assert_eq!(table.only_live.len(), 1, "{table:#?}");
            assert_eq!(table.only_rebuilt.len(), 1, "{table:#?}");
            assert!(
                table.only_live[0].contains(&model_id) && table.only_live[0].contains("Tampered")
            );
            assert!(
                table.only_rebuilt[0].contains(&model_id) && table.only_rebuilt[0].contains("GPT")
            );
        } else {
            assert!(
                table.matches(),
                "{} was not touched: {table:#?}",
                table.table
            );
        }
    }
    let tenants = projector::tenants::Tenants;
    assert!(verify(&app.db.pool, &tenants, |_| {})
        .await
        .unwrap()
        .matches());
    let leftover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'verify_%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(leftover, 0, "verify leaves no scratch schema behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_back_no_projection_while_it_compares_a_read_model_under_writes_and_reads() {
    let app = TestApp::spawn_with_pool_size(30).await;
    let org = app.create_organization("Acme").await;
    seed_environments(&app, &org, 3_000).await;
    let (status, page) = app
        .get(&format!("/api/environments?organizationId={org}&limit=1"))
        .await;
    assert_eq!((status, &page["pagination"]["total"]), (200, &json!(3_000)));

    let writing = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = create_environments_while(&app, &org, writing.clone(), written.clone());

    // Verify runs on a thread of its own, so that its progress callback can hold it inside the
    // comparison (its live snapshot open) for as long as the test needs.
    let (comparing, compared_started) = tokio::sync::oneshot::channel();
    let (go_on, paused) = std::sync::mpsc::channel::<()>();
    let (pool, runtime) = (app.db.pool.clone(), tokio::runtime::Handle::current());
    let verifying = tokio::task::spawn_blocking(move || {
        let mut comparing = Some(comparing);
        runtime.block_on(verify(&pool, &projector::tenants::Tenants, |p| {
            if let VerifyProgress::Comparing { table, .. } = p {
                if let Some(started) = comparing.take() {
                    let _ = started.send(table);
                    // Either a go-ahead or the test gone: both end the pause.
                    let _ = paused.recv();
                }
            }
        }))
    });
    let table = compared_started
        .await
        .expect("verify reaches the comparison");

    // Paused inside the comparison: a write, then a read that waits for the tenants projection to
    // reach it.
    let response = app
        .admin(Method::POST, "/api/environments")
        .json(&json!({ "organizationId": org, "name": "During the comparison" }))
        .send()
        .await
        .unwrap();
    let (status, written_at, body) = with_token(response).await;
    assert_eq!(status, 201, "{body}");
    let read = app
        .admin(
            Method::GET,
            &format!("/api/environments/{}", body["id"].as_str().unwrap()),
        )
        .header("x-consistency-token", &written_at)
        .send()
        .await
        .unwrap();
    let (read_status, read_body) = (read.status().as_u16(), read.text().await.unwrap());
    let _ = go_on.send(());
    assert_eq!(
        read_status, 200,
        "a read of a write made while verify compared {table}: {read_body}"
    );

    let report = verifying.await.unwrap().unwrap();
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        written.load(Ordering::SeqCst) > 0,
        "the writer wrote and read back meanwhile"
    );
    assert!(report.matches(), "{report:#?}");
    let environments = report
        .tables
        .iter()
        .find(|t| t.table == "environments")
        .unwrap();
    assert!(environments.live_rows >= 3_000, "{environments:#?}");
    assert_eq!(environments.live_rows, environments.rebuilt_rows);
}

/// The first problem `projector verify --log` finds, if any.
async fn first_log_problem(app: &TestApp) -> Option<LogProblem> {
    verify_log(&app.db.pool, |_, _| {})
        .await
        .expect("verifying the log")
        .first_problem
}

/// Creates environments in `org` one after another while `running`, reading each back with its write's
/// consistency token (a read that waits for the tenants projection to reach it, and answers `503`
/// after 5 s if it does not), and counts each in `created` once both have answered.
fn create_environments_while(
    app: &TestApp,
    org: &str,
    running: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let (http, command_url, query_url, token, org) = (
        app.http.clone(),
        app.command_url.clone(),
        app.query_url.clone(),
        app.admin_token.clone(),
        org.to_owned(),
    );
    tokio::spawn(async move {
        let mut n = 0;
        while running.load(Ordering::SeqCst) {
            let response = http
                .post(format!("{command_url}/api/environments"))
                .bearer_auth(&token)
                .json(&json!({ "organizationId": org, "name": format!("Busy {n}") }))
                .send()
                .await
                .unwrap();
            let (status, written, body) = with_token(response).await;
            assert_eq!(status, 201, "write {n}: {body}");
            let read = http
                .get(format!(
                    "{query_url}/api/environments/{}",
                    body["id"].as_str().unwrap()
                ))
                .bearer_auth(&token)
                .header("x-consistency-token", written)
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 200, "read of write {n} with its token");
            created.fetch_add(1, Ordering::SeqCst);
            n += 1;
        }
    })
}

/// A write's status, consistency token and body.
async fn with_token(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let token = response
        .headers()
        .get("x-consistency-token")
        .map(|t| t.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, token, response.json().await.unwrap())
}

/// Appends `count` environments of `org` straight into the log, in one statement: what thousands of
/// creates through the API would write, in a fraction of the time.
async fn seed_environments(app: &TestApp, org: &str, count: i64) {
    let org: uuid::Uuid = org.parse().unwrap();
    let metadata = serde_json::to_value(tests::metadata(&app.admin_id, Some(org))).unwrap();
    sqlx::query(
        "WITH seeded AS ( \
             INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
             SELECT 'environment-' || id, 1, gen_random_uuid(), 'environment.created', 1, \
                    jsonb_build_object('id', id, 'organizationId', $1::uuid, 'name', 'Seed ' || n, 'description', NULL), \
                    $3, now() \
             FROM (SELECT n, gen_random_uuid() AS id FROM generate_series(1, $2) n) e \
             RETURNING stream_id) \
         INSERT INTO streams (stream_id, version) SELECT stream_id, 1 FROM seeded",
    )
    .bind(org)
    .bind(count)
    .bind(metadata)
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn superuser(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect_with(&app.db.connect_options())
        .await
        .unwrap();
    // Triggers off for this session: what someone with direct database access can do.
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn verify_log_finds_the_exact_event_whose_content_or_chain_was_altered_by_hand() {
    let app = TestApp::spawn().await;
    let (org, _) = some_history(&app).await;
    let clean = verify_log(&app.db.pool, |_, _| {}).await.unwrap();
    assert_eq!(clean.first_problem, None);
    assert_eq!(clean.events, app.event_count().await);

    // Through SQL, events cannot be changed at all.
    let refused = sqlx::query("UPDATE events SET data = '{}' WHERE stream_id = $1")
        .bind(format!("organization-{org}"))
        .execute(&app.db.pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("immutable"), "{refused}");
    assert!(sqlx::query("DELETE FROM events")
        .execute(&app.db.pool)
        .await
        .is_err());

    // The organization's creation (the first of its two events) is altered behind the triggers' back.
    let stream = format!("organization-{org}");
    let (created_at, created_id): (i64, uuid::Uuid) = sqlx::query_as(
        "SELECT global_position, event_id FROM events WHERE stream_id = $1 AND stream_version = 1",
    )
    .bind(&stream)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let mut tamper = superuser(&app).await;
    sqlx::query("UPDATE events SET data = jsonb_set(data, '{name}', '\"Evil Corp\"') WHERE global_position = $1")
        .bind(created_at)
        .execute(&mut tamper)
        .await
        .unwrap();
    let report = verify_log(&app.db.pool, |_, _| {}).await.unwrap();
    let problem = report.first_problem.expect("the altered event is found");
    assert_eq!(problem.global_position, created_at);
    assert_eq!(problem.event_id, created_id);
    assert_eq!(
        (problem.stream_id.as_str(), problem.stream_version),
        (stream.as_str(), 1)
    );
    assert!(problem.problem.contains("content"), "{}", problem.problem);

    // Rewriting its hash to match moves the mismatch to the next event: its chain no longer holds.
    sqlx::query(
        "UPDATE events SET hash = event_hash(NULL, global_position, stream_id, stream_version, event_id, \
                event_type, schema_version, data, metadata, recorded_at) WHERE global_position = $1",
    )
    .bind(created_at)
    .execute(&mut tamper)
    .await
    .unwrap();
    let problem = first_log_problem(&app).await.unwrap();
    assert_eq!(
        (problem.stream_id.as_str(), problem.stream_version),
        (stream.as_str(), 2)
    );

    // A fresh database: an event taken off the end of one template's stream, then one out of the
    // middle of an earlier template's stream.
    let app = TestApp::spawn().await;
    some_history(&app).await;
    let templates: Vec<String> = sqlx::query_scalar(
        "SELECT stream_id FROM streams WHERE stream_id LIKE 'prompt_template-%' ORDER BY stream_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut tamper = superuser(&app).await;
    sqlx::query("DELETE FROM events WHERE stream_id = $1 AND stream_version = 2")
        .bind(&templates[1])
        .execute(&mut tamper)
        .await
        .unwrap();
    let problem = first_log_problem(&app).await.unwrap();
    assert_eq!(
        (problem.stream_id.as_str(), problem.stream_version),
        (templates[1].as_str(), 1)
    );
    assert!(
        problem
            .problem
            .contains("ends at version 1 but the streams table says 2"),
        "{}",
        problem.problem
    );
    sqlx::query("DELETE FROM events WHERE stream_id = $1 AND stream_version = 1")
        .bind(&templates[0])
        .execute(&mut tamper)
        .await
        .unwrap();
    let problem = first_log_problem(&app).await.unwrap();
    assert_eq!(
        (problem.stream_id.as_str(), problem.stream_version),
        (templates[0].as_str(), 2)
    );
    assert!(
        problem.problem.contains("version 1 is missing"),
        "{}",
        problem.problem
    );
}

#[tokio::test]
async fn the_hash_chain_holds_under_concurrent_writers_of_one_stream_and_multi_event_appends() {
    let app = TestApp::spawn_with_pool_size(40).await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    let (status, template) = app
        .post(
            "/api/prompt-templates",
            json!({ "organizationId": org, "environmentId": env, "name": "Busy", "promptText": "v0" }),
        )
        .await;
    assert_eq!(status, 201);
    let path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
    let writes = (1..=32).map(|n| {
        let path = path.clone();
        let app = &app;
        async move {
            app.put(&path, json!({ "promptText": format!("v{n}") }))
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(writes).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Several events in one append: each chained to the one inserted just before it.
    let metadata = tests::metadata("tester", None);
    let batch = || -> Vec<domain::NewEvent> {
        (0..5)
            .map(|n| domain::NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema_version: 1,
                data: json!({ "n": n }),
                metadata: metadata.clone(),
                recorded_at: Utc::now(),
            })
            .collect()
    };
    for _ in 0..2 {
        commands::testing::append(&app.db.pool, "test-0", batch())
            .await
            .unwrap();
    }

    let report = verify_log(&app.db.pool, |_, _| {}).await.unwrap();
    assert_eq!(report.first_problem, None);
    let chained: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN events p ON p.stream_id = e.stream_id AND p.stream_version = e.stream_version - 1 \
         WHERE e.stream_id = ANY($1) AND e.hash = event_hash(p.hash, e.global_position, e.stream_id, e.stream_version, \
               e.event_id, e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at)",
    )
    .bind(vec![format!("prompt_template-{}", template["id"].as_str().unwrap()), "test-0".to_owned()])
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        chained,
        32 + 9,
        "every event after the first of its stream is chained to its predecessor"
    );
}

#[tokio::test]
async fn replay_builds_every_read_model_as_of_a_past_point_into_its_own_schema_without_secrets() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    let secrets = ["sk-replay-variable-value", "sk-replay-model-token"];
    let (status, variable) = app
        .post(
            "/api/variables",
            json!({ "organizationId": org, "environmentId": env, "name": "KEY", "value": secrets[0] }),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .post(
            "/api/models",
            json!({ "organizationId": org, "name": "GPT", "modelUrl": "https://m.test/v1", "token": secrets[1] }),
        )
        .await;
    assert_eq!(status, 201);
    let then = Utc::now();
    let then_position: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let variable_id = variable["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/variables/{variable_id}")).await.0,
        200
    );
    assert_eq!(
        app.put(
            &format!("/api/organizations/{org}"),
            json!({ "name": "Acme Holdings" })
        )
        .await
        .0,
        200
    );
    app.create_environment(&org, "Staging").await;
    assert_eq!(
        app.get(&format!("/api/organizations/{org}")).await.1["name"],
        "Acme Holdings"
    );

    let by_time = replay(&app.db.pool, Until::Time(then), "audit_then", |_| {})
        .await
        .unwrap();
    assert!(by_time.applied < by_time.read, "later events were left out");
    replay(
        &app.db.pool,
        Until::GlobalPosition(then_position),
        "audit_at_position",
        |_| {},
    )
    .await
    .unwrap();

    let pool = &app.db.pool;
    let scalar = |sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(
        scalar("SELECT name FROM audit_then.organizations").await,
        "Acme"
    );
    assert_eq!(
        scalar("SELECT string_agg(name, ',' ORDER BY name) FROM audit_then.environments").await,
        "Production"
    );
    assert_eq!(
        scalar("SELECT string_agg(name, ',' ORDER BY name) FROM audit_then.catalog WHERE organization_id IS NOT NULL").await,
        "GPT,KEY",
        "the variable deleted since is still there"
    );
    assert_eq!(
        scalar("SELECT name FROM read_models.organizations").await,
        "Acme Holdings",
        "live tables untouched"
    );
    assert!(scalar("SELECT until FROM audit_then.replay")
        .await
        .starts_with(&then.format("%Y-%m-%dT%H:%M").to_string()));

    // The two ways to name the same point give the same read models.
    for table in projections().iter().flat_map(|p| p.tables().iter()) {
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ((SELECT r::text FROM audit_then.{table} r EXCEPT ALL SELECT r::text FROM audit_at_position.{table} r) \
             UNION ALL (SELECT r::text FROM audit_at_position.{table} r EXCEPT ALL SELECT r::text FROM audit_then.{table} r)) d"
        ))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(differing, 0, "{table} differs between the replays");
    }

    // Nothing written as a secret is anywhere in a replay.
    for table in projections()
        .iter()
        .flat_map(|p| p.tables().iter())
        .chain(["replay"].iter())
    {
        let text: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(r::text, ' ') FROM audit_then.{table} r"
        ))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        let text = text.unwrap_or_default();
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} is in audit_then.{table}");
        }
        assert!(!text.contains("v1."), "ciphertext is in audit_then.{table}");
    }

    let again = replay(&app.db.pool, Until::End, "audit_then", |_| {})
        .await
        .unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");
    let live = replay(&app.db.pool, Until::End, "read_models", |_| {})
        .await
        .unwrap_err();
    assert!(live.to_string().contains("used by the system"), "{live}");
}

#[tokio::test]
async fn reads_keep_answering_with_complete_data_while_every_projection_is_rebuilt_under_writes() {
    let app = TestApp::spawn_with_pool_size(30).await;
    let org = app.create_organization("Acme").await;
    for n in 0..200 {
        app.create_environment(&org, &format!("Seed {n}")).await;
    }
    let created = Arc::new(AtomicUsize::new(200));
    let running = Arc::new(AtomicBool::new(true));
    let writer = create_environments_while(&app, &org, running.clone(), created.clone());
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let (http, url, token, org, created, running) = (
                app.http.clone(),
                app.query_url.clone(),
                app.admin_token.clone(),
                org.clone(),
                created.clone(),
                running.clone(),
            );
            tokio::spawn(async move {
                let mut reads = 0;
                while running.load(Ordering::SeqCst) {
                    let completed_before = created.load(Ordering::SeqCst);
                    let path = match reader {
                        0 => format!("{url}/api/environments?organizationId={org}&limit=1"),
                        1 => format!("{url}/api/audit-events?resourceType=environment&limit=1"),
                        _ => format!("{url}/api/organizations/{org}"),
                    };
                    let response = http.get(path).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(response.status(), 200, "read {reads} of reader {reader} during the rebuilds");
                    let body: Value = response.json().await.unwrap();
                    if reader < 2 {
                        let total = body["pagination"]["total"].as_u64().unwrap() as usize;
                        assert!(
                            total >= completed_before,
                            "reader {reader} saw {total} environments after {completed_before} were created"
                        );
                    } else {
                        assert_eq!(body["name"], "Acme");
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();

    for _ in 0..2 {
        for projection in projections() {
            rebuild(&app.db.pool, projection.as_ref(), |_| {})
                .await
                .unwrap();
        }
    }
    running.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    let total = created.load(Ordering::SeqCst);
    let (_, page) = app
        .get(&format!("/api/environments?organizationId={org}&limit=1"))
        .await;
    assert_eq!(page["pagination"]["total"], json!(total));
    for projection in projections() {
        assert!(verify(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap()
            .matches());
    }
}

#[tokio::test]
async fn a_role_change_written_by_schema_version_1_is_read_folded_audited_and_published_as_version_2(
) {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let bob = app.add_member(&org, "bob", "user").await;
    app.append_role_change_v1(&org, &bob, "guest").await;
    let after_v1 = Utc::now();

    // Read: the projection applied it.
    let member_path = format!("/api/organizations/{org}/members/{bob}");
    let (status, member) = app.get(&member_path).await;
    assert_eq!(status, 200);
    assert_eq!(member["role"], "guest");
    // Authorised: the access lookups, which every request is authorised against, took it too.
    let role: String = sqlx::query_scalar(
        "SELECT role FROM access_memberships WHERE user_id = $1::uuid AND organization_id = $2::uuid",
    )
    .bind(&bob)
    .bind(&org)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(role, "guest");
    // Folded: the aggregate decides on top of it, and writes version 2.
    let (status, body) = app.put(&member_path, json!({ "role": "admin" })).await;
    assert_eq!(status, 200, "{body}");
    let (stored_version, stored): (i32, Value) = sqlx::query_as(
        "SELECT schema_version, data FROM events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(format!("members-{org}"))
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(stored_version, 2);
    assert_eq!(stored["previousRole"], "guest");
    let (status, then) = app
        .get(&format!(
            "{member_path}?asOf={}",
            after_v1.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(then["role"], "guest");

    // Audited: both changes, from the fold.
    let (_, trail) = app
        .get(&format!(
            "/api/audit-events?resourceType=member&resourceId={bob}"
        ))
        .await;
    let changes: Vec<Value> = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["changes"].clone())
        .collect();
    assert_eq!(
        changes,
        [
            json!({ "role": { "from": "guest", "to": "admin" } }),
            json!({ "role": { "from": "user", "to": "guest" } }),
            json!({ "role": { "from": null, "to": "user" } }),
        ]
    );

    // Published: the message the publisher makes of each, against the checked-in schemas.
    let schema = |name: &str| {
        let path = format!(
            "{}/../schemas/events/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    };
    let v2 = schema("member.role_changed.v2");
    let logged = read_log(&app.db.pool, LogPosition::START, 10_000)
        .await
        .unwrap();
    let role_changes: Vec<Message> = logged
        .iter()
        .filter(|e| e.event_type == "member.role_changed")
        .map(|e| Message::of(e, "admin-platform"))
        .collect();
    assert_eq!(role_changes.len(), 2);
    for message in &role_changes {
        let ce_type = message
            .headers
            .iter()
            .find(|(h, _)| *h == "ce_type")
            .unwrap();
        assert_eq!(ce_type.1, "member.role_changed.v2");
        let value: Value = serde_json::from_slice(&message.value).unwrap();
        assert!(v2.is_valid(&value), "{value}");
    }
    let previous: Vec<Value> = role_changes
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.value).unwrap()["previousRole"].clone())
        .collect();
    assert_eq!(previous, [Value::Null, json!("guest")]);
}
