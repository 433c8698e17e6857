//! The benchmark: the system against raw PostgreSQL on the same machine, in the same run.
//!
//! Run with `cargo run --release -p tests --bin bench` (PostgreSQL as for the tests; `TEST_DATABASE_URL`
//! picks the server). It prints, each with its raw baseline and the ratio between them:
//! (a) raw single-row appends from 32 connections, (b) the write path (`write_path`): creates from 32
//! HTTP clients against a plain CRUD service and cqrs-es doing the same create, with CPU per request,
//! single-command latency, and reads and projection lag under the write load, (c) `projector rebuild` of the tenants projection against a raw bulk insert of as many
//! rows, (d) list-page latency with 1,000,000 environments in one organization, and (e) the same for a
//! catalog list (prompts), with a small organization's list beside the large one, (f) the Kafka
//! publisher draining the log (the 200,000 events of (c) and those before) against a raw producer
//! sending the same messages to the same broker, and (g) latency from an API write to a consumer's
//! receipt of its event at a steady 1,000 writes/s. (f) and (g) start a private `tansu` broker, as
//! the tests do. (h) is the audit trail over the events of (c): page latency of one organization's
//! rows, and the rate of an NDJSON export of all of them. (i) is what reading a resource's history
//! costs as it grows: two prompt templates, with 10 and with 10,000 versions of a 100 KB text each
//! (written straight into the log, then projected by the running projector), the p50/p99 of the first
//! page of each one's `/versions` and of its audit trail, the ratio of their p99s (10,000 to 10), and
//! the resident memory of the process, which serves query-api, before and after. (j) is prompt-template
//! executions from 32 clients against the fake model provider (answering after `--provider-latency-ms`),
//! against the same requests sent straight to the fake provider: throughput ratio and the latency the
//! platform adds at p50 and p99. (k) is the processed queue against a private moto S3 server: the
//! indexer's discovery of `--queue-objects` objects against a raw ListObjectsV2 walk of the same
//! prefixes, its reading of their bodies against as many raw GetObject calls at the same concurrency,
//! and list and counts latency with `--list-rows` messages indexed in one organization. (l) is the
//! operator surface's triage queue (`feedback`): capture with classification against the same
//! requests without it, and list latency with `--list-rows` submissions. (m) is usage reports over
//! `--usage-executions` executions' sums, each against the same aggregate sent straight to PostgreSQL.
//! (n) is a usage export of `--export-executions` executions against a raw `COPY` of the same records.
//! (o) is MCP tool calls of a list tool against the equivalent REST reads (`mcp`).
//!
//! `--only <letters>` runs the sections named (`--only i`), with those they build on: (b) is compared
//! with (a), (g) uses (f)'s publisher, and (h) reads (c)'s events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use contracts::published::{topic, Message};
use contracts::read_models::{catalog_count, catalog_organization_count};
use domain::processed_queue::{prefix, MessageStatus};
use domain::LogPosition;
use event_log::{log_head, read_log};
use futures::StreamExt;
use projector::indexer::{self, Indexer, IndexerConfig};
use projector::projection::ensure_checkpoint;
use projector::publisher::{self, PublisherConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tests::kafka::{publisher_checkpoint, Broker};
use tests::processed_messages::produce;
use tests::s3::S3Server;
use tests::TestApp;
use uuid::Uuid;

mod export;
mod feedback;
mod mcp;
mod usage;
mod write_path;

#[derive(Parser)]
struct Args {
    /// Concurrent connections and HTTP clients for (a) and (b).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long (a) and (b) each run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Renames of one environment by one client in (b).
    #[arg(long, default_value_t = 2_000)]
    single_requests: usize,
    /// (b) runs only the project's creates (with its projector), once: for attaching a profiler.
    #[arg(long)]
    profile_writes: bool,
    /// Events replayed by the rebuild in (c).
    #[arg(long, default_value_t = 200_000)]
    rebuild_events: usize,
    /// Environments in the organization listed in (d).
    #[arg(long, default_value_t = 1_000_000)]
    list_rows: usize,
    /// List requests measured in (d).
    #[arg(long, default_value_t = 4_000)]
    list_requests: usize,
    /// Writes per second in (g).
    #[arg(long, default_value_t = 1_000)]
    kafka_write_rate: u64,
    /// Versions of the short-history template in (i).
    #[arg(long, default_value_t = 10)]
    history_short: usize,
    /// Versions of the long-history template in (i).
    #[arg(long, default_value_t = 10_000)]
    history_long: usize,
    /// Bytes of each version's text in (i).
    #[arg(long, default_value_t = 100_000)]
    history_text_bytes: usize,
    /// Requests measured per page and template in (i).
    #[arg(long, default_value_t = 1_000)]
    history_requests: usize,
    /// How long the fake model provider takes to answer in (j), in milliseconds.
    #[arg(long, default_value_t = 100)]
    provider_latency_ms: u64,
    /// Objects written into the bucket and indexed in (k).
    #[arg(long, default_value_t = 10_000)]
    queue_objects: usize,
    /// Executions whose sums (m) reports over.
    #[arg(long, default_value_t = 10_000_000)]
    usage_executions: i64,
    /// Executions a usage export holds in (n).
    #[arg(long, default_value_t = 1_000_000)]
    export_executions: i64,
    /// Only these sections (letters, e.g. `i` or `dei`), with those they build on.
    #[arg(long)]
    only: Option<String>,
}

impl Args {
    /// Whether section `section` runs.
    fn runs(&self, section: char) -> bool {
        let Some(only) = &self.only else {
            return true;
        };
        let needed_by = match section {
            'a' => "b",
            'c' => "h",
            'f' => "g",
            _ => "",
        };
        only.contains(section) || needed_by.chars().any(|s| only.contains(s))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command_line: Vec<String> = std::env::args().collect();
    println!(
        "command: cargo run --release -p tests --bin bench -- {}",
        command_line[1..].join(" ")
    );
    let mut app = TestApp::spawn_with_pool_size(args.clients as u32 + 16).await;
    let duration = Duration::from_secs(args.seconds);

    let mut raw = None;
    if args.runs('a') {
        let measured = raw_appends(&app.db.pool, args.clients, duration).await?;
        println!(
            "(a) raw single-row appends, {} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            args.clients, measured.rate, measured.p50, measured.p99
        );
        raw = Some(measured);
    }

    if let Some(raw) = raw.as_ref().filter(|_| args.runs('b')) {
        if args.profile_writes {
            write_path::profile(args.clients, duration).await?;
        } else {
            write_path::compare(args.clients, duration, args.single_requests, raw).await?;
        }
    }

    let mut rebuilt_organization = None;
    if args.runs('c') {
        app.stop_projector();
        let (rebuild_rate, bulk_rate, organization) =
            rebuild_against_bulk_insert(&app.db.pool, args.rebuild_events).await?;
        println!(
            "(c) rebuild of {} events: {:.0} events/s; raw bulk insert of as many rows: {:.0} rows/s; ratio {:.2} (target >= 0.60)",
            args.rebuild_events,
            rebuild_rate,
            bulk_rate,
            rebuild_rate / bulk_rate
        );
        // The other projections catch up on (c)'s events now, untimed, rather than during (d) to (h).
        for projection in projector::projections() {
            if projection.name() != contracts::read_models::TENANTS {
                projector::rebuild::rebuild(&app.db.pool, projection.as_ref(), |_| {}).await?;
            }
        }
        app.start_projector();
        rebuilt_organization = Some(organization);
    }

    if args.runs('d') {
        let list = list_latency(&app, args.list_rows, args.list_requests).await?;
        println!(
            "(d) GET /api/environments pages 1-100 of {} rows, 8 clients: p50 {:.2} ms, p99 {:.2} ms{} (target p99 < 10 ms)",
            args.list_rows, list.p50, list.p99, list.cpu_text()
        );
    }

    if args.runs('e') {
        let (big, small) = catalog_list_latency(&app, args.list_rows, args.list_requests).await?;
        println!(
            "(e) GET /api/prompts pages 1-100 of {} rows in one organization, 8 clients: p50 {:.2} ms, p99 {:.2} ms{}; \
             of an organization with 50 rows beside them: p50 {:.2} ms, p99 {:.2} ms{} (target p99 < 10 ms)",
            args.list_rows, big.p50, big.p99, big.cpu_text(), small.p50, small.p99, small.cpu_text()
        );
    }

    if args.runs('f') {
        let broker = Broker::start().await;
        let prefix = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let (events, publisher_rate, raw_rate, publisher) =
            publisher_drain(&app, &broker, &prefix).await?;
        println!(
            "(f) Kafka publisher draining a backlog of {events} events: {publisher_rate:.0} events/s; raw producer, same messages and broker: {raw_rate:.0} messages/s; ratio {:.2} (target >= 20,000 events/s)",
            publisher_rate / raw_rate
        );
        if args.runs('g') {
            let latency =
                write_to_receipt(&app, &broker, &prefix, args.kafka_write_rate, duration).await?;
            println!(
                "(g) POST /api/environments to consumer receipt at {}/s for {} s: p50 {:.2} ms, p99 {:.2} ms, {} not received (target p99 < 100 ms)",
                args.kafka_write_rate, args.seconds, latency.p50, latency.p99, latency.errors
            );
        }
        publisher.abort();
    }

    if let Some(organization) = rebuilt_organization.filter(|_| args.runs('h')) {
        let (pages, rows, export_rate) =
            audit_latency(&app, organization, args.list_requests).await?;
        println!(
            "(h) GET /api/audit-events pages 1-100 of {rows} rows of one organization, 8 clients: p50 {:.2} ms, p99 {:.2} ms; \
             NDJSON export of all {rows}: {export_rate:.0} rows/s",
            pages.p50, pages.p99
        );
    }

    if args.runs('i') {
        history_cost(&app, &args).await?;
    }

    if args.runs('j') {
        let (direct, executions) =
            executions_against_direct(&app, args.clients, duration, args.provider_latency_ms)
                .await?;
        println!(
            "(j) POST /api/prompt-templates/{{id}}/execute, {} clients, provider answering after {} ms: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
             the same requests straight to the provider: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; throughput ratio {:.2} (target >= 0.8), \
             added p50 {:.2} ms, p99 {:.2} ms (target p99 < 10 ms)",
            args.clients,
            args.provider_latency_ms,
            executions.rate,
            executions.p50,
            executions.p99,
            executions.errors,
            direct.rate,
            direct.p50,
            direct.p99,
            executions.rate / direct.rate,
            executions.p50 - direct.p50,
            executions.p99 - direct.p99,
        );
    }
    if args.runs('k') {
        processed_queue(&args).await?;
    }
    if args.runs('l') {
        feedback::run(
            &app,
            args.clients,
            duration,
            args.list_rows,
            args.list_requests,
        )
        .await?;
    }
    if args.runs('m') {
        usage::run(&app, args.usage_executions, args.list_requests).await?;
    }
    if args.runs('n') {
        export::run(&app, args.export_executions).await?;
    }
    if args.runs('o') {
        mcp::run(&app, args.clients, duration).await?;
    }
    Ok(())
}

/// (k): the processed queue, on an app of its own with a bucket on a private moto server. With the
/// indexer stopped, `--queue-objects` messages (spread over 30 days and the three statuses) are
/// written; the environment's three prefixes are walked with ListObjectsV2 (continuation tokens,
/// 1,000 keys a page), then the indexer discovers the same objects and reads their bodies, then as
/// many raw GetObject calls run with the indexer's read concurrency. Then `--list-rows` messages are
/// indexed straight into the tables of another organization (four environments, about 29 days), and
/// pages 1-100 of its list, its counts, a list filtered by status and environment and counts over a
/// range that cuts two days are measured from 8 clients.
async fn processed_queue(args: &Args) -> anyhow::Result<()> {
    let s3 = S3Server::start().await;
    let mut app = TestApp::spawn_with_queue(&s3).await;
    let org = app.create_organization("Queue Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let (status, _) = app.get(&format!("/api/environments/{env}")).await;
    anyhow::ensure!(status == 200, "the environment was not projected");
    app.stop_projector();
    let bucket = app.bucket.clone().context("the app has a bucket")?;
    let (org_id, env_id): (Uuid, Uuid) = (org.parse()?, env.parse()?);

    let started = Instant::now();
    let keys = produce(&bucket, org_id, env_id, args.queue_objects as u64, 30, 0).await?;
    let put_rate = keys.len() as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut walked = 0;
    for status in MessageStatus::ALL {
        let prefix = prefix(org_id, env_id, status);
        let mut token = None;
        loop {
            let page = bucket.list(&prefix, None, token, 1_000).await?;
            walked += page.objects.len();
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
    }
    let walk_rate = walked as f64 / started.elapsed().as_secs_f64();

    let config = IndexerConfig::default();
    let indexer = Indexer {
        pool: &app.db.pool,
        bucket: &bucket,
        config: &config,
    };
    ensure_checkpoint(&mut *app.db.pool.acquire().await?, indexer::NAME).await?;
    indexer.follow_log().await?;
    let started = Instant::now();
    let indexed = indexer.discover().await?;
    let ingest_rate = indexed as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let summarised = indexer.summarise().await?;
    let summary_rate = summarised as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let fetched = futures::stream::iter(&keys)
        .map(|key| bucket.get(key, config.max_body_bytes))
        .buffer_unordered(config.read_concurrency)
        .filter(|got| std::future::ready(matches!(got, Ok(Some(_)))))
        .count()
        .await;
    let get_rate = fetched as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        indexed as usize == walked && walked == keys.len() && fetched == keys.len(),
        "indexed {indexed}, walked {walked}, fetched {fetched} of {} objects",
        keys.len()
    );
    println!(
        "(k) processed queue, {} objects written at {put_rate:.0}/s: indexer discovery {ingest_rate:.0} keys/s; \
         raw ListObjectsV2 walk {walk_rate:.0} keys/s; ratio {:.2} (target >= 0.6); \
         bodies read by the indexer {summary_rate:.0}/s; raw GetObject, same concurrency, {get_rate:.0}/s; ratio {:.2}",
        keys.len(),
        ingest_rate / walk_rate,
        summary_rate / get_rate
    );

    let busy = app.create_organization("Busy Queue Corp").await;
    let environments: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO read_models.processed_messages \
           (key, id, organization_id, environment_id, status, message_id, stored_at, size, summary, \
            workflow_id, received_at, processed_at) \
         SELECT $1 || '/' || m.env || '/' || m.status || '/' || to_char(m.at AT TIME ZONE 'UTC', 'YYYY/MM/DD') \
                  || '/' || m.message_id || '.json', \
                gen_random_uuid(), $1, m.env, m.status, m.message_id, m.at, 900, 'parsed', \
                'wf-' || (m.g % 50), m.at - interval '300 ms', m.at \
         FROM (SELECT g, ($2::uuid[])[1 + g % 4] AS env, \
                      (ARRAY['success', 'success', 'success', 'fail', 'ignore'])[1 + g % 5] AS status, \
                      'm' || lpad(g::text, 8, '0') AS message_id, \
                      now() - g * interval '2500 ms' AS at \
               FROM generate_series(1, $3) g) m",
    )
    .bind(busy.parse::<Uuid>()?)
    .bind(&environments)
    .bind(args.list_rows as i64)
    .execute(&app.db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.processed_message_counts \
         SELECT organization_id, environment_id, status, (stored_at AT TIME ZONE 'UTC')::date, count(*) \
         FROM read_models.processed_messages WHERE organization_id = $1 GROUP BY 1, 2, 3, 4",
    )
    .bind(busy.parse::<Uuid>()?)
    .execute(&app.db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.processed_message_hourly_counts \
         SELECT organization_id, environment_id, status, date_trunc('hour', stored_at, 'UTC'), count(*) \
         FROM read_models.processed_messages WHERE organization_id = $1 GROUP BY 1, 2, 3, 4",
    )
    .bind(busy.parse::<Uuid>()?)
    .execute(&app.db.pool)
    .await?;
    // As autovacuum leaves a table that is read more than written: statistics and visibility map set.
    sqlx::query("VACUUM ANALYZE read_models.processed_messages")
        .execute(&app.db.pool)
        .await?;
    // Reads wait for the indexer's checkpoint: it reaches the log's head, and nothing is written after.
    indexer.follow_log().await?;

    let base = format!("{}/api/processed-queue", app.query_url);
    let now = chrono::Utc::now();
    let range = format!(
        "&from={}&to={}",
        (now - chrono::Duration::hours(10 * 24 + 3)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now - chrono::Duration::hours(2 * 24 + 5)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let list = page_latency(
        &app,
        format!("{base}?organizationId={busy}"),
        args.list_requests,
    )
    .await?;
    let counts = page_latency(
        &app,
        format!("{base}/counts?organizationId={busy}"),
        args.list_requests,
    )
    .await?;
    let filtered = page_latency(
        &app,
        format!(
            "{base}?organizationId={busy}&status=fail&environmentId={}",
            environments[0]
        ),
        args.list_requests,
    )
    .await?;
    let ranged = page_latency(
        &app,
        format!("{base}/counts?organizationId={busy}{range}"),
        args.list_requests,
    )
    .await?;
    println!(
        "(k) GET /api/processed-queue pages 1-100 of {} messages in one organization, 8 clients: p50 {:.2} ms, p99 {:.2} ms; \
         counts p50 {:.2} ms, p99 {:.2} ms; by status and environment p50 {:.2} ms, p99 {:.2} ms; \
         counts over a range cutting two days p50 {:.2} ms, p99 {:.2} ms; {} errors (target p99 < 10 ms)",
        args.list_rows,
        list.p50,
        list.p99,
        counts.p50,
        counts.p99,
        filtered.p50,
        filtered.p99,
        ranged.p50,
        ranged.p99,
        list.errors + counts.errors + filtered.errors + ranged.errors
    );
    Ok(())
}

/// (j): each client has an organization of its own (the per-organization cap stays out of the way),
/// with a model on the fake provider and a template; first the same Chat Completions requests are sent
/// straight to the provider, then through `POST /api/prompt-templates/{id}/execute`. Returns
/// `(direct, executions)`.
async fn executions_against_direct(
    app: &TestApp,
    clients: usize,
    duration: Duration,
    latency_ms: u64,
) -> anyhow::Result<(Measured, Measured)> {
    let provider = tests::fake_provider::FakeProvider::spawn().await?;
    let url = provider.url(&format!("slow-{latency_ms}"), "openai");
    let mut templates = Vec::new();
    for client in 0..clients {
        let org = app
            .create_organization(&format!("Bench executions {client}"))
            .await;
        let env = app.create_environment(&org, "Production").await;
        let (_, model) = app
            .post(
                "/api/models",
                json!({"organizationId": org, "name": "Fake", "modelUrl": url, "token": "sk-bench",
                       "inputPricePerMillionTokens": 1, "outputPricePerMillionTokens": 2, "currency": "USD"}),
            )
            .await;
        let (_, template) = app
            .post(
                "/api/prompt-templates",
                json!({"organizationId": org, "environmentId": env, "modelId": model["id"], "name": "Bench",
                       "promptText": "Summarise the order {{order}} for {{customer}} in one sentence."}),
            )
            .await;
        templates.push(
            template["id"]
                .as_str()
                .context("creating a benchmark template")?
                .to_owned(),
        );
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let prompt = |client: usize, n: usize| {
        format!("Summarise the order {n} for customer {client} in one sentence.")
    };
    let direct = {
        let (http, url) = (http.clone(), url.clone());
        run_for(clients, duration, move |client, n| {
            let request = http.post(&url).bearer_auth("sk-bench").json(&json!({
                "model": "Fake",
                "messages": [{"role": "user", "content": prompt(client, n)}],
            }));
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await
    };
    let templates = Arc::new(templates);
    let command_url = app.command_url.clone();
    let token = app.admin_token.clone();
    let executions = run_for(clients, duration, move |client, n| {
        let request = http
            .post(format!(
                "{command_url}/api/prompt-templates/{}/execute",
                templates[client]
            ))
            .bearer_auth(&token)
            .json(&json!({"variables": {"order": n.to_string(), "customer": format!("customer {client}")}}));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    Ok((direct, executions))
}

struct Measured {
    rate: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    /// CPU milliseconds per request of this process and of PostgreSQL, where measured.
    cpu: Option<(f64, f64)>,
}

impl Measured {
    /// The CPU per request, for printing beside the latencies.
    fn cpu_text(&self) -> String {
        self.cpu.map_or(String::new(), |(own, postgres)| {
            format!(", CPU ms/request {own:.2} (bench process), {postgres:.2} (PostgreSQL)")
        })
    }
}

fn measure(mut latencies: Vec<Duration>, elapsed: Duration, errors: usize) -> Measured {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
    };
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Measured {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: ms(at(0.50)),
        p99: ms(at(0.99)),
        errors,
        cpu: None,
    }
}

/// Runs `clients` loops of `op` until `duration` has passed, timing each call.
async fn run_for<F, Fut>(clients: usize, duration: Duration, op: F) -> Measured
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = op.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    if op(client, n).await {
                        latencies.push(t.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a benchmark client panicked"));
    }
    measure(latencies, started.elapsed(), errors.load(Ordering::Relaxed))
}

async fn raw_appends(
    pool: &PgPool,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    sqlx::query("CREATE TABLE raw_appends (LIKE events INCLUDING ALL)")
        .execute(pool)
        .await?;
    let data = json!({ "id": Uuid::now_v7(), "organizationId": Uuid::now_v7(), "name": "Production environment", "description": null });
    let metadata = json!({ "actor": { "id": "bench", "role": "system" }, "organizationId": Uuid::now_v7(), "requestId": Uuid::now_v7().to_string(),
        "correlationId": Uuid::now_v7().to_string(), "causationId": null, "clientIp": "127.0.0.1", "userAgent": "bench/1.0" });
    let pool = pool.clone();
    Ok(run_for(clients, duration, move |client, n| {
        let (pool, data, metadata) = (pool.clone(), data.clone(), metadata.clone());
        async move {
            // An event-sized row with its 32-byte hash, which the log's trigger computes instead.
            sqlx::query(
                "INSERT INTO raw_appends (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at, hash) \
                 VALUES ($1, 1, $2, 'environment.created', 1, $3, $4, now(), $5)",
            )
            .bind(format!("raw-{client}-{n}"))
            .bind(Uuid::now_v7())
            .bind(data)
            .bind(metadata)
            .bind([*Uuid::new_v4().as_bytes(), *Uuid::new_v4().as_bytes()].concat())
            .execute(&pool)
            .await
            .is_ok()
        }
    })
    .await)
}

/// (c): appends `count` tenant events straight into the log, rebuilds the tenants projection over the
/// whole log, and bulk-inserts as many rows into a table shaped like its read model.
/// Returns the rebuild's and the bulk insert's rates, and the organization the events belong to.
async fn rebuild_against_bulk_insert(
    pool: &PgPool,
    count: usize,
) -> anyhow::Result<(f64, f64, Uuid)> {
    let org = Uuid::now_v7();
    let metadata = json!({ "actor": { "id": "bench", "role": "system" }, "organizationId": org, "requestId": "bench",
        "correlationId": "bench", "causationId": null, "clientIp": null, "userAgent": null });
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
         VALUES ($1, 1, gen_random_uuid(), 'organization.created', 1, $2, $3, now())",
    )
    .bind(format!("organization-{org}"))
    .bind(json!({ "id": org, "name": "Rebuild Corp", "description": null }))
    .bind(&metadata)
    .execute(pool)
    .await?;
    // Nine creates and one rename (of the environment created just before) in every ten events.
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
         SELECT 'environment-' || e.id, CASE WHEN e.rename THEN 2 ELSE 1 END, gen_random_uuid(), \
                CASE WHEN e.rename THEN 'environment.updated' ELSE 'environment.created' END, 1, \
                CASE WHEN e.rename THEN jsonb_build_object('name', 'renamed ' || g) \
                     ELSE jsonb_build_object('id', e.id, 'organizationId', $1::uuid, 'name', 'env ' || g, 'description', NULL) END, \
                $3, now() \
         FROM generate_series(1, $2) g, \
              LATERAL (SELECT g % 10 = 0 AS rename) r, \
              LATERAL (SELECT r.rename, md5('env' || CASE WHEN r.rename THEN g - 1 ELSE g END)::uuid AS id) e",
    )
    .bind(org)
    .bind(count as i64 - 1)
    .bind(&metadata)
    .execute(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;

    let progress = projector::rebuild::rebuild(pool, &projector::tenants::Tenants, |p| {
        println!(
            "    rebuild tenants: {}/{} events, {:.0} events/s",
            p.applied,
            p.total,
            p.events_per_second()
        )
    })
    .await?;
    let rebuild_rate = progress.applied as f64 / progress.elapsed.as_secs_f64();
    anyhow::ensure!(
        progress.applied as i64 == total,
        "the rebuild applied {} of {total} events",
        progress.applied
    );

    sqlx::query("CREATE TABLE bulk_environments (LIKE read_models.environments INCLUDING ALL)")
        .execute(pool)
        .await?;
    let started = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::new_v4()).collect();
        let names: Vec<String> = chunk.iter().map(|n| format!("env {n}")).collect();
        sqlx::query(
            "INSERT INTO bulk_environments (id, organization_id, organization_name, name, description, version, created_at, updated_at) \
             SELECT id, $2, 'Rebuild Corp', name, NULL, 1, now(), now() FROM UNNEST($1::uuid[], $3::text[]) AS r(id, name)",
        )
        .bind(&ids)
        .bind(org)
        .bind(&names)
        .execute(pool)
        .await?;
    }
    let bulk_rate = total as f64 / started.elapsed().as_secs_f64();
    Ok((rebuild_rate, bulk_rate, org))
}

/// Audit-trail page latency over one organization's rows, once the `audit` projection has indexed
/// them, and the rate of an NDJSON export of all of them: `(pages, rows, export rows/s)`.
async fn audit_latency(
    app: &TestApp,
    organization: Uuid,
    requests: usize,
) -> anyhow::Result<(Measured, i64, f64)> {
    caught_up(app, &[contracts::read_models::AUDIT]).await?;
    let pages = page_latency(
        app,
        format!(
            "{}/api/audit-events?organizationId={organization}",
            app.query_url
        ),
        requests,
    )
    .await?;
    let started = Instant::now();
    let export = app
        .http
        .get(format!(
            "{}/api/audit-events?organizationId={organization}",
            app.query_url
        ))
        .bearer_auth(&app.admin_token)
        .header("accept", "application/x-ndjson")
        .send()
        .await?
        .text()
        .await?;
    let rows = export.lines().count() as i64;
    Ok((pages, rows, rows as f64 / started.elapsed().as_secs_f64()))
}

async fn list_latency(app: &TestApp, rows: usize, requests: usize) -> anyhow::Result<Measured> {
    let org = app.create_organization("Listing Corp").await;
    let org_id: Uuid = org.parse()?;
    sqlx::query(
        "INSERT INTO read_models.environments (id, organization_id, organization_name, name, description, version, created_at, updated_at) \
         SELECT gen_random_uuid(), $1, 'Listing Corp', 'env ' || g, NULL, 1, now() - g * interval '1 ms', now() FROM generate_series(1, $2) g",
    )
    .bind(org_id)
    .bind(rows as i64)
    .execute(&app.db.pool)
    .await?;
    sqlx::query("INSERT INTO read_models.tenant_counts (scope, count) VALUES ($1, $2) ON CONFLICT (scope) DO UPDATE SET count = EXCLUDED.count")
        .bind(format!("environments:{org_id}"))
        .bind(rows as i64)
        .execute(&app.db.pool)
        .await?;
    // Vacuumed as well as analyzed, as autovacuum would have left a table that size by the time it is
    // served, and its pages written out: so that neither autovacuum nor the checkpointer runs (and
    // counts in the CPU per request) during the requests.
    for statement in ["VACUUM (ANALYZE) read_models.environments", "CHECKPOINT"] {
        sqlx::raw_sql(statement).execute(&app.db.pool).await?;
    }

    page_latency(
        app,
        format!("{}/api/environments?organizationId={org}", app.query_url),
        requests,
    )
    .await
}

/// Latency of `GET url&page=1..100` from 8 clients, `requests` in all.
async fn page_latency(app: &TestApp, url: String, requests: usize) -> anyhow::Result<Measured> {
    pages_latency(app, url, 100, requests).await
}

/// Latency of `GET url&page=1..pages` from 8 clients, `requests` in all.
async fn pages_latency(
    app: &TestApp,
    url: String,
    pages: usize,
    requests: usize,
) -> anyhow::Result<Measured> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = write_path::cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, next, token, url) = (
                http.clone(),
                next.clone(),
                app.admin_token.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let page = 1 + latencies.len() % pages;
                    let t = Instant::now();
                    let response = http
                        .get(format!("{url}&page={page}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status() == 200) {
                        latencies.push(t.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let cpu_after = write_path::cpu_seconds();
    let errors = requests.saturating_sub(latencies.len());
    let served = latencies.len().max(1) as f64;
    let mut measured = measure(latencies, started.elapsed(), errors);
    measured.cpu = Some((
        (cpu_after.0 - cpu_before.0) * 1e3 / served,
        (cpu_after.1 - cpu_before.1) * 1e3 / served,
    ));
    Ok(measured)
}

/// Catalog list latency: `rows` prompts in one organization, and a small organization listed among them.
async fn catalog_list_latency(
    app: &TestApp,
    rows: usize,
    requests: usize,
) -> anyhow::Result<(Measured, Measured)> {
    let big = app.create_organization("Prompt Factory").await;
    let small = app.create_organization("Prompt Boutique").await;
    for (org, count) in [(&big, rows), (&small, 50)] {
        let org_id: Uuid = org.parse()?;
        sqlx::query(
            "INSERT INTO read_models.catalog (id, kind, organization_id, environment_id, model_id, name, fields, secrets, version, created_at, updated_at) \
             SELECT id, 'prompt', $1, NULL, NULL, 'prompt ' || g, \
                    jsonb_build_object('organizationId', $1, 'modelId', NULL, 'title', 'prompt ' || g, 'content', 'Respond to {{message}}', \
                                       'outputFormat', 'text', 'outputTemplate', NULL), \
                    '[]'::jsonb, 1, now() - g * interval '1 ms', now() \
             FROM (SELECT gen_random_uuid() AS id, g FROM generate_series(1, $2) g) rows",
        )
        .bind(org_id)
        .bind(count as i64)
        .execute(&app.db.pool)
        .await?;
        for scope in [
            catalog_organization_count("prompt", Some(org_id)),
            catalog_count("prompt"),
        ] {
            sqlx::query("INSERT INTO read_models.catalog_counts (scope, count) VALUES ($1, $2) ON CONFLICT (scope) DO UPDATE SET count = catalog_counts.count + EXCLUDED.count")
                .bind(scope)
                .bind(count as i64)
                .execute(&app.db.pool)
                .await?;
        }
    }
    // Vacuumed as well as analyzed, as autovacuum would have left a table that size by the time it is
    // served, and its pages written out: so that neither autovacuum nor the checkpointer runs (and
    // counts in the CPU per request) during the requests.
    for statement in ["VACUUM (ANALYZE) read_models.catalog", "CHECKPOINT"] {
        sqlx::raw_sql(statement).execute(&app.db.pool).await?;
    }
    let big_list = page_latency(
        app,
        format!("{}/api/prompts?organizationId={big}", app.query_url),
        requests,
    )
    .await?;
    let small_list = page_latency(
        app,
        format!("{}/api/prompts?organizationId={small}", app.query_url),
        requests,
    )
    .await?;
    Ok((big_list, small_list))
}

/// (f): a raw producer sends the log's messages (same producer settings, no database) to topics made
/// beforehand and awaits every acknowledgement; then the publisher, from an empty checkpoint, publishes the same log. Returns the
/// event count, both rates, and the publisher, left running (caught up) for (g).
async fn publisher_drain(
    app: &TestApp,
    broker: &Broker,
    prefix: &str,
) -> anyhow::Result<(usize, f64, f64, tokio::task::JoinHandle<()>)> {
    let head = log_head(&app.db.pool).await?;
    let backlog = read_log(&app.db.pool, LogPosition::START, i64::MAX).await?;
    let raw_prefix = format!("raw-{prefix}");
    let messages: Vec<Message> = backlog
        .iter()
        .map(|e| Message::of(e, &raw_prefix))
        .collect();
    publisher::create_topics(&PublisherConfig::new(broker.address(), &raw_prefix)).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in &messages {
        deliveries.push(publisher::send(&producer, message)?);
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    let raw_rate = messages.len() as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let publisher = tokio::spawn(publisher::run(
        app.db.pool.clone(),
        PublisherConfig::new(broker.address(), prefix),
    ));
    while publisher_checkpoint(&app.db.pool).await < head {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let publisher_rate = backlog.len() as f64 / started.elapsed().as_secs_f64();
    Ok((backlog.len(), publisher_rate, raw_rate, publisher))
}

/// (g): `POST /api/environments` at a steady `rate` for `duration`, each timed from the moment its
/// request is sent to the moment a consumer of the environment topic receives the event it caused (the
/// consumer first reads what the topic held before: the broker cannot answer "latest offset" queries). `errors` counts writes whose event did not arrive within 10 s of the last write.
async fn write_to_receipt(
    app: &TestApp,
    broker: &Broker,
    prefix: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let org = app.create_organization("Kafka Corp").await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", format!("bench-{}", Uuid::new_v4().simple()))
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let environments = topic(prefix, "environment");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..publisher::DEFAULT_PARTITIONS {
        partitions.add_partition_offset(&environments, partition, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let receipts: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let receiver = {
        let receipts = receipts.clone();
        tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(message) = stream.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(_) => continue,
                };
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                receipts.lock().unwrap().insert(key, Instant::now());
            }
        })
    };
    let http = reqwest::Client::new();
    let url = format!("{}/api/environments", app.command_url);
    let write = |name: String| {
        let request = http
            .post(&url)
            .bearer_auth(&app.admin_token)
            .json(&json!({ "organizationId": org, "name": name }));
        async move {
            let sent = Instant::now();
            let response = request.send().await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            Some((body["id"].as_str()?.to_owned(), sent))
        }
    };
    // One write first, received before measuring: the consumer has read what the topic held before.
    let (warm_up, _) = write("warm-up".into()).await.context("the warm-up write")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !receipts.lock().unwrap().contains_key(&warm_up) {
        anyhow::ensure!(Instant::now() < deadline, "the warm-up write never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    let started = Instant::now();
    let mut writes = Vec::new();
    for n in 0..rate * duration.as_secs() {
        ticks.tick().await;
        writes.push(tokio::spawn(write(format!("kafka env {n}"))));
    }
    let mut sent = Vec::new();
    for write in writes {
        sent.extend(write.await?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && sent
            .iter()
            .any(|(id, _)| !receipts.lock().unwrap().contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.abort();
    let receipts = receipts.lock().unwrap();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| Some(receipts.get(id)?.duration_since(*at)))
        .collect();
    let missing = sent.len() - latencies.len();
    Ok(measure(latencies, started.elapsed(), missing))
}

/// Waits until each projection named has applied the whole log.
async fn caught_up(app: &TestApp, projections: &[&str]) -> anyhow::Result<()> {
    loop {
        let statuses = event_log::status::statuses(&app.db.pool).await?;
        let behind = statuses
            .iter()
            .any(|s| projections.contains(&s.name.as_str()) && s.behind > 0);
        let started = projections
            .iter()
            .all(|name| statuses.iter().any(|s| s.name == *name));
        if started && !behind {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (i): what reading a resource's history costs as it grows. Two prompt templates, with
/// `--history-short` and `--history-long` versions of a `--history-text-bytes` text each; the first
/// page (10 rows) of each one's versions and of its audit trail, `--history-requests` times each from 8
/// clients, after 50 unmeasured requests. query-api runs in this process, so the process's resident
/// memory is query-api's (with the idle projector's): it is read after the projections have caught up,
/// and after each template's requests.
async fn history_cost(app: &TestApp, args: &Args) -> anyhow::Result<()> {
    let org = app.create_organization("History Corp").await;
    let env = app.create_environment(&org, "Production").await;
    let (status, model) = app
        .post(
            "/api/models",
            json!({ "organizationId": org, "name": "History model", "modelUrl": "https://models.example/v1" }),
        )
        .await;
    anyhow::ensure!(status == 201, "creating the model: {model}");
    let mut first_text = format!(
        "Version 1: {}",
        "0123456789abcdef".repeat(args.history_text_bytes / 16 + 1)
    );
    first_text.truncate(args.history_text_bytes);
    let started = Instant::now();
    let mut templates = Vec::new();
    for versions in [args.history_short, args.history_long] {
        let (status, template) = app
            .post(
                "/api/prompt-templates",
                json!({ "organizationId": org, "environmentId": env, "name": format!("{versions} versions"),
                        "modelId": model["id"], "promptText": first_text }),
            )
            .await;
        anyhow::ensure!(status == 201, "creating a template: {template}");
        let id = template["id"].as_str().context("a template id")?.to_owned();
        append_versions(&app.db.pool, &id, &org, versions, args.history_text_bytes).await?;
        templates.push((versions, id));
    }
    let written = started.elapsed();
    let names: Vec<&str> = projector::projections().iter().map(|p| p.name()).collect();
    caught_up(app, &names).await?;
    // Planner statistics for the rows just projected, as autovacuum would gather them after a bulk
    // load (and as (d) and (e) do after theirs).
    sqlx::raw_sql(
        "ANALYZE read_models.audit_index, read_models.audit_counts, read_models.audit_values, \
                 read_models.catalog, read_models.prompt_template_versions",
    )
    .execute(&app.db.pool)
    .await?;
    println!(
        "    (i) {} and {} versions of {} bytes written to the log in {:.1} s, projected {:.1} s later",
        args.history_short,
        args.history_long,
        args.history_text_bytes,
        written.as_secs_f64(),
        (started.elapsed() - written).as_secs_f64()
    );

    let mut memory = vec![resident_mib()?];
    let mut versions_pages = Vec::new();
    let mut audit_pages = Vec::new();
    for (_, id) in &templates {
        let versions_url = format!("{}/api/prompt-templates/{id}/versions?", app.query_url);
        let audit_url = format!(
            "{}/api/audit-events?resourceType=prompt_template&resourceId={id}",
            app.query_url
        );
        for (url, measured) in [
            (versions_url, &mut versions_pages),
            (audit_url, &mut audit_pages),
        ] {
            pages_latency(app, url.clone(), 1, 50).await?;
            measured.push(pages_latency(app, url, 1, args.history_requests).await?);
        }
        memory.push(resident_mib()?);
    }
    println!(
        "(i) first pages (10 rows) of a prompt template's history, {} versions against {} versions of {} bytes each, 8 clients, {} requests each:",
        args.history_short, args.history_long, args.history_text_bytes, args.history_requests
    );
    for (path, measured) in [
        ("GET /api/prompt-templates/{id}/versions", &versions_pages),
        (
            "GET /api/audit-events?resourceType=prompt_template&resourceId={id}",
            &audit_pages,
        ),
    ] {
        let (short, long) = (&measured[0], &measured[1]);
        println!(
            "    {path}: p50 {:.2} ms, p99 {:.2} ms against p50 {:.2} ms, p99 {:.2} ms, {} errors; p99 ratio {:.2} (target <= 1.5)",
            short.p50,
            short.p99,
            long.p50,
            long.p99,
            short.errors + long.errors,
            long.p99 / short.p99
        );
    }
    println!(
        "    resident memory of the process serving query-api: {:.0} MiB before, {:.0} MiB after the {}-version pages, {:.0} MiB after the {}-version pages",
        memory[0], memory[1], args.history_short, memory[2], args.history_long
    );
    Ok(())
}

/// Appends versions 2 to `versions` of prompt template `id` straight into the log, 1,000 per
/// transaction, each setting a text of `text_bytes` bytes of its own: its version number, then a hex
/// text (which PostgreSQL cannot compress much).
async fn append_versions(
    pool: &PgPool,
    id: &str,
    organization: &str,
    versions: usize,
    text_bytes: usize,
) -> anyhow::Result<()> {
    let stream = format!("prompt_template-{id}");
    let metadata = json!({ "actor": { "id": "bench", "role": "system" }, "organizationId": organization, "requestId": "bench",
        "correlationId": "bench", "causationId": null, "clientIp": null, "userAgent": null });
    let schema_version = domain::upcast::current_version("prompt_template.updated");
    for first in (2..=versions as i64).step_by(1_000) {
        let last = (first + 999).min(versions as i64);
        let mut tx = pool.begin().await?;
        // Rows go in in version order: each event's hash chains to the one before (0007_history.sql).
        sqlx::query(
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at) \
             SELECT $1, g, gen_random_uuid(), 'prompt_template.updated', $4, \
                    jsonb_build_object('promptText', left('Version ' || g || ': ' || t.text, $5)), $6, now() \
             FROM generate_series($2::bigint, $3::bigint) g, \
                  (SELECT string_agg(md5(i::text), '') AS text FROM generate_series(1, $5 / 32 + 1) i) t \
             ORDER BY g",
        )
        .bind(&stream)
        .bind(first)
        .bind(last)
        .bind(schema_version)
        .bind(text_bytes as i32)
        .bind(&metadata)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE streams SET version = $2 WHERE stream_id = $1")
            .bind(&stream)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// This process's resident memory in MiB (`VmRSS` of `/proc/self/status`).
fn resident_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kib / 1024.0)
}
