//! Runs operator jobs (`domain::job`): rebuilds, verifications, replays and usage exports requested
//! through the API, and the same commands typed at the projector's command line, which are recorded
//! as jobs too. Processed-queue reconciliations are run by the indexer, which owns the bucket's index
//! ([`crate::indexer`]), through [`claim_next`] and [`run_claimed`] as here.
//!
//! **One at a time per kind.** Whoever runs a job of a kind holds a PostgreSQL session lock on the
//! kind (on a connection of its own) from before it records `job.started` until it has recorded how
//! the job ended. So a job still `running` whose kind's lock is free was left by a runner that died:
//! the next runner to take the lock records it as failed (and discards what an export wrote) before
//! starting the next pending job, oldest first.
//!
//! **Progress and cancelling.** While a job works, its progress (`{message, done, total}`) is written
//! into `job_progress` every [`TICK`], and the job's stream is read for a cancel request; on one, the
//! work is dropped (each step of it is its own transaction, and the scratch schemas it builds in are
//! rebuilt from nothing next time) and `job.cancelled` recorded. A runner asked to shut down records
//! the job as failed, interrupted.
//!
//! The projector appends only these job outcomes, through the command executor like every write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use commands::{Caller, Executor, Outcome, WriteSet};
use domain::job::{Job, JobCommand, JobKind, JobSource, JobSpec, JobState};
use domain::Aggregate;
use http_layer::shutdown::Shutdown;
use http_layer::ApiError;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::export;
use crate::rebuild::rebuild;
use crate::replay::replay;
use crate::scratch::{Progress, Until};
use crate::verify::{verify, verify_log, VerifyProgress};
use crate::writes;

/// How often a running job's progress is saved and its stream checked for a cancel request, and how
/// often the runner looks for pending jobs when no append wakes it.
pub const TICK: Duration = Duration::from_secs(1);

/// Key class of the session locks that keep jobs of one kind apart.
const JOB_LOCK_CLASS: i32 = 0x4a4f_4200;

/// How a job's work reports progress: the latest report, saved by the runner every [`TICK`], and
/// printed as it comes when the job runs at the command line.
#[derive(Clone, Default)]
pub struct Reporter {
    latest: Arc<Mutex<Option<Value>>>,
    print: bool,
}

impl Reporter {
    pub fn report(&self, message: String, done: u64, total: u64) {
        if self.print {
            println!("{message}");
        }
        let progress = json!({ "message": message, "done": done, "total": total });
        *self.latest.lock().expect("progress lock") = Some(progress);
    }

    fn take(&self) -> Option<Value> {
        self.latest.lock().expect("progress lock").take()
    }

    fn build(&self, what: &str) -> impl FnMut(Progress) + '_ {
        let what = what.to_owned();
        move |p: Progress| {
            self.report(
                format!(
                    "{what}: {}/{} events read, {} applied, {:.0} events/s",
                    p.read,
                    p.total,
                    p.applied,
                    p.events_per_second()
                ),
                p.read,
                p.total.max(p.read),
            )
        }
    }
}

/// A job taken by this runner: it holds the kind's lock until the job has ended.
pub struct Claimed {
    pub id: Uuid,
    pub spec: JobSpec,
    lock: PgConnection,
}

/// Who records a job's events.
#[derive(Clone)]
pub struct Recorder {
    executor: Executor,
    /// `projector <instance id>`, or `cli <host>/<process id>`.
    runner: String,
    /// The actor the events record: `projector`, or `cli:<user>` for the command line's own jobs.
    actor: String,
}

impl Recorder {
    pub fn new(pool: &PgPool, runner: String, actor: String) -> Recorder {
        Recorder {
            executor: Executor::new(pool.clone()),
            runner,
            actor,
        }
    }

    /// A recorder for the projector's command line.
    pub fn for_cli(pool: &PgPool) -> Recorder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
        Recorder::new(
            pool,
            format!("cli {host}/{}", std::process::id()),
            format!("cli:{user}"),
        )
    }

    /// Decides `commands` on job `id` in turn and appends what they decided; the job after them.
    pub async fn record(&self, id: Uuid, commands: &[JobCommand]) -> Result<Job, ApiError> {
        let system = writes::system_actor();
        let caller = Caller {
            actor: &system,
            idempotency: None,
        };
        let metadata = writes::metadata(&self.actor, None, id.to_string());
        let answer = self
            .executor
            .run(caller, || async {
                let mut job = match commands.first() {
                    Some(JobCommand::Request { .. }) => domain::Loaded::new_stream(),
                    _ => self.executor.load::<Job>(id).await?,
                };
                let expected = job.version;
                let mut events = Vec::new();
                for command in commands {
                    let decided = job.state.decide(command.clone())?;
                    events.extend(job.record(decided, &metadata, Utc::now()));
                }
                let outcome = Outcome::new(200, &job.state, job.version);
                Ok::<_, ApiError>(match events.is_empty() {
                    true => outcome,
                    false => outcome.appending(
                        WriteSet::append(&Job::stream_id(id), expected, events),
                        None,
                    ),
                })
            })
            .await?;
        serde_json::from_str(&answer.body)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("a job's state: {e}")))
    }
}

/// Takes `kind`'s lock on a connection of its own, if no one holds it.
async fn lock_kind(pool: &PgPool, kind: JobKind) -> sqlx::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(JOB_LOCK_CLASS)
        .bind(kind.as_str())
        .fetch_one(&mut conn)
        .await?;
    Ok(locked.then_some(conn))
}

/// Takes the oldest pending job of `kind`, if its lock is free, after recording as failed any job of
/// the kind left running by a runner that died.
pub async fn claim_next(
    pool: &PgPool,
    recorder: &Recorder,
    kind: JobKind,
) -> anyhow::Result<Option<Claimed>> {
    let waiting: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM read_models.jobs WHERE kind = $1 AND state IN ('pending', 'running') \
         ORDER BY requested_at, id LIMIT 20",
    )
    .bind(kind.as_str())
    .fetch_all(pool)
    .await?;
    if waiting.is_empty() {
        return Ok(None);
    }
    let Some(lock) = lock_kind(pool, kind).await? else {
        return Ok(None);
    };
    for (id, _) in waiting.iter().filter(|(_, state)| state == "running") {
        let job = recorder.executor.load::<Job>(*id).await?;
        if job.state.state == JobState::Running {
            let runner = job.state.runner.clone().unwrap_or_default();
            tracing::warn!(%id, %runner, "a job was left running by a runner that stopped");
            end(
                pool,
                recorder,
                *id,
                kind,
                Ended::Failed(format!(
                    "interrupted: the runner ({runner}) stopped before the job ended"
                )),
            )
            .await?;
        }
    }
    for (id, _) in waiting.iter().filter(|(_, state)| state == "pending") {
        let start = JobCommand::Start {
            runner: recorder.runner.clone(),
        };
        match recorder.record(*id, &[start]).await {
            Ok(job) => {
                let spec = job.spec.context("a started job without its spec")?;
                return Ok(Some(Claimed {
                    id: *id,
                    spec,
                    lock,
                }));
            }
            // Cancelled (or started elsewhere) since the read model was read.
            Err(ApiError::Conflict { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(None)
}

/// Records a job of the command line and takes it, or says which job of its kind runs now.
pub async fn claim_for_cli(
    pool: &PgPool,
    recorder: &Recorder,
    spec: JobSpec,
) -> anyhow::Result<Claimed> {
    let kind = spec.kind();
    let Some(lock) = lock_kind(pool, kind).await? else {
        let running: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM read_models.jobs WHERE kind = $1 AND state = 'running' LIMIT 1",
        )
        .bind(kind.as_str())
        .fetch_optional(pool)
        .await?;
        anyhow::bail!(
            "a job of kind {} is running{}; wait for it to end, or cancel it (POST /api/v1/admin/jobs/{{id}}/cancel)",
            kind.as_str(),
            running.map(|id| format!(" ({id})")).unwrap_or_default()
        );
    };
    let id = Uuid::now_v7();
    let commands = [
        JobCommand::Request {
            spec: spec.clone(),
            source: JobSource::Cli,
        },
        JobCommand::Start {
            runner: recorder.runner.clone(),
        },
    ];
    recorder.record(id, &commands).await?;
    Ok(Claimed { id, spec, lock })
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Succeeded(Value),
    Failed(String),
    Cancelled,
}

/// Runs a claimed job to its end, saving its progress and heeding a cancel request or `shutdown`,
/// records how it ended, and releases the kind.
pub async fn run_claimed(
    pool: &PgPool,
    recorder: &Recorder,
    claimed: Claimed,
    reporter: Reporter,
    work: impl std::future::Future<Output = anyhow::Result<Value>>,
    shutdown: Option<&Shutdown>,
) -> anyhow::Result<Ended> {
    let Claimed { id, spec, lock } = claimed;
    let watch = async {
        loop {
            tokio::time::sleep(TICK).await;
            save_progress(pool, id, &reporter).await?;
            let job = recorder.executor.load::<Job>(id).await?;
            if job.state.cancel_requested {
                return anyhow::Ok(Ended::Cancelled);
            }
        }
    };
    let interrupted = async {
        match shutdown {
            Some(shutdown) => shutdown.requested().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        result = work => match result {
            Ok(result) => Ended::Succeeded(result),
            Err(error) => Ended::Failed(format!("{error:#}")),
        },
        cancelled = watch => cancelled?,
        () = interrupted => Ended::Failed("interrupted: the projector running it was stopped".into()),
    };
    save_progress(pool, id, &reporter).await?;
    end(pool, recorder, id, spec.kind(), ended.clone()).await?;
    drop(lock);
    Ok(ended)
}

/// Records how job `id` ended, discarding what a failed or cancelled export wrote.
async fn end(
    pool: &PgPool,
    recorder: &Recorder,
    id: Uuid,
    kind: JobKind,
    ended: Ended,
) -> anyhow::Result<()> {
    if kind == JobKind::Export && !matches!(ended, Ended::Succeeded(_)) {
        export::discard(pool, id).await?;
    }
    let command = match ended {
        Ended::Succeeded(result) => JobCommand::Succeed { result },
        Ended::Failed(error) => JobCommand::Fail { error },
        Ended::Cancelled => JobCommand::ConfirmCancelled,
    };
    recorder.record(id, &[command]).await?;
    Ok(())
}

async fn save_progress(pool: &PgPool, id: Uuid, reporter: &Reporter) -> sqlx::Result<()> {
    let Some(progress) = reporter.take() else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO job_progress (job_id, progress, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (job_id) DO UPDATE SET progress = EXCLUDED.progress, updated_at = now()",
    )
    .bind(id)
    .bind(progress)
    .execute(pool)
    .await?;
    Ok(())
}

/// Does the work of a rebuild, verification, replay or export; what it found, or why it failed.
pub async fn perform(
    pool: &PgPool,
    id: Uuid,
    spec: &JobSpec,
    reporter: &Reporter,
) -> anyhow::Result<Value> {
    match spec {
        JobSpec::Rebuild { projection } => {
            let mut rebuilt = Vec::new();
            for projection in chosen(projection)? {
                let name = projection.name();
                let done = rebuild(
                    pool,
                    projection.as_ref(),
                    reporter.build(&format!("rebuild {name}")),
                )
                .await
                .with_context(|| format!("rebuilding {name}"))?;
                reporter.report(
                    format!(
                        "rebuilt {name}: {} events in {:.2} s ({:.0} events/s)",
                        done.applied,
                        done.elapsed.as_secs_f64(),
                        done.events_per_second()
                    ),
                    done.read,
                    done.read,
                );
                rebuilt.push(json!({
                    "projection": name,
                    "events": done.applied,
                    "seconds": done.elapsed.as_secs_f64(),
                }));
            }
            Ok(json!({ "rebuilt": rebuilt }))
        }
        JobSpec::Verify { log: true, .. } => {
            let report = verify_log(pool, |checked, streams| {
                reporter.report(
                    format!("verify --log: {checked}/{streams} streams checked"),
                    checked as u64,
                    streams as u64,
                )
            })
            .await?;
            match report.first_problem {
                None => Ok(json!({ "events": report.events, "streams": report.streams })),
                Some(p) => anyhow::bail!(
                    "the log does not verify: event {} at global position {} (stream {} version {}): {}",
                    p.event_id,
                    p.global_position,
                    p.stream_id,
                    p.stream_version,
                    p.problem
                ),
            }
        }
        JobSpec::Verify { projection, .. } => {
            let mut verified = Vec::new();
            let mut different = Vec::new();
            for projection in chosen(projection)? {
                let what = format!("verify {}", projection.name());
                let report = verify(pool, projection.as_ref(), |p| match p {
                    VerifyProgress::Building(p) => reporter.build(&what)(p),
                    VerifyProgress::Comparing { table, rows } => reporter.report(
                        format!("{what}: comparing {table}, {rows} rows compared"),
                        rows,
                        rows,
                    ),
                })
                .await
                .with_context(|| format!("verifying {}", projection.name()))?;
                for t in &report.tables {
                    let verdict = if t.matches() { "equal" } else { "DIFFERENT" };
                    reporter.report(
                        format!(
                            "  {:<24} live {:>9} rows {}  rebuilt {:>9} rows {}  {verdict}",
                            t.table,
                            t.live_rows,
                            t.live_checksum,
                            t.rebuilt_rows,
                            t.rebuilt_checksum
                        ),
                        0,
                        0,
                    );
                    for row in &t.only_live {
                        reporter.report(format!("    only in live:    {row}"), 0, 0);
                    }
                    for row in &t.only_rebuilt {
                        reporter.report(format!("    only in rebuilt: {row}"), 0, 0);
                    }
                    if !t.matches() {
                        different.push(format!(
                            "{}.{} (live {} rows, rebuilt {})",
                            report.projection, t.table, t.live_rows, t.rebuilt_rows
                        ));
                    }
                }
                verified.push(json!({
                    "projection": report.projection,
                    "position": report.position.to_string(),
                    "tables": report.tables.iter().map(|t| json!({
                        "table": t.table, "rows": t.live_rows, "equal": t.matches(),
                    })).collect::<Vec<_>>(),
                }));
            }
            anyhow::ensure!(
                different.is_empty(),
                "verification failed: the rebuilt read models differ from the live ones in {}",
                different.join(", ")
            );
            Ok(json!({ "verified": verified }))
        }
        JobSpec::Replay { until, into } => {
            let done = replay(pool, Until::from(*until), into, reporter.build("replay")).await?;
            Ok(json!({ "schema": into, "events": done.applied, "read": done.read }))
        }
        JobSpec::Export { format, filters } => {
            let written = export::write(pool, id, *format, filters, |done, total| {
                reporter.report(format!("export: {done}/{total} rows written"), done, total)
            })
            .await?;
            Ok(export::result(*format, written))
        }
        JobSpec::Reconcile {} => {
            anyhow::bail!("reconciliations are run by the processed queue's indexer")
        }
    }
}

/// The projections `name` picks: one by name, or `all`.
pub fn chosen(name: &str) -> anyhow::Result<Vec<Arc<dyn crate::Projection>>> {
    let chosen: Vec<_> = crate::projections()
        .into_iter()
        .filter(|p| name == "all" || p.name() == name)
        .collect();
    anyhow::ensure!(!chosen.is_empty(), "no projection named {name:?}");
    Ok(chosen)
}

/// Runs a job from the command line as a job: recorded, one at a time per kind, cancellable from
/// the API. Prints its progress; how it ended.
pub async fn run_from_cli(pool: &PgPool, spec: JobSpec) -> anyhow::Result<Ended> {
    let recorder = Recorder::for_cli(pool);
    let claimed = claim_for_cli(pool, &recorder, spec).await?;
    println!("job {} ({})", claimed.id, claimed.spec.kind().as_str());
    let reporter = Reporter {
        print: true,
        ..Reporter::default()
    };
    let (id, spec) = (claimed.id, claimed.spec.clone());
    let work = perform(pool, id, &spec, &reporter);
    run_claimed(pool, &recorder, claimed, reporter.clone(), work, None).await
}

/// The kinds the projector's runner takes (reconciliations are the indexer's).
const RUN_HERE: [JobKind; 4] = [
    JobKind::Rebuild,
    JobKind::Verify,
    JobKind::Replay,
    JobKind::Export,
];

/// The projector's job runner: takes pending jobs, at most one per kind at a time, until `shutdown`.
/// `instance` is the projector's heartbeat id, which its jobs record as their runner.
pub async fn run(pool: PgPool, instance: Uuid, shutdown: Shutdown) {
    let recorder = Recorder::new(&pool, format!("projector {instance}"), "projector".into());
    let mut running: HashMap<JobKind, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        for kind in RUN_HERE {
            if running.contains_key(&kind) {
                continue;
            }
            match claim_next(&pool, &recorder, kind).await {
                Ok(Some(claimed)) => {
                    let (pool, recorder, shutdown) =
                        (pool.clone(), recorder.clone(), shutdown.clone());
                    // On a thread of its own: the builds' futures borrow trait objects across
                    // awaits, which the compiler cannot prove `Send` for a task.
                    let runtime = tokio::runtime::Handle::current();
                    running.insert(
                        kind,
                        tokio::task::spawn_blocking(move || runtime.block_on(async move {
                            let reporter = Reporter::default();
                            let (id, spec) = (claimed.id, claimed.spec.clone());
                            tracing::info!(%id, kind = kind.as_str(), "job started");
                            let work = perform(&pool, id, &spec, &reporter);
                            match run_claimed(&pool, &recorder, claimed, reporter.clone(), work, Some(&shutdown))
                                .await
                            {
                                Ok(ended) => tracing::info!(%id, ?ended, "job ended"),
                                Err(error) => {
                                    tracing::error!(%id, error = format!("{error:#}"), "recording a job's end failed")
                                }
                            }
                        })),
                    );
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(
                        kind = kind.as_str(),
                        error = format!("{error:#}"),
                        "taking a job failed"
                    )
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.requested() => break,
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
}
