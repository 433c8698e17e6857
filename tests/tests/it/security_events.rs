//! The operator surface's security events over HTTP: refused requests of every kind recorded by both
//! APIs, aggregated per minute, source and caller (a flood is one row with its count), never keeping a
//! credential; the log's own security events (System role grants, write-only value changes, never the
//! value); filters, exact totals and the NDJSON export; probes reported into the triage queue; and
//! System only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

/// The security events `query` matches, once there are at least `at_least` (refusals are written
/// about once a second).
async fn events(app: &TestApp, query: &str, at_least: i64) -> (i64, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = app
            .get(&format!("/api/v1/admin/security-events?{query}"))
            .await;
        assert_eq!(status, 200, "{query}: {page}");
        let total = page["pagination"]["total"].as_i64().unwrap();
        if total >= at_least || Instant::now() > deadline {
            return (total, page["data"].as_array().unwrap().clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(rows: &[Value]) -> i64 {
    rows.iter().map(|row| row["count"].as_i64().unwrap()).sum()
}

/// The requests the rows `query` matches count, once they count `expected` (or after 10 s).
async fn counted(app: &TestApp, query: &str, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = count(&events(app, query, 1).await.1);
        if counted >= expected || Instant::now() > deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn refused_requests_and_the_logs_security_events_are_listed_filtered_and_exported() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let other = app.create_organization("Other").await;
    let other_env = app.create_environment(&other, "Production").await;
    let guest = app.add_member(&acme, "guest-1", "guest").await;

    // A flood of bad tokens from one address: one row, with its count.
    for _ in 0..50 {
        let (status, _) = send(
            app.request(Method::GET, "/api/organizations")
                .bearer_auth("not-a-token")
                .header("x-real-ip", "203.0.113.7"),
        )
        .await;
        assert_eq!(status, 401);
    }
    // A guest refused a write, and a look at another tenant's environment.
    let (status, _) = send(
        app.as_user("guest-1", Method::POST, "/api/environments")
            .header("x-real-ip", "198.51.100.4")
            .json(&json!({ "organizationId": acme, "name": "Staging" })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        app.as_user(
            "guest-1",
            Method::GET,
            &format!("/api/environments/{other_env}"),
        )
        .header("x-real-ip", "198.51.100.4"),
    )
    .await;
    assert_eq!(status, 404, "another tenant's environment is missing to it");
    // A refused write carrying a credential and an injection: recorded as a probe, without the token.
    let (status, _) = send(
        app.admin(Method::POST, "/api/models")
            .header("x-real-ip", "192.0.2.99")
            .json(&json!({ "organizationId": "1' OR '1'='1", "name": "m",
                           "token": "sk-live-never-recorded" })),
    )
    .await;
    assert_eq!(status, 400);
    // The log's own: a System role granted, a write-only value set.
    let (status, _) = app
        .put(&format!("/api/users/{guest}/system-role"), json!({}))
        .await;
    assert_eq!(status, 200);
    let env = app.create_environment(&acme, "Production").await;
    let (status, _) = app
        .post(
            "/api/variables",
            json!({ "organizationId": acme, "environmentId": env, "name": "API_KEY",
                    "value": "variable-value-never-shown" }),
        )
        .await;
    assert_eq!(status, 201);

    // Sign-ins started from one address past its cap, and a callback no browser started.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut limited = 0;
    for _ in 0..25 {
        let started = browser
            .get(format!("{}/api/auth/login", app.command_url))
            .header("x-real-ip", "203.0.113.88")
            .send()
            .await
            .unwrap();
        limited += i64::from(started.status() == 429);
    }
    assert!(limited > 0, "the per-address cap of sign-ins was reached");
    let forged = browser
        .get(format!(
            "{}/api/auth/callback?state=forged&code=x",
            app.command_url
        ))
        .header("x-real-ip", "203.0.113.88")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    let (total, rows) = events(&app, "kind=token_refused", 1).await;
    assert_eq!(total, 1, "{rows:#?}");
    assert_eq!(rows[0]["ip"], "203.0.113.7");
    let flood = counted(&app, "kind=token_refused", 50).await;
    assert_eq!(flood, 50, "every refusal is counted");

    let (_, rows) = events(&app, "kind=permission_denied&ip=198.51.100.4", 1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["actorId"], guest);
    assert_eq!(rows[0]["details"]["route"], "/api/environments");
    assert_eq!(rows[0]["details"]["status"], 403);
    let (_, rows) = events(&app, &format!("kind=cross_tenant&actorId={guest}"), 1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let (_, rows) = events(&app, "kind=probe&ip=192.0.2.99", 1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["details"]["groups"], json!(["sql"]));
    let excerpt = rows[0]["details"]["excerpt"].as_str().unwrap();
    assert!(excerpt.contains("OR '1'='1"), "{excerpt}");
    let (_, rows) = events(&app, "kind=rate_limited&ip=203.0.113.88", 1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["details"]["route"], "/api/auth/login");
    assert_eq!(
        counted(&app, "kind=rate_limited&ip=203.0.113.88", limited).await,
        limited
    );
    let (_, rows) = events(&app, "kind=sign_in_failed&ip=203.0.113.88", 1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert!(
        rows[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("not started in this browser"),
        "{rows:#?}"
    );
    let (_, rows) = events(&app, "kind=system_role_granted", 1).await;
    assert_eq!(rows[0]["details"]["userId"], guest);
    assert_eq!(rows[0]["actorId"], app.admin_id);
    let (_, rows) = events(&app, "kind=secret_changed", 1).await;
    assert_eq!(rows[0]["details"]["fields"], json!({ "value": "set" }));
    assert_eq!(rows[0]["organizationId"], acme);
    let (total, _) = events(&app, &format!("organizationId={acme}"), 1).await;
    assert_eq!(total, 1, "refusals carry no organization");

    // Everything, and the export of everything: the same rows, and no credential anywhere.
    let (total, _) = events(&app, "", 6).await;
    assert!(total >= 6, "{total}");
    let export = app
        .admin(Method::GET, "/api/v1/admin/security-events")
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let text = export.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, total);
    for secret in [
        "sk-live-never-recorded",
        "variable-value-never-shown",
        "not-a-token",
    ] {
        assert!(!text.contains(secret), "{secret} in the security events");
    }
    let stored: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(sample::text, ' '), '') FROM security_refusals",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(!stored.contains("sk-live-never-recorded"), "{stored}");

    for query in ["kind=everything", "from=now", "organizationId=acme"] {
        let (status, error) = app
            .get(&format!("/api/v1/admin/security-events?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {error}");
    }
    let (status, _) =
        send(app.as_user("guest-1", Method::GET, "/api/v1/admin/security-events")).await;
    assert_eq!(
        status, 200,
        "the guest was made a System user above, so it may read them"
    );
    let (status, _) = app.delete(&format!("/api/users/{guest}/system-role")).await;
    assert_eq!(status, 200);
    let (_, rows) = events(&app, "kind=system_role_revoked", 1).await;
    assert_eq!(rows[0]["details"]["userId"], guest);
    app.add_member(&acme, "user-2", "user").await;
    let (status, _) =
        send(app.as_user("user-2", Method::GET, "/api/v1/admin/security-events")).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn probes_become_one_triage_report_per_source_and_minute() {
    let app = TestApp::spawn().await;
    for n in 0..6 {
        let (status, _) = send(
            app.admin(
                Method::GET,
                &format!("/api/organizations/..%2f..%2fetc%2fpasswd{n}"),
            )
            .header("x-real-ip", "203.0.113.50")
            .header("user-agent", "sqlmap/1.8"),
        )
        .await;
        assert_eq!(status, 400, "not an id");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let reports = loop {
        let (status, page) = app.get("/api/v1/admin/feedback?source=probe").await;
        assert_eq!(status, 200, "{page}");
        let reports = page["data"].as_array().unwrap().clone();
        let requests: i64 = reports
            .iter()
            .map(|r| r["metadata"]["requests"].as_i64().unwrap())
            .sum();
        if requests == 6 || Instant::now() > deadline {
            break reports;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        (1..=2).contains(&reports.len()),
        "one report per minute the probes spanned: {reports:#?}"
    );
    let report = &reports[0];
    assert_eq!(report["source"], "probe");
    assert_eq!(report["quality"], "security_probe");
    assert!(
        report["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("path")),
        "{report}"
    );
    assert_eq!(report["submittedBy"]["clientIp"], "203.0.113.50");
    assert_eq!(report["submittedBy"]["userAgent"], "sqlmap/1.8");
    assert_eq!(report["submittedBy"]["userId"], app.admin_id);
    assert_eq!(report["page"], "/api/organizations/{id}");
    // Reported once: the intake marks the rows it reported, and a report made again would be the
    // same stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, page) = app.get("/api/v1/admin/feedback?source=probe").await;
    assert_eq!(page["pagination"]["total"], reports.len());
    let unreported: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM security_refusals WHERE kind = 'probe' AND NOT reported",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(unreported, 0);
}
