//! (l) The triage queue: feedback capture through `POST /api/feedback` from `--clients` HTTP clients,
//! classified against the same requests to a command-api built alike but with
//! `FEEDBACK_CLASSIFICATION` off, run in both orders and averaged, the messages drawn from the
//! classifier's corpora (ordinary reports and attack payloads); then `--list-rows` submissions written
//! straight into the read model and pages 1-100 of the queue from 8 clients, newest first and open
//! ones by severity.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tests::TestApp;

use super::{pages_latency, run_for, Measured};

/// Every line of the classifier's corpora, as the messages to submit.
fn messages() -> Vec<String> {
    [
        include_str!("../../../../events/domain/tests/corpus/clean.txt"),
        include_str!("../../../../events/domain/tests/corpus/sql.txt"),
        include_str!("../../../../events/domain/tests/corpus/script.txt"),
        include_str!("../../../../events/domain/tests/corpus/command.txt"),
        include_str!("../../../../events/domain/tests/corpus/template.txt"),
        include_str!("../../../../events/domain/tests/corpus/path.txt"),
    ]
    .iter()
    .flat_map(|text| text.lines())
    .filter(|line| !line.is_empty() && !line.starts_with('#'))
    .map(str::to_owned)
    .collect()
}

async fn capture(
    app: &TestApp,
    base: &str,
    organization: &str,
    clients: usize,
    duration: Duration,
) -> Measured {
    let messages = Arc::new(messages());
    let (http, token, url, organization) = (
        reqwest::Client::new(),
        app.admin_token.clone(),
        format!("{base}/api/feedback"),
        organization.to_owned(),
    );
    run_for(clients, duration, move |client, n| {
        let (http, token, url, organization, messages) = (
            http.clone(),
            token.clone(),
            url.clone(),
            organization.clone(),
            messages.clone(),
        );
        async move {
            let message = &messages[(client * 7919 + n) % messages.len()];
            http.post(&url)
                .bearer_auth(&token)
                .json(&json!({ "organizationId": organization, "message": message }))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    })
    .await
}

pub async fn run(
    app: &TestApp,
    clients: usize,
    duration: Duration,
    rows: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let organization = app.create_organization("Feedback Corp").await;
    // Two command-apis built alike (same pool size) but for the switch.
    let with = app
        .another_command_api_with(|config| config.feedback_classification = true)
        .await;
    let without = app
        .another_command_api_with(|config| config.feedback_classification = false)
        .await;
    let half = duration / 2;
    let classified_first = capture(app, &with, &organization, clients, half).await;
    let plain_second = capture(app, &without, &organization, clients, half).await;
    let plain_first = capture(app, &without, &organization, clients, half).await;
    let classified_second = capture(app, &with, &organization, clients, half).await;
    let classified = (classified_first.rate + classified_second.rate) / 2.0;
    let unclassified = (plain_first.rate + plain_second.rate) / 2.0;
    println!(
        "(l) POST /api/feedback, {clients} clients: classified {classified:.0}/s (p99 {:.2} / {:.2} ms, {} errors), \
         unclassified {unclassified:.0}/s (p99 {:.2} / {:.2} ms, {} errors); ratio {:.2} (target >= 0.8)",
        classified_first.p99,
        classified_second.p99,
        classified_first.errors + classified_second.errors,
        plain_first.p99,
        plain_second.p99,
        plain_first.errors + plain_second.errors,
        classified / unclassified
    );

    // The queue with `rows` submissions, a quarter of them open, severities and qualities mixed.
    sqlx::query(
        "INSERT INTO read_models.feedback (id, organization_id, origin, source, severity, state, quality, groups, \
                                           fingerprint, group_id, message, created_at, data) \
         SELECT id, $1, 'user:bench', 'user', g % 4, \
                (ARRAY['open','triaged','in_progress','done'])[g % 4 + 1], 'product_signal', '{}', \
                md5(g::text), id, 'report ' || g, at, \
                jsonb_build_object('id', id, 'organizationId', $1::uuid, 'source', 'user', 'message', 'report ' || g, \
                  'category', NULL, 'severity', (ARRAY['low','medium','high','critical'])[g % 4 + 1], 'page', NULL, \
                  'metadata', NULL, 'groups', '[]'::jsonb, 'quality', 'product_signal', 'fingerprint', md5(g::text), \
                  'state', (ARRAY['open','triaged','in_progress','done'])[g % 4 + 1], 'assigneeId', NULL, \
                  'submittedBy', jsonb_build_object('userId', 'bench', 'role', 'admin', 'clientIp', NULL, 'userAgent', NULL), \
                  'transitions', '[]'::jsonb, 'createdAt', at, 'updatedAt', at) \
         FROM (SELECT g, gen_random_uuid() AS id, now() - g * interval '1 ms' AS at \
               FROM generate_series(1, $2) g) rows",
    )
    .bind(organization.parse::<uuid::Uuid>()?)
    .bind(rows as i64)
    .execute(&app.db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.feedback_counts (scope, count) \
         SELECT 'all', count(*) FROM read_models.feedback \
         UNION ALL SELECT 'state:' || state, count(*) FROM read_models.feedback GROUP BY state \
         ON CONFLICT (scope) DO UPDATE SET count = EXCLUDED.count",
    )
    .execute(&app.db.pool)
    .await?;
    for statement in ["VACUUM (ANALYZE) read_models.feedback", "CHECKPOINT"] {
        sqlx::raw_sql(statement).execute(&app.db.pool).await?;
    }
    let newest = pages_latency(
        app,
        format!("{}/api/v1/admin/feedback?limit=20", app.query_url),
        100,
        requests,
    )
    .await?;
    let by_severity = pages_latency(
        app,
        format!(
            "{}/api/v1/admin/feedback?state=open&sort=severity&limit=20",
            app.query_url
        ),
        100,
        requests,
    )
    .await?;
    println!(
        "(l) GET /api/v1/admin/feedback pages 1-100 of {rows} submissions, 8 clients: newest first p50 {:.2} ms, p99 {:.2} ms{}; \
         open by severity p50 {:.2} ms, p99 {:.2} ms{} (target p99 < 10 ms)",
        newest.p50,
        newest.p99,
        newest.cpu_text(),
        by_severity.p50,
        by_severity.p99,
        by_severity.cpu_text()
    );
    Ok(())
}
