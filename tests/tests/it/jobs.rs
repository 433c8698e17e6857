//! Operator jobs over HTTP and through the projector's runner: requested, run with progress, ended
//! with a schedule alert; cancelled while pending and while running; failed when their runner dies;
//! one at a time per kind; the command line's runs recorded as jobs; usage exports whose files hold
//! exactly the executions usage reports sum, as RFC 4180 CSV with formulas neutralised and as NDJSON;
//! System only, and nonsense refused.

use std::time::Duration;

use domain::job::{ExportFilters, ExportFormat, JobKind, JobSpec};
use projector::job_runner::{self, claim_for_cli, claim_next, Ended, Recorder, Reporter};
use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

use crate::executions::Setup;

/// Polls job `path` until it has ended; the job.
async fn ended(app: &TestApp, path: &str) -> Value {
    let mut job = Value::Null;
    for _ in 0..300 {
        let status;
        (status, job) = app.get(path).await;
        assert_eq!(status, 200, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {path} did not end: {job}");
}

/// The schedule alert about job `id`.
async fn alert_for(app: &TestApp, id: &Value) -> Value {
    for _ in 0..100 {
        let (status, page) = app
            .get("/api/v1/admin/notifications?kind=schedule&limit=100")
            .await;
        assert_eq!(status, 200, "{page}");
        if let Some(alert) = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["source"]["jobId"] == *id)
        {
            return alert.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no schedule alert for job {id}");
}

/// Polls until `recorder` takes a pending job of `kind` (once the jobs read model shows it).
async fn claim(app: &TestApp, recorder: &Recorder, kind: JobKind) -> job_runner::Claimed {
    for _ in 0..100 {
        if let Some(claimed) = claim_next(&app.db.pool, recorder, kind).await.unwrap() {
            return claimed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {} job to take", kind.as_str());
}

fn export_request() -> Value {
    json!({"format": "csv"})
}

#[tokio::test]
async fn a_job_runs_with_progress_and_its_success_or_failure_raises_a_schedule_alert() {
    let mut app = TestApp::spawn().await;
    app.start_job_runner();
    let (status, job) = app
        .post(
            "/api/v1/admin/jobs",
            json!({"kind": "rebuild", "args": {"projection": "tenants"}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "pending");
    assert_eq!(job["source"], "api");
    assert_eq!(job["args"], json!({"projection": "tenants"}));
    assert_eq!(job["requestedBy"], app.admin_id.as_str());
    let done = ended(
        &app,
        &format!("/api/v1/admin/jobs/{}", job["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["rebuilt"][0]["projection"], "tenants");
    assert!(done["runner"].as_str().unwrap().starts_with("projector "));
    assert!(done["startedAt"].is_string() && done["finishedAt"].is_string());
    assert!(
        done["progress"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rebuilt tenants"),
        "{done}"
    );
    let alert = alert_for(&app, &job["id"]).await;
    assert_eq!(alert["severity"], "low");
    assert_eq!(alert["subject"], "Job succeeded: rebuild");

    // A replay into a schema that exists fails, and says why.
    sqlx::query("CREATE SCHEMA taken_schema")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, job) = app
        .post(
            "/api/v1/admin/jobs",
            json!({"kind": "replay", "args": {"until": "2026-01-01T00:00:00Z", "into": "taken_schema"}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let done = ended(
        &app,
        &format!("/api/v1/admin/jobs/{}", job["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("exists already"),
        "{done}"
    );
    let alert = alert_for(&app, &job["id"]).await;
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["subject"], "Job failed: replay");
    assert!(alert["summary"]
        .as_str()
        .unwrap()
        .contains("exists already"));

    let (status, page) = app.get("/api/v1/admin/jobs?state=failed").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["pagination"]["total"], 1);
    assert_eq!(page["data"][0]["id"], job["id"]);
    let (_, page) = app.get("/api/v1/admin/jobs?kind=rebuild").await;
    assert_eq!(page["pagination"]["total"], 1);
}

#[tokio::test]
async fn a_pending_job_is_cancelled_at_once_and_a_running_one_stops_at_its_runner() {
    let app = TestApp::spawn().await;
    // No runner: the job stays pending.
    let (_, job) = app
        .post("/api/v1/admin/jobs", json!({"kind": "verify"}))
        .await;
    let cancel = format!("/api/v1/admin/jobs/{}/cancel", job["id"].as_str().unwrap());
    let (status, body) = app.post(&cancel, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    let (status, body) = app.post(&cancel, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "Job not in that state");
    // A cancelled export has no file.
    let (_, export) = app
        .post("/api/v1/admin/usage/exports", export_request())
        .await;
    let export_id = export["id"].as_str().unwrap();
    app.post(&format!("/api/v1/admin/jobs/{export_id}/cancel"), json!({}))
        .await;
    let (status, body) = app
        .get(&format!("/api/v1/admin/usage/exports/{export_id}/file"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "Export not ready");

    // A running job's work is dropped once the runner sees the request.
    let (_, job) = app
        .post("/api/v1/admin/usage/exports", export_request())
        .await;
    let recorder = Recorder::new(&app.db.pool, "test runner".into(), "projector".into());
    let claimed = claim(&app, &recorder, JobKind::Export).await;
    assert_eq!(claimed.id.to_string(), job["id"].as_str().unwrap());
    let pool = app.db.pool.clone();
    let job_id = claimed.id;
    let running = tokio::spawn(async move {
        // Part of the file is written, then the export goes on for ever.
        let endless = async {
            sqlx::query("INSERT INTO export_files (job_id, part, data) VALUES ($1, 0, 'a,b')")
                .bind(job_id)
                .execute(&pool)
                .await?;
            std::future::pending::<anyhow::Result<Value>>().await
        };
        job_runner::run_claimed(
            &pool,
            &recorder,
            claimed,
            Reporter::default(),
            endless,
            None,
        )
        .await
    });
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/jobs/{}/cancel", job["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["cancelRequested"], true);
    let ended_as = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the runner heeds the cancel request")
        .unwrap()
        .unwrap();
    assert_eq!(ended_as, Ended::Cancelled);
    let parts: i64 = sqlx::query_scalar("SELECT count(*) FROM export_files WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(parts, 0, "a cancelled export's file is deleted");
    let done = ended(
        &app,
        &format!(
            "/api/v1/admin/usage/exports/{}",
            job["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["cancelRequested"], true);
    assert!(done.get("fileUrl").is_none());
}

#[tokio::test]
async fn jobs_of_a_kind_run_one_at_a_time_and_one_left_by_a_dead_runner_is_failed() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (_, first) = app
        .post("/api/v1/admin/usage/exports", export_request())
        .await;
    let recorder = Recorder::new(pool, "runner one".into(), "projector".into());
    let claimed = claim(&app, &recorder, JobKind::Export).await;
    let (_, second) = app
        .post("/api/v1/admin/usage/exports", export_request())
        .await;
    // The read model shows the second before another runner looks.
    shown(&app, &second).await;
    let other = Recorder::new(pool, "runner two".into(), "projector".into());
    assert!(claim_next(pool, &other, JobKind::Export)
        .await
        .unwrap()
        .is_none());
    let spec = JobSpec::Export {
        format: ExportFormat::Csv,
        filters: ExportFilters::default(),
    };
    let refused = claim_for_cli(pool, &Recorder::for_cli(pool), spec)
        .await
        .err()
        .expect("the command line waits its turn");
    assert!(
        refused.to_string().starts_with(&format!(
            "a job of kind export is running ({})",
            first["id"].as_str().unwrap()
        )),
        "{refused}"
    );
    // Other kinds are not held up.
    let (_, rebuild) = app
        .post(
            "/api/v1/admin/jobs",
            json!({"kind": "rebuild", "args": {"projection": "access"}}),
        )
        .await;
    shown(&app, &rebuild).await;
    let rebuild_claim = claim_next(pool, &other, JobKind::Rebuild).await.unwrap();
    assert!(rebuild_claim.is_some());

    // The first runner dies: its lock goes with its connection.
    drop(claimed);
    let next = claim(&app, &other, JobKind::Export).await;
    assert_eq!(next.id.to_string(), second["id"].as_str().unwrap());
    let (_, dead) = app
        .get(&format!(
            "/api/v1/admin/jobs/{}",
            first["id"].as_str().unwrap()
        ))
        .await;
    let dead = if dead["state"] == "failed" {
        dead
    } else {
        ended(
            &app,
            &format!("/api/v1/admin/jobs/{}", first["id"].as_str().unwrap()),
        )
        .await
    };
    assert_eq!(dead["state"], "failed");
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("interrupted: the runner (runner one) stopped"),
        "{dead}"
    );
    let done = async { Ok(json!({"rows": 0})) };
    let ended_as = job_runner::run_claimed(pool, &other, next, Reporter::default(), done, None)
        .await
        .unwrap();
    assert_eq!(ended_as, Ended::Succeeded(json!({"rows": 0})));
}

/// Waits until the jobs read model shows `job`.
async fn shown(app: &TestApp, job: &Value) {
    let path = format!("/api/v1/admin/jobs/{}", job["id"].as_str().unwrap());
    for _ in 0..100 {
        if app.get(&path).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {path} never shown");
}

#[tokio::test]
async fn the_command_line_runs_its_commands_as_jobs() {
    let app = TestApp::spawn().await;
    let projector = tests::process::binary("projector");
    let run = |args: &[&str]| {
        std::process::Command::new(&projector)
            .args(args)
            .env("DATABASE_URL", app.db.url())
            .env("USER", "ops")
            .output()
            .expect("running the projector's command line")
    };
    let output = run(&["rebuild", "tenants"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("rebuilt tenants"), "{stdout}");
    let output = run(&["verify", "nope"]);
    assert!(!output.status.success());
    sqlx::query("CREATE SCHEMA cli_taken")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let output = run(&["replay", "--until", "5", "--into", "cli_taken"]);
    assert_eq!(output.status.code(), Some(1));

    let (status, page) = app.get("/api/v1/admin/jobs?source=cli").await;
    assert_eq!(status, 200, "{page}");
    let jobs = page["data"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        2,
        "an unknown projection is refused before any job: {page}"
    );
    assert_eq!(jobs[0]["kind"], "replay");
    assert_eq!(jobs[0]["state"], "failed");
    assert_eq!(jobs[1]["kind"], "rebuild");
    assert_eq!(jobs[1]["state"], "succeeded");
    assert_eq!(jobs[1]["requestedBy"], "cli:ops");
    assert!(jobs[1]["runner"].as_str().unwrap().starts_with("cli "));
    assert!(jobs[1]["progress"]["message"]
        .as_str()
        .unwrap()
        .starts_with("rebuilt tenants"));
}

#[tokio::test]
async fn jobs_are_for_operators_and_nonsense_is_refused_changing_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    app.add_member(&org, "alice", "admin").await;
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::POST, "/api/v1/admin/jobs".to_owned()),
        (Method::POST, "/api/v1/admin/usage/exports".to_owned()),
        (Method::POST, format!("/api/v1/admin/jobs/{id}/cancel")),
        (Method::GET, "/api/v1/admin/jobs".to_owned()),
        (Method::GET, format!("/api/v1/admin/jobs/{id}")),
        (Method::GET, format!("/api/v1/admin/usage/exports/{id}")),
        (
            Method::GET,
            format!("/api/v1/admin/usage/exports/{id}/file"),
        ),
    ] {
        let (status, body) = send(
            app.as_user("alice", method.clone(), &path)
                .json(&json!({"kind": "verify", "format": "csv"})),
        )
        .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let events = app.event_count().await;
    for (body, field) in [
        (json!({"kind": "nope"}), "kind"),
        (
            json!({"kind": "rebuild", "args": {"projection": "nope"}}),
            "args.projection",
        ),
        (
            json!({"kind": "verify", "args": {"projection": "tenants", "log": true}}),
            "args.log",
        ),
        (
            json!({"kind": "replay", "args": {"until": 3, "into": "read_models"}}),
            "args.into",
        ),
        (
            json!({"kind": "replay", "args": {"until": "soon", "into": "x"}}),
            "args",
        ),
        (json!({"kind": "reconcile"}), "kind"),
        (json!({"kind": "rebuild", "extra": 1}), "extra"),
        (
            json!({"kind": "rebuild", "args": {"projection": "tenants", "force": true}}),
            "args.force",
        ),
        (
            json!({"kind": "reconcile", "args": {"dryRun": true}}),
            "args.dryRun",
        ),
    ] {
        let (status, answer) = app.post("/api/v1/admin/jobs", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    for body in [
        json!({"format": "xlsx"}),
        json!({"format": "csv", "filters": {"from": "2026-02-01", "to": "2026-01-01"}}),
        json!({"format": "csv", "filters": {"organisation": "x"}}),
    ] {
        let (status, answer) = app.post("/api/v1/admin/usage/exports", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    assert_eq!(
        app.event_count().await,
        events,
        "a refused request appended"
    );
    let (status, _) = app
        .post(&format!("/api/v1/admin/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(app.get(&format!("/api/v1/admin/jobs/{id}")).await.0, 404);
    // A job that is not an export is no export.
    let (_, job) = app
        .post("/api/v1/admin/jobs", json!({"kind": "verify"}))
        .await;
    shown(&app, &job).await;
    let (status, _) = app
        .get(&format!(
            "/api/v1/admin/usage/exports/{}",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);
}

/// Reads RFC 4180 CSV: records of fields, quotes undone; panics on a record not ended by CRLF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "a bare CR ends no record");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\n') => panic!("a record ended by LF alone"),
            (false, c) => field.push(c),
        }
    }
    assert!(
        record.is_empty() && field.is_empty(),
        "the last record lacks its CRLF"
    );
    records
}

/// Runs an export of `body` to its end; its file's content type and text.
async fn exported(app: &TestApp, body: Value) -> (String, String) {
    let (status, export) = app.post("/api/v1/admin/usage/exports", body).await;
    assert_eq!(status, 202, "{export}");
    let id = export["id"].as_str().unwrap();
    let done = ended(app, &format!("/api/v1/admin/usage/exports/{id}")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["fileUrl"],
        format!("/api/v1/admin/usage/exports/{id}/file")
    );
    let response = app
        .admin(Method::GET, done["fileUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"usage-"),
        "{disposition}"
    );
    let text = response.text().await.unwrap();
    assert_eq!(done["result"]["bytes"], text.len());
    (content_type, text)
}

#[tokio::test]
async fn usage_exports_hold_exactly_what_usage_sums_with_formulas_neutralised() {
    let mut s = Setup::start().await;
    s.app.start_job_runner();
    let (status, model) = s
        .app
        .post(
            "/api/models",
            json!({
                "organizationId": s.org, "name": "formula", "modelUrl": s.provider.url("ok", "openai"),
                "provider": "openai", "providerModel": "=HYPERLINK(\"http://evil\",\"x\"),1", "token": "sk-formula",
                "inputPricePerMillionTokens": 3, "outputPricePerMillionTokens": 7, "currency": "USD",
            }),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let formula = model["id"].as_str().unwrap().to_owned();
    let plain = s.model("ok", "anthropic").await;
    let failing = s.model("server-error", "openai").await;
    let mut executions = Vec::new();
    for (model, times) in [(&formula, 3), (&plain, 2), (&failing, 1)] {
        let template = s.template("Hi {{name}}", model).await;
        for _ in 0..times {
            let (_, answer) = s
                .execute(&template, json!({"variableSet": "default"}))
                .await;
            executions.push(s.execution(&answer["executionId"]).await);
        }
    }
    let (other_org, _) = crate::usage::an_execution_of_another_organization(&s).await;

    let (content_type, text) = exported(
        &s.app,
        json!({"format": "csv", "filters": {"organizationId": s.org}}),
    )
    .await;
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let records = parse_csv(&text);
    let header = &records[0];
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows = &records[1..];
    let mut exported_ids: Vec<&str> = rows
        .iter()
        .map(|r| r[column("executionId")].as_str())
        .collect();
    let mut expected_ids: Vec<&str> = executions
        .iter()
        .map(|e| e["executionId"].as_str().unwrap())
        .collect();
    exported_ids.sort();
    expected_ids.sort();
    assert_eq!(
        exported_ids, expected_ids,
        "another organization's execution is not exported"
    );
    assert!(!text.contains(&other_org));
    let formula_cells: Vec<&str> = rows
        .iter()
        .filter(|r| r[column("modelId")] == formula)
        .map(|r| r[column("providerModel")].as_str())
        .collect();
    assert_eq!(formula_cells.len(), 3);
    for cell in formula_cells {
        assert_eq!(cell, "'=HYPERLINK(\"http://evil\",\"x\"),1");
    }
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r[column("status")] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");

    // The file sums to what the usage report says.
    let (status, usage) = s
        .app
        .get(&format!("/api/v1/admin/usage?organizationId={}", s.org))
        .await;
    assert_eq!(status, 200, "{usage}");
    let total = &usage["total"];
    let sum = |name: &str| -> i64 {
        rows.iter()
            .map(|r| r[column(name)].parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(total["executions"], rows.len());
    assert_eq!(total["inputTokens"], sum("inputTokens"));
    assert_eq!(total["outputTokens"], sum("outputTokens"));
    let cost: f64 = rows
        .iter()
        .filter(|r| !r[column("cost")].is_empty())
        .map(|r| r[column("cost")].parse::<f64>().unwrap())
        .sum();
    assert!(
        (total["cost"]["USD"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{usage} vs {cost}"
    );

    // NDJSON keeps values as they are (it is no spreadsheet); a model filter takes its rows only.
    let (content_type, text) = exported(
        &s.app,
        json!({"format": "ndjson", "filters": {"organizationId": s.org, "modelId": formula}}),
    )
    .await;
    assert_eq!(content_type, "application/x-ndjson");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(
        |l| l["providerModel"] == "=HYPERLINK(\"http://evil\",\"x\"),1"
            && l["modelId"] == formula.as_str()
    ));
    // Days are UTC days of when executions finished: none finished in 2020.
    let (_, text) = exported(
        &s.app,
        json!({"format": "csv", "filters": {"from": "2020-01-01", "to": "2021-01-01"}}),
    )
    .await;
    assert_eq!(parse_csv(&text).len(), 1, "the header alone");

    // Gone once housekeeping has deleted the file.
    let (_, export) = s
        .app
        .post("/api/v1/admin/usage/exports", json!({"format": "csv"}))
        .await;
    let id = export["id"].as_str().unwrap();
    ended(&s.app, &format!("/api/v1/admin/usage/exports/{id}")).await;
    sqlx::query(
        "UPDATE export_files SET written_at = now() - interval '8 days' WHERE job_id = $1::uuid",
    )
    .bind(id)
    .execute(&s.app.db.pool)
    .await
    .unwrap();
    projector::housekeeping::purge(&s.app.db.pool)
        .await
        .unwrap();
    let (status, body) = s
        .app
        .get(&format!("/api/v1/admin/usage/exports/{id}/file"))
        .await;
    assert_eq!(status, 410, "{body}");
}
