//! The processed queue, over HTTP, against a real S3-compatible server (moto) through aws-sdk-s3:
//! listing with every filter, paging with exact totals newest first, counts, reading a message,
//! single and bulk deletes recorded in the audit trail, key injection, objects added or removed
//! behind the indexer's back, unparsable objects, the indexer killed mid-pass, the bucket down,
//! and permissions for every role and another tenant.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use domain::processed_queue::{MessageKey, MessageStatus, ProcessedQueue, ProcessedQueueEvent};
use domain::Aggregate;
use projector::indexer::{self, Indexer, IndexerConfig};
use projector::projection::ensure_checkpoint;
use reqwest::Method;
use serde_json::{json, Value};
use tests::processed_messages::{malformed, message, produce};
use tests::s3::{S3Server, MAX_BODY_BYTES};
use tests::{send, TestApp};
use uuid::Uuid;

struct Setup {
    app: TestApp,
    s3: S3Server,
    org: String,
    env: String,
}

impl Setup {
    async fn start() -> Setup {
        let s3 = S3Server::start().await;
        let app = TestApp::spawn_with_queue(&s3).await;
        let org = app.create_organization("Acme").await;
        let env = app.create_environment(&org, "Production").await;
        Setup { app, s3, org, env }
    }

    fn bucket(&self) -> &processed_queue::Bucket {
        self.app.bucket.as_ref().expect("the app has a bucket")
    }

    fn ids(&self) -> (Uuid, Uuid) {
        (self.org.parse().unwrap(), self.env.parse().unwrap())
    }

    /// Stores message `n` of `status`, processed `days_ago` days ago; its key.
    async fn put(&self, env: &str, status: MessageStatus, days_ago: u64, n: u64) -> String {
        let at = Utc::now() - Days::new(days_ago);
        let generated = message(self.ids().0, env.parse().unwrap(), status, at, n);
        self.bucket()
            .put(&generated.key, generated.body)
            .await
            .expect("storing a message");
        generated.key
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.app.get(path_and_query).await
    }

    async fn counts(&self, query: &str) -> Value {
        let (status, body) = self
            .get(&format!(
                "/api/processed-queue/counts?organizationId={}{query}",
                self.org
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the index holds `total` messages of the organization, every body read.
    async fn wait_indexed(&self, total: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let counts = self.counts("").await;
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM read_models.processed_messages WHERE summary = 'pending'",
            )
            .fetch_one(&self.app.db.pool)
            .await
            .unwrap();
            if counts["total"] == total && pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the index did not reach {total}: {counts}, {pending} pending"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every key a list with `query` shows, page by page with `limit`, checking the totals.
    async fn list_all(&self, query: &str, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let (status, body) = self
                .get(&format!(
                    "/api/processed-queue?organizationId={}&page={page}&limit={limit}{query}",
                    self.org
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            let data = body["data"].as_array().unwrap().clone();
            let total = body["pagination"]["total"].as_u64().unwrap() as usize;
            assert_eq!(
                body["pagination"]["totalPages"].as_u64().unwrap() as usize,
                total.div_ceil(limit)
            );
            all.extend(data.iter().cloned());
            if data.len() < limit {
                assert_eq!(all.len(), total, "the pages hold the total");
                return all;
            }
            page += 1;
        }
    }
}

fn keys(items: &[Value]) -> HashSet<String> {
    items
        .iter()
        .map(|item| item["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn lists_page_newest_first_with_exact_totals_and_every_filter_and_counts_agree() {
    let setup = Setup::start().await;
    let (org, env) = setup.ids();
    let staging = setup.app.create_environment(&setup.org, "Staging").await;
    let mut expected = Vec::new();
    for n in 0..24u64 {
        let status = MessageStatus::ALL[(n % 3) as usize];
        expected.push((
            setup.put(&setup.env, status, n % 4, n).await,
            status,
            setup.env.clone(),
        ));
    }
    for n in 100..106u64 {
        expected.push((
            setup.put(&staging, MessageStatus::Fail, 1, n).await,
            MessageStatus::Fail,
            staging.clone(),
        ));
    }
    let bad = malformed(org, env, Utc::now(), 7);
    setup.bucket().put(&bad.key, bad.body).await.unwrap();
    setup.wait_indexed(31).await;
    // A second batch, stored at least a second later (S3 times have seconds).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later: Vec<String> = produce(setup.bucket(), org, env, 5, 1, 0).await.unwrap();
    setup.wait_indexed(36).await;

    let all = setup.list_all("", 7).await;
    assert_eq!(all.len(), 36);
    let order: Vec<(String, String)> = all
        .iter()
        .map(|i| {
            (
                i["storedAt"].as_str().unwrap().to_owned(),
                i["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut newest_first = order.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, newest_first, "newest first, then by key");
    assert_eq!(
        keys(&all[..5]),
        later.iter().cloned().collect(),
        "the later batch comes first"
    );

    // Filters, each checked against what was stored, and the counts for the same filters.
    let of_status =
        |status: MessageStatus| expected.iter().filter(|(_, s, _)| *s == status).count() as i64;
    for status in MessageStatus::ALL {
        let listed = setup
            .list_all(
                &format!("&status={}&environmentId={}", status.as_str(), setup.env),
                100,
            )
            .await;
        assert!(listed
            .iter()
            .all(|i| i["status"] == status.as_str() && i["environmentId"] == setup.env));
        let counts = setup.counts(&format!("&environmentId={}", setup.env)).await;
        assert_eq!(counts[status.as_str()], listed.len() as i64, "{counts}");
    }
    let in_staging = setup
        .list_all(&format!("&environmentId={staging}"), 100)
        .await;
    assert_eq!(in_staging.len(), 6);
    let counts = setup.counts("").await;
    let later_statuses: Vec<MessageStatus> = later
        .iter()
        .map(|k| MessageKey::parse(k).unwrap().status)
        .collect();
    for status in MessageStatus::ALL {
        let stored = of_status(status)
            + later_statuses.iter().filter(|s| **s == status).count() as i64
            + i64::from(MessageKey::parse(&bad.key).unwrap().status == status);
        assert_eq!(counts[status.as_str()], stored, "{counts}");
    }
    assert_eq!(counts["total"], 36);

    // Time ranges: exact on both sides of a moment inside a day.
    let from = between.to_rfc3339();
    let after = setup
        .list_all(&format!("&from={}", urlencode(&from)), 100)
        .await;
    assert_eq!(keys(&after), later.iter().cloned().collect());
    assert_eq!(
        setup.counts(&format!("&from={}", urlencode(&from))).await["total"],
        5
    );
    assert_eq!(
        setup.counts(&format!("&to={}", urlencode(&from))).await["total"],
        31
    );
    let tomorrow = (Utc::now() + Days::new(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let week_ago = (Utc::now() - Days::new(7))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let whole_days = format!(
        "&from={}&to={}",
        urlencode(&week_ago.to_rfc3339()),
        urlencode(&tomorrow.to_rfc3339())
    );
    assert_eq!(setup.counts(&whole_days).await["total"], 36);
    assert_eq!(setup.list_all(&whole_days, 100).await.len(), 36);

    // Search: a message id's substring, a workflow id (known once bodies are read).
    let one = MessageKey::parse(&expected[3].0).unwrap();
    let found = setup
        .list_all(&format!("&search={}", &one.message_id[9..23]), 100)
        .await;
    assert_eq!(keys(&found), HashSet::from([one.key.clone()]));
    let invoices = setup.list_all("&search=wf-invoices", 100).await;
    assert!(!invoices.is_empty());
    assert!(invoices.iter().all(|i| i["workflowId"] == "wf-invoices"));
    assert_eq!(
        setup.counts("&search=wf-invoices").await["total"],
        invoices.len() as i64
    );

    // The malformed object is listed with what its key says, flagged.
    let flagged: Vec<&Value> = all.iter().filter(|i| i["parsed"] == false).collect();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["key"], bad.key.as_str());
    assert!(flagged[0]["unparsedReason"].as_str().unwrap().len() > 3);
    assert_eq!(flagged[0]["workflowId"], Value::Null);
    let parsed = all
        .iter()
        .find(|i| i["key"] == expected[0].0.as_str())
        .unwrap();
    assert_eq!(parsed["parsed"], true);
    assert!(parsed["processedAt"].is_string() && parsed["receivedAt"].is_string());

    // Bad parameters change nothing and say why.
    for query in [
        "&limit=101",
        "&page=0",
        "&status=done",
        "&environmentId=nope",
        "&from=yesterday",
        "&from=2026-02-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        let (status, body) = setup
            .get(&format!(
                "/api/processed-queue?organizationId={}{query}",
                setup.org
            ))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].is_string() && body["details"].is_string(),
            "{body}"
        );
    }
    let (status, body) = setup.get("/api/processed-queue").await;
    assert_eq!(status, 400, "{body}");
}

fn urlencode(raw: &str) -> String {
    raw.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_message_is_read_from_the_bucket_and_one_gone_answers_404_and_leaves_the_index() {
    let mut setup = Setup::start().await;
    let (org, env) = setup.ids();
    let generated = message(org, env, MessageStatus::Fail, Utc::now(), 1);
    setup
        .bucket()
        .put(&generated.key, generated.body.clone())
        .await
        .unwrap();
    setup.wait_indexed(1).await;

    let path = format!(
        "/api/processed-queue/{}?organizationId={}",
        generated.key, setup.org
    );
    let (status, body) = setup.get(&path).await;
    assert_eq!(status, 200, "{body}");
    let stored: Value = serde_json::from_slice(&generated.body).unwrap();
    assert_eq!(body["body"], stored);
    assert_eq!(body["status"], "fail");
    assert_eq!(body["workflowId"], stored["workflowId"]);
    assert_eq!(
        body["id"],
        MessageKey::parse(&generated.key).unwrap().id().to_string()
    );

    // A message larger than the limit: listed and flagged, its body not read, its metadata shown.
    let mut large = message(org, env, MessageStatus::Success, Utc::now(), 2);
    large.body = format!(
        "{{\"messageId\": \"x\", \"padding\": \"{}\"}}",
        "x".repeat(MAX_BODY_BYTES)
    )
    .into_bytes();
    setup
        .bucket()
        .put(&large.key, large.body.clone())
        .await
        .unwrap();
    setup.wait_indexed(2).await;
    let (status, body) = setup
        .get(&format!(
            "/api/processed-queue/{}?organizationId={}",
            large.key, setup.org
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"], Value::Null);
    assert_eq!(body["size"], large.body.len());
    assert!(
        body["bodyOmitted"].as_str().unwrap().contains("bytes"),
        "{body}"
    );
    assert_eq!(body["parsed"], false);
    assert!(
        body["unparsedReason"]
            .as_str()
            .unwrap()
            .starts_with("larger than"),
        "{body}"
    );
    setup
        .bucket()
        .delete(std::slice::from_ref(&large.key))
        .await
        .unwrap();
    setup.wait_indexed(1).await;

    // Deleted behind the index's back, with the indexer stopped: the read finds it gone, and the
    // index follows at once.
    setup.app.stop_projector();
    setup
        .bucket()
        .delete(std::slice::from_ref(&generated.key))
        .await
        .unwrap();
    let (status, body) = setup.get(&path).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(setup.counts("").await["total"], 0);
    assert_eq!(setup.list_all("", 10).await.len(), 0);
}

#[tokio::test]
async fn keys_outside_the_callers_organization_answer_404_before_reaching_the_bucket() {
    let setup = Setup::start().await;
    let (_, env) = setup.ids();
    let other_org = setup.app.create_organization("Other").await;
    let other_env = setup.app.create_environment(&other_org, "Prod").await;
    let theirs = message(
        other_org.parse().unwrap(),
        other_env.parse().unwrap(),
        MessageStatus::Success,
        Utc::now(),
        1,
    );
    setup.bucket().put(&theirs.key, theirs.body).await.unwrap();
    let ours = setup.put(&setup.env, MessageStatus::Success, 0, 2).await;
    setup.wait_indexed(1).await;

    let (_, missing) = setup
        .get(&format!(
            "/api/processed-queue/{}/{env}/success/2026/01/01/nope.json?organizationId={}",
            setup.org, setup.org
        ))
        .await;
    let escaped_slash = ours.replacen('/', "%2F", 2);
    let dotted = format!("{}/../{}", setup.org, theirs.key);
    let attempts = [
        theirs.key.clone(),
        escaped_slash,
        dotted,
        ours.replacen("/success/", "//", 1),
        ours.replace(".json", "%2Ejson"),
        format!("{}/{env}/success/2026/01/01/..json", setup.org),
        format!("{}/x", setup.org),
    ];
    for attempt in &attempts {
        let path = format!(
            "/api/processed-queue/{attempt}?organizationId={}",
            setup.org
        );
        for method in [Method::GET, Method::DELETE] {
            let (status, body) = send(setup.app.admin(method.clone(), &path)).await;
            assert_eq!(status, 404, "{method} {attempt}: {body}");
            assert_eq!(body, missing, "{method} {attempt}");
        }
    }
    let (status, body) = setup
        .app
        .delete(&format!(
            "/api/processed-queue?organizationId={}&keys={}",
            setup.org, theirs.key
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], json!([]));
    assert_eq!(body["errors"][0]["key"], theirs.key.as_str());
    // Nothing reached the bucket: the other organization's message is still there, ours too.
    let still = setup
        .bucket()
        .exist(&[theirs.key.clone(), ours.clone()])
        .await
        .unwrap();
    assert_eq!(still, vec![true, true]);
}

#[tokio::test]
async fn deletes_remove_objects_answer_per_key_and_are_recorded_with_their_actor() {
    let setup = Setup::start().await;
    let admin = setup.app.add_member(&setup.org, "ops-admin", "admin").await;
    let mut stored = Vec::new();
    for n in 0..5 {
        stored.push(setup.put(&setup.env, MessageStatus::Success, 0, n).await);
    }
    setup.wait_indexed(5).await;
    let events_before = setup.app.event_count().await;

    // Over the limit, no keys, or keys twice: refused, nothing deleted.
    let bulk_path = format!("/api/processed-queue?organizationId={}", setup.org);
    let too_many: Vec<String> = (0..1_001).map(|_| stored[0].clone()).collect();
    for body in [
        json!({ "keys": too_many }),
        json!({ "keys": [] }),
        json!({}),
    ] {
        let (status, answer) = send(setup.app.admin(Method::DELETE, &bulk_path).json(&body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["details"].as_str().unwrap().starts_with("keys"),
            "{answer}"
        );
    }
    let (status, _) = send(
        setup
            .app
            .admin(Method::DELETE, &format!("{bulk_path}&keys={}", stored[0]))
            .json(&json!({ "keys": [stored[0]] })),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(setup.app.event_count().await, events_before);

    // One key.
    let path = format!(
        "/api/processed-queue/{}?organizationId={}",
        stored[0], setup.org
    );
    let response = setup
        .app
        .as_user("ops-admin", Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _) = send(
        setup
            .app
            .admin(Method::GET, &path)
            .header("x-consistency-token", &token),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(setup.app.admin(Method::DELETE, &path)).await;
    assert_eq!(status, 404, "deleted already");

    // Several, with a missing and a foreign key among them; answered per key, replayed by its key.
    let (org, env) = setup.ids();
    let missing = MessageKey::format(
        org,
        env,
        MessageStatus::Fail,
        Utc::now().date_naive(),
        "nope",
    );
    let foreign = format!("{}/{env}/success/2026/01/01/x.json", Uuid::now_v7());
    let bulk = format!(
        "/api/processed-queue?organizationId={}&keys={},{},{missing},{foreign},{}",
        setup.org, stored[1], stored[2], stored[1]
    );
    let request = || {
        setup
            .app
            .as_user("ops-admin", Method::DELETE, &bulk)
            .header("idempotency-key", "bulk-1")
    };
    let response = request().send().await.unwrap();
    assert_eq!(response.status(), 200);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let deleted: HashSet<&str> = body["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        HashSet::from([stored[1].as_str(), stored[2].as_str()])
    );
    let errors: HashSet<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(errors, HashSet::from([missing.as_str(), foreign.as_str()]));
    let (status, replayed) = send(request()).await;
    assert_eq!(
        (status, &replayed),
        (200, &body),
        "the same key answers the same"
    );
    assert_eq!(
        setup.bucket().exist(&stored).await.unwrap(),
        vec![false, false, false, true, true]
    );
    // Read-your-writes: the index has followed by the token.
    let (status, list) = send(
        setup
            .app
            .admin(
                Method::GET,
                &format!("/api/processed-queue?organizationId={}", setup.org),
            )
            .header("x-consistency-token", &token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["pagination"]["total"], 2);
    assert_eq!(setup.counts("").await["total"], 2);

    // Three deletions, each in the audit trail with who made it.
    assert_eq!(setup.app.event_count().await, events_before + 3);
    let (status, audit) = setup
        .get(&format!(
            "/api/audit-events?organizationId={}&resourceType=processed_message",
            setup.org
        ))
        .await;
    assert_eq!(status, 200, "{audit}");
    let rows = audit["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["type"], "processed_message.deleted");
        assert_eq!(row["actor"]["id"], admin.as_str());
        let key = row["changes"]["key"]["to"].as_str().unwrap();
        assert!(stored[..3].contains(&key.to_owned()), "{row}");
        assert_eq!(
            row["resourceId"],
            MessageKey::parse(key).unwrap().id().to_string()
        );
    }
}

#[tokio::test]
async fn objects_added_or_removed_behind_the_indexers_back_are_reconciled() {
    let setup = Setup::start().await;
    for n in 0..3 {
        setup.put(&setup.env, MessageStatus::Success, 0, n).await;
    }
    setup.wait_indexed(3).await;
    // Filed under an earlier day than the prefix's last indexed key: after the cursor no listing
    // finds it; the reconciliation does.
    let late = setup.put(&setup.env, MessageStatus::Success, 20, 10).await;
    let removed = setup.list_all("", 10).await[0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    setup
        .bucket()
        .delete(std::slice::from_ref(&removed))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = keys(&setup.list_all("", 10).await);
        if listed.contains(&late) && !listed.contains(&removed) {
            assert_eq!(listed.len(), 3);
            break;
        }
        assert!(Instant::now() < deadline, "not reconciled: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(setup.counts("").await["total"], 3);
}

/// The platform's alert about the organization's failed processed messages, once it counts `count`.
async fn failure_alert(setup: &Setup, count: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) = setup
            .get("/api/v1/admin/notifications?kind=message&limit=100")
            .await;
        assert_eq!(status, 200, "{page}");
        let alert = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["subject"] == "Processed messages failing"
                    && a["organizationId"] == setup.org.as_str()
            })
            .cloned();
        if let Some(alert) = alert.filter(|a| a["occurrences"] == count) {
            return alert;
        }
        assert!(
            Instant::now() < deadline,
            "no alert counting {count}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn failed_messages_raise_one_alert_with_their_count_once_however_they_are_found() {
    let setup = Setup::start().await;
    let mut failed = Vec::new();
    for n in 0..3 {
        failed.push(setup.put(&setup.env, MessageStatus::Fail, 0, n).await);
    }
    setup.put(&setup.env, MessageStatus::Success, 0, 10).await;
    setup.wait_indexed(4).await;
    let alert = failure_alert(&setup, 3).await;
    assert_eq!(alert["kind"], "message");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["source"]["environmentId"], setup.env.as_str());
    let named: HashSet<String> = alert["source"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, failed.iter().cloned().collect());
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .starts_with("3 failed messages since"),
        "{alert}"
    );
    let recorded = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE event_type = 'processed_failures.found'",
        )
        .fetch_one(&setup.app.db.pool)
        .await
        .unwrap()
    };
    assert_eq!(recorded().await, 1);

    // The indexer killed after recording a page and before indexing it records the page again when
    // it lists it again: the second record is the first.
    let (organization, environment) = setup.ids();
    let later: Vec<MessageKey> = (30..32)
        .map(|n| {
            let generated = message(
                organization,
                environment,
                MessageStatus::Fail,
                Utc::now(),
                n,
            );
            MessageKey::parse(&generated.key).unwrap()
        })
        .collect();
    let config = IndexerConfig::default();
    let indexer = Indexer {
        pool: &setup.app.db.pool,
        bucket: setup.bucket(),
        config: &config,
    };
    let page: Vec<&MessageKey> = later.iter().collect();
    indexer.record_failures(&page).await.unwrap();
    indexer.record_failures(&page).await.unwrap();
    assert_eq!(recorded().await, 2, "the page was recorded twice");
    failure_alert(&setup, 5).await;

    // A failed message filed behind the indexer's back (before its cursor) is found by the
    // reconciliation, and counts too.
    setup.put(&setup.env, MessageStatus::Fail, 20, 40).await;
    failure_alert(&setup, 6).await;
    assert_eq!(recorded().await, 3);
}

#[tokio::test]
async fn an_operators_reconciliation_job_is_run_by_the_indexer() {
    let setup = Setup::start().await;
    for n in 0..2 {
        setup.put(&setup.env, MessageStatus::Success, 0, n).await;
    }
    setup.wait_indexed(2).await;
    let (status, job) = setup
        .app
        .post(
            "/api/v1/admin/jobs",
            serde_json::json!({"kind": "reconcile"}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/api/v1/admin/jobs/{}", job["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (_, job) = setup.get(&path).await;
        if job["state"] == "succeeded" {
            break job;
        }
        assert!(
            job["state"] == "pending" || job["state"] == "running",
            "{job}"
        );
        assert!(Instant::now() < deadline, "not run: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        done["runner"]
            .as_str()
            .unwrap()
            .starts_with("projector indexer"),
        "{done}"
    );
    assert!(
        done["result"]["added"].is_u64() && done["result"]["removed"].is_u64(),
        "{done}"
    );
}

#[tokio::test]
async fn the_indexer_killed_mid_pass_loses_nothing_and_counts_nothing_twice() {
    let mut setup = Setup::start().await;
    // The environment is projected; then the indexer runs only here, with no reconciliation to mend
    // what a kill might break, and pages of 100 so that a pass has many places to be killed at.
    let (status, _) = setup.get(&format!("/api/environments/{}", setup.env)).await;
    assert_eq!(status, 200);
    setup.app.stop_projector();
    let (org, env) = setup.ids();
    let written = produce(setup.bucket(), org, env, 1_500, 3, 0)
        .await
        .unwrap();
    let pool = setup.app.db.pool.clone();
    ensure_checkpoint(&mut pool.acquire().await.unwrap(), indexer::NAME)
        .await
        .unwrap();
    let config = IndexerConfig {
        page_size: 100,
        ..IndexerConfig::default()
    };
    let indexed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM read_models.processed_messages")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // Killed again and again at moments that move through the pages, until a pass finishes.
    let mut kills = 0;
    for delay_ms in (7..).step_by(13) {
        let (pool, bucket, config) = (pool.clone(), setup.bucket().clone(), config.clone());
        let pass = tokio::spawn(async move {
            let indexer = Indexer {
                pool: &pool,
                bucket: &bucket,
                config: &config,
            };
            indexer.discover().await.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if pass.is_finished() {
            pass.await.unwrap();
            break;
        }
        pass.abort();
        let _ = pass.await;
        kills += 1;
    }
    assert!(kills >= 5, "killed only {kills} times");
    assert!(indexed().await > 0);
    let indexer = Indexer {
        pool: &pool,
        bucket: setup.bucket(),
        config: &config,
    };
    indexer.discover().await.unwrap();
    let keys: HashSet<String> =
        sqlx::query_scalar("SELECT key FROM read_models.processed_messages")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        keys,
        written.into_iter().collect(),
        "every object indexed once"
    );
    let counted: i64 = sqlx::query_scalar(
        "SELECT sum(messages)::bigint FROM read_models.processed_message_counts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counted, 1_500, "counted once each");
}

#[tokio::test]
async fn with_the_bucket_down_lists_and_counts_answer_and_reads_and_deletes_answer_503() {
    let mut setup = Setup::start().await;
    let key = setup.put(&setup.env, MessageStatus::Ignore, 0, 1).await;
    setup.wait_indexed(1).await;
    setup.s3.stop();
    let events = setup.app.event_count().await;

    assert_eq!(setup.list_all("", 10).await.len(), 1);
    assert_eq!(setup.counts("").await["ignore"], 1);
    let path = format!("/api/processed-queue/{key}?organizationId={}", setup.org);
    let (status, body) = setup.get(&path).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].is_string() && body["details"].is_string(),
        "{body}"
    );
    let (status, body) = setup.app.delete(&path).await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = setup
        .app
        .delete(&format!(
            "/api/processed-queue?organizationId={}&keys={key}",
            setup.org
        ))
        .await;
    assert_eq!(status, 503);
    assert_eq!(
        setup.app.event_count().await,
        events,
        "nothing was recorded"
    );
}

#[tokio::test]
async fn every_member_reads_admins_delete_and_other_tenants_see_nothing() {
    let setup = Setup::start().await;
    for (sub, role) in [("a", "admin"), ("u", "user"), ("g", "guest")] {
        setup.app.add_member(&setup.org, sub, role).await;
    }
    let other = setup.app.create_organization("Other").await;
    setup.app.add_member(&other, "outsider", "admin").await;
    let mut stored = Vec::new();
    for n in 0..4 {
        stored.push(setup.put(&setup.env, MessageStatus::Success, 0, n).await);
    }
    setup.wait_indexed(4).await;
    let org = &setup.org;
    let reads = [
        format!("/api/processed-queue?organizationId={org}"),
        format!("/api/processed-queue/counts?organizationId={org}"),
        format!("/api/processed-queue/{}?organizationId={org}", stored[0]),
    ];
    for (sub, expected) in [("a", 200), ("u", 200), ("g", 200), ("outsider", 404)] {
        for read in &reads {
            let (status, body) = send(setup.app.as_user(sub, Method::GET, read)).await;
            assert_eq!(status, expected, "{sub} {read}: {body}");
        }
    }
    let delete = |n: usize| format!("/api/processed-queue/{}?organizationId={org}", stored[n]);
    for (sub, expected) in [("u", 403), ("g", 403), ("outsider", 404)] {
        let (status, body) = send(setup.app.as_user(sub, Method::DELETE, &delete(1))).await;
        assert_eq!(status, expected, "{sub}: {body}");
        let (status, _) = send(setup.app.as_user(
            sub,
            Method::DELETE,
            &format!(
                "/api/processed-queue?organizationId={org}&keys={}",
                stored[1]
            ),
        ))
        .await;
        assert_eq!(status, expected, "{sub} bulk");
    }
    assert_eq!(setup.bucket().exist(&stored).await.unwrap(), vec![true; 4]);
    let (status, _) = send(setup.app.as_user("a", Method::DELETE, &delete(1))).await;
    assert_eq!(status, 200);
    let (status, _) = setup.app.delete(&delete(2)).await;
    assert_eq!(status, 200, "System deletes anywhere");
}

#[tokio::test]
async fn counts_over_any_time_range_equal_the_messages_stored_in_it() {
    let mut setup = Setup::start().await;
    let org = setup.app.create_organization("Counted").await;
    // Indexed as the indexer indexes a listing, at times spread over five days, with the indexer
    // stopped once it has caught up (it would find these objects missing from the bucket).
    setup.counts("").await;
    setup.app.stop_projector();
    let start = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - Days::new(5);
    let environments = [Uuid::now_v7(), Uuid::now_v7()];
    let listed: Vec<(MessageKey, processed_queue::bucket::Listed)> = (0..600u64)
        .map(|n| {
            let at = start + chrono::Duration::seconds(((n * 7_919) % (5 * 86_400)) as i64);
            let generated = message(
                org.parse().unwrap(),
                environments[(n % 2) as usize],
                MessageStatus::ALL[(n % 3) as usize],
                at,
                n,
            );
            let key = MessageKey::parse(&generated.key).unwrap();
            let listed = processed_queue::bucket::Listed {
                key: generated.key,
                last_modified: at,
                size: 100,
            };
            (key, listed)
        })
        .collect();
    processed_queue::index::insert(&setup.app.db.pool, &listed)
        .await
        .unwrap();
    let stored_in = |from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>, env: Option<Uuid>| {
        listed
            .iter()
            .filter(|(key, l)| {
                l.last_modified >= from
                    && l.last_modified < to
                    && env.is_none_or(|e| key.environment_id == e)
            })
            .count() as i64
    };
    let mut rng = 17u64;
    let mut next = |below: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % below
    };
    for round in 0..30 {
        // Ends on whole days, whole hours and anywhere, a range inside an hour, an empty one.
        let mut end = |_: u64| {
            let seconds = match next(3) {
                0 => next(6) * 86_400,
                1 => next(6 * 24) * 3_600,
                _ => next(6 * 86_400),
            };
            start + chrono::Duration::seconds(seconds as i64)
        };
        let (a, b) = (end(0), end(1));
        let (from, to) = if a <= b { (a, b) } else { (b, a) };
        let env = (round % 3 == 0).then_some(environments[0]);
        let mut query = format!(
            "&from={}&to={}",
            urlencode(&from.to_rfc3339()),
            urlencode(&to.to_rfc3339())
        );
        if let Some(env) = env {
            query.push_str(&format!("&environmentId={env}"));
        }
        let (status, counts) = setup
            .get(&format!(
                "/api/processed-queue/counts?organizationId={org}{query}"
            ))
            .await;
        assert_eq!(status, 200, "{counts}");
        assert_eq!(
            counts["total"],
            stored_in(from, to, env),
            "{from} to {to} {env:?}"
        );
        let (_, page) = setup
            .get(&format!("/api/processed-queue?organizationId={org}{query}"))
            .await;
        assert_eq!(page["pagination"]["total"], counts["total"]);
    }
}

#[tokio::test]
async fn a_recorded_deletion_whose_object_was_not_deleted_is_carried_out_by_the_indexer() {
    let setup = Setup::start().await;
    let key = setup.put(&setup.env, MessageStatus::Fail, 0, 1).await;
    setup.wait_indexed(1).await;
    // As if command-api stopped between committing the deletion and deleting the object.
    let org: Uuid = setup.org.parse().unwrap();
    let deleted = ProcessedQueueEvent::deleted(&MessageKey::parse(&key).unwrap());
    let event = domain::NewEvent::new(
        &deleted,
        tests::metadata(&setup.app.admin_id, Some(org)),
        Utc::now(),
    );
    commands::testing::append(
        &setup.app.db.pool,
        &ProcessedQueue::stream_id(org),
        vec![event],
    )
    .await
    .unwrap();
    // A read after the commit waits for the indexer, which deletes the object before the row.
    assert_eq!(setup.counts("").await["total"], 0);
    assert_eq!(
        setup
            .bucket()
            .exist(std::slice::from_ref(&key))
            .await
            .unwrap(),
        vec![false]
    );
}
