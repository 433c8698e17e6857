//! (b): the write path against a plain CRUD service and an event-sourcing library doing the same
//! create (`tests::baselines`), in the same run on the same PostgreSQL.
//!
//! - Throughput: `--clients` HTTP clients create environments in one organization for `--seconds`,
//!   each system on a fresh database, in two passes in opposite orders (so that neither the machine's
//!   warm-up nor the growing PostgreSQL caches favour one system). Beside rates and latencies, the CPU
//!   each request cost, read from `/proc`: the benchmark process's (the service, and the load
//!   generator, which does the same work for every system) and PostgreSQL's (every `postgres`
//!   process, with the children it has reaped).
//! - Single-command latency: one client renaming one environment `--single-requests` times, so the
//!   history grows past several snapshots.
//! - Reads under the write load: list and detail p99 from 4 readers while the writers run against the
//!   project with its projector, and the tenants projection's lag behind the log, sampled every 10 ms.
//!
//! The project's services and the load generator share this process, as in the tests; its projector
//! runs on a runtime of its own ([`SeparateProjector`]), as it runs in a process of its own.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use tests::{baselines, TestApp, TestDb};
use uuid::Uuid;

use crate::{measure, run_for, Measured};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Crud,
    CqrsEs,
    /// command-api with the projector running beside it (`false`: command-api alone).
    Project {
        projector: bool,
    },
}

impl System {
    const ALL: [System; 4] = [
        System::Crud,
        System::CqrsEs,
        System::Project { projector: true },
        System::Project { projector: false },
    ];

    fn name(self) -> &'static str {
        match self {
            System::Crud => "plain axum + sqlx CRUD (unique name, FK, no auth)",
            System::CqrsEs => "cqrs-es 0.5 + postgres-es 0.5 (no auth, no names, no read model)",
            System::Project { projector: true } => "this project, command-api + projector",
            System::Project { projector: false } => "this project, command-api alone",
        }
    }
}

/// A running system and what a client needs to write to it.
struct Target {
    base: String,
    token: Option<String>,
    organization: String,
    /// Keeps the system's database (and for the project, its services) alive while the target is.
    _keep: Option<Keep>,
}

#[allow(dead_code)]
enum Keep {
    Db(Box<TestDb>),
    App(Box<TestApp>, Option<SeparateProjector>),
}

/// The projector's workers on a runtime of their own (one worker thread) over a pool of their own, as
/// the projector runs in a process of its own beside command-api: so that its batches do not wait in
/// the queue of the runtime that serves the requests and runs the load.
struct SeparateProjector {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SeparateProjector {
    fn start(app: &mut TestApp) -> SeparateProjector {
        app.stop_projector();
        let options = app.db.connect_options();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the projector");
            runtime.block_on(async move {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .connect_with(options)
                    .await
                    .expect("the projector's pool");
                let workers = projector::spawn_workers(&pool, Default::default());
                let _ = stopped.await;
                for worker in workers {
                    worker.abort();
                }
            });
        });
        SeparateProjector {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for SeparateProjector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Target {
    async fn start(system: System, pool_size: u32) -> anyhow::Result<Target> {
        Ok(match system {
            System::Crud | System::CqrsEs => {
                let db = TestDb::create_empty(pool_size).await?;
                let (router, organization) = match system {
                    System::Crud => baselines::crud::start(db.pool.clone()).await?,
                    _ => (
                        baselines::event_sourcing::start(db.pool.clone()).await?,
                        Uuid::now_v7(),
                    ),
                };
                Target {
                    base: format!("http://{}", tests::serve(router).await),
                    token: None,
                    organization: organization.to_string(),
                    _keep: Some(Keep::Db(Box::new(db))),
                }
            }
            System::Project { projector } => {
                let mut app = TestApp::spawn_with_pool_size(pool_size).await;
                let organization = app.create_organization("Bench Corp").await;
                let separate = if projector {
                    Some(SeparateProjector::start(&mut app))
                } else {
                    app.stop_projector();
                    None
                };
                Target {
                    base: format!("{}/api", app.command_url),
                    token: Some(app.admin_token.clone()),
                    organization,
                    _keep: Some(Keep::App(Box::new(app), separate)),
                }
            }
        })
    }

    fn request(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn create(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<String> {
        let response = self
            .request(http, Method::POST, "/environments")
            .json(&json!({ "organizationId": self.organization, "name": name }))
            .send()
            .await?;
        let status = response.status();
        if status != 201 {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("create answered {status}: {body}");
        }
        let body: serde_json::Value = response.json().await?;
        Ok(body["id"].as_str().unwrap_or_default().to_owned())
    }
}

/// CPU seconds used so far by this process and by PostgreSQL's processes.
pub fn cpu_seconds() -> (f64, f64) {
    // The kernel reports in clock ticks of 1/100 s on Linux.
    const TICKS: f64 = 100.0;
    let fields = |stat: &str| -> Option<(String, Vec<u64>)> {
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let numbers = tail
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        Some((comm, numbers))
    };
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| fields(&s))
        .map_or(0, |(_, n)| n[0] + n[1]);
    let mut postgres = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((comm, n)) = fields(&stat) {
            if comm == "postgres" {
                postgres += n.iter().sum::<u64>();
            }
        }
    }
    (own as f64 / TICKS, postgres as f64 / TICKS)
}

struct Row {
    system: System,
    measured: Measured,
    /// CPU milliseconds per request: this process's, PostgreSQL's.
    cpu: (f64, f64),
}

/// `clients` clients creating environments in `target` for `duration`.
async fn writers(
    target: std::sync::Arc<Target>,
    http: reqwest::Client,
    clients: usize,
    duration: Duration,
) -> Measured {
    run_for(clients, duration, move |client, n| {
        let (target, http) = (target.clone(), http.clone());
        async move {
            target
                .create(&http, &format!("env {client}-{n}"))
                .await
                .is_ok()
        }
    })
    .await
}

/// Creates from `clients` clients for `duration` against a fresh `system`.
async fn creates(system: System, clients: usize, duration: Duration) -> anyhow::Result<Row> {
    let target = std::sync::Arc::new(Target::start(system, clients as u32 + 16).await?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let before = cpu_seconds();
    let measured = writers(target.clone(), http, clients, duration).await;
    let after = cpu_seconds();
    let requests = (measured.rate * duration.as_secs_f64()).max(1.0);
    Ok(Row {
        system,
        cpu: (
            (after.0 - before.0) * 1e3 / requests,
            (after.1 - before.1) * 1e3 / requests,
        ),
        measured,
    })
}

/// One client renaming one environment `requests` times.
async fn renames(system: System, requests: usize) -> anyhow::Result<Measured> {
    let target = Target::start(system, 8).await?;
    let http = reqwest::Client::new();
    let id = target.create(&http, "renamed").await?;
    let mut latencies = Vec::with_capacity(requests);
    let started = Instant::now();
    let mut errors = 0;
    for n in 0..requests {
        let t = Instant::now();
        let response = target
            .request(&http, Method::PUT, &format!("/environments/{id}"))
            .json(&json!({ "name": format!("renamed {n}") }))
            .send()
            .await?;
        if response.status() == 200 {
            latencies.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    Ok(measure(latencies, started.elapsed(), errors))
}

/// The project's creates alone, printed as a row of the table.
pub async fn profile(clients: usize, duration: Duration) -> anyhow::Result<()> {
    let row = creates(System::Project { projector: true }, clients, duration).await?;
    let m = &row.measured;
    println!(
        "(b) {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, CPU ms/request {:.2} (bench process), {:.2} (PostgreSQL)",
        row.system.name(), m.rate, m.p50, m.p99, m.errors, row.cpu.0, row.cpu.1
    );
    Ok(())
}

pub async fn compare(
    clients: usize,
    duration: Duration,
    single_requests: usize,
    raw: &Measured,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for pass in 0..2 {
        let mut order = System::ALL.to_vec();
        if pass == 1 {
            order.reverse();
        }
        for system in order {
            rows.push(creates(system, clients, duration).await?);
        }
    }
    println!(
        "(b) creates of environments in one organization, {clients} clients, {} s each, two passes in opposite orders:",
        duration.as_secs()
    );
    println!("    | system | creates/s | p50 ms | p99 ms | errors | CPU ms/request: bench process, PostgreSQL | share of (a) |");
    println!(
        "    | raw INSERT into an events-like table (a) | {:.0} | {:.2} | {:.2} | {} | - | 1.00 |",
        raw.rate, raw.p50, raw.p99, raw.errors
    );
    for system in System::ALL {
        for row in rows.iter().filter(|r| r.system == system) {
            let m = &row.measured;
            println!(
                "    | {} | {:.0} | {:.2} | {:.2} | {} | {:.2}, {:.2} | {:.2} |",
                system.name(),
                m.rate,
                m.p50,
                m.p99,
                m.errors,
                row.cpu.0,
                row.cpu.1,
                m.rate / raw.rate
            );
        }
    }
    let best = |system: System| {
        rows.iter()
            .filter(|r| r.system == system)
            .map(|r| (r.measured.rate, r.measured.p99))
            .fold((0.0f64, f64::MAX), |(rate, p99), (r, p)| {
                (rate.max(r), p99.min(p))
            })
    };
    let (crud_rate, crud_p99) = best(System::Crud);
    let (project_rate, project_p99) = best(System::Project { projector: true });
    println!(
        "    project (with projector) against CRUD, best of the two passes: throughput {:.2}x (target >= 1.00), p99 {:.2}x (target <= 1.00)",
        project_rate / crud_rate,
        project_p99 / crud_p99
    );

    let project = renames(System::Project { projector: true }, single_requests).await?;
    let alone = renames(System::Project { projector: false }, single_requests).await?;
    let library = renames(System::CqrsEs, single_requests).await?;
    let crud = renames(System::Crud, single_requests).await?;
    println!(
        "(b) one client renaming one environment {single_requests} times: project p50 {:.2} ms, p99 {:.2} ms (command-api alone p50 {:.2} ms, p99 {:.2} ms); \
         cqrs-es with snapshots p50 {:.2} ms, p99 {:.2} ms; CRUD p50 {:.2} ms, p99 {:.2} ms; project to cqrs-es at p50 {:.2} (target <= 1.50)",
        project.p50,
        project.p99,
        alone.p50,
        alone.p99,
        library.p50,
        library.p99,
        crud.p50,
        crud.p99,
        project.p50 / library.p50
    );

    reads_under_load(clients, duration).await
}

/// List and detail latency, and the tenants projection's lag, while `clients` writers create.
async fn reads_under_load(clients: usize, duration: Duration) -> anyhow::Result<()> {
    let mut app = TestApp::spawn_with_pool_size(clients as u32 + 24).await;
    let organization = app.create_organization("Bench Corp").await;
    let detail = app.create_environment(&organization, "detail").await;
    let _projector = SeparateProjector::start(&mut app);
    let target = std::sync::Arc::new(Target {
        base: format!("{}/api", app.command_url),
        token: Some(app.admin_token.clone()),
        organization: organization.clone(),
        _keep: None,
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let writers = writers(target, http.clone(), clients, duration);
    let read = |path: String| {
        let (http, token) = (http.clone(), app.admin_token.clone());
        let url = format!("{}{path}", app.query_url);
        run_for(2, duration, move |_, _| {
            let request = http.get(&url).bearer_auth(&token);
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
    };
    let list = read(format!(
        "/api/environments?organizationId={organization}&page=1&limit=20"
    ));
    let one = read(format!("/api/environments/{detail}"));
    let lag = projection_lag(&app.db.pool, duration);
    let (writes, list, one, lag) = tokio::join!(writers, list, one, lag);
    let lag = lag?;
    println!(
        "(b) reads during {clients} writers ({:.0} creates/s): list p50 {:.2} ms, p99 {:.2} ms; detail p50 {:.2} ms, p99 {:.2} ms; \
         tenants projection lag p50 {:.2} ms, p99 {:.2} ms (target < 50 ms)",
        writes.rate, list.p50, list.p99, one.p50, one.p99, lag.p50, lag.p99
    );
    Ok(())
}

/// The tenants projection's lag, sampled every 10 ms for `duration`: how long ago the oldest event it
/// has not applied was recorded (0 when it has applied them all). `p50` and `p99` carry the figures.
async fn projection_lag(pool: &PgPool, duration: Duration) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        let lag: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(e.recorded_at)), 0)::float8 \
             FROM projection_checkpoints c JOIN events e \
               ON (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position) \
             WHERE c.name = $1",
        )
        .bind(contracts::read_models::TENANTS)
        .fetch_one(pool)
        .await?;
        samples.push(Duration::from_secs_f64(lag.max(0.0)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(measure(samples, started.elapsed(), 0))
}
