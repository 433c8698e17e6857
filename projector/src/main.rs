//! The projector process: `projector` runs every projection (and the Kafka publisher when
//! `KAFKA_BROKERS` is set, the processed queue's indexer when `S3_BUCKET` is set); `projector rebuild <name|all>`, `projector verify [--log]`,
//! `projector replay --until … --into …` (each run as a job, `projector::job_runner`, as the API's
//! jobs are, which the running projector takes) and `projector status` are the operator's commands;
//! `projector tail` prints the domain events from Kafka. Running, it stops on SIGTERM or SIGINT
//! (see [`http_layer::shutdown`]), and serves its health and metrics with [`http_layer::serve`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use contracts::read_models::PROJECTIONS;
use domain::job::JobSpec;
use event_log::status::statuses;
use http_layer::config::{seconds, ConnectionLimitArgs};
use http_layer::shutdown::Shutdown;
use processed_queue::S3Args;
use projector::housekeeping;
use projector::indexer::{self, IndexerConfig};
use projector::job_runner::{self, Ended};
use projector::publisher::{self, PublisherConfig};
use projector::spawn_workers;
use projector::tail::tail;
use projector::worker::WorkerConfig;

#[derive(Parser)]
#[command(about = "Projection workers and the operator commands around them")]
struct Cli {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Where /healthz, /readyz and /metrics are served while running.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8083")]
    addr: SocketAddr,
    #[command(flatten)]
    limits: ConnectionLimitArgs,
    /// How often expired sign-ins, sessions and idempotency records are deleted, in seconds.
    #[arg(
        long = "housekeeping-interval-secs",
        env = "HOUSEKEEPING_INTERVAL_SECS",
        default_value = "300",
        value_parser = seconds::<300>
    )]
    housekeeping_interval: Duration,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    indexer: IndexerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers; unset means no publishing.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Topics are `<prefix>.<aggregate type>`.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "admin-platform")]
    kafka_topic_prefix: String,
    /// Partitions of each topic the publisher creates.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = publisher::DEFAULT_PARTITIONS)]
    kafka_topic_partitions: i32,
    /// Replication factor of each topic the publisher creates.
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION", default_value_t = 1)]
    kafka_topic_replication: i32,
}

/// How the processed queue's indexer runs (when `S3_BUCKET` is set).
#[derive(clap::Args)]
struct IndexerArgs {
    /// How often the bucket is listed for new processed messages, in seconds.
    #[arg(
        long = "processed-queue-poll-secs",
        env = "PROCESSED_QUEUE_POLL_SECS",
        default_value = "2",
        value_parser = seconds::<2>
    )]
    poll_interval: Duration,
    /// How often the whole bucket is compared with the index, in seconds.
    #[arg(
        long = "processed-queue-reconcile-secs",
        env = "PROCESSED_QUEUE_RECONCILE_SECS",
        default_value = "300",
        value_parser = seconds::<300>
    )]
    reconcile_interval: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Run every projection (the default).
    Run,
    /// Rebuild a projection (or `all`) from the start of the log, then swap it in.
    Rebuild { name: String },
    /// Rebuild every projection (or the one named) into a scratch schema and compare it row by row
    /// with the live one; with --log, check every event's hash chain instead. Exits 1 on a difference.
    Verify {
        #[arg(default_value = "all")]
        name: String,
        #[arg(long, conflicts_with = "name")]
        log: bool,
    },
    /// Build every read model as of a point of the log into a new schema, for audits.
    Replay {
        /// A global position (as the audit trail shows them) or an RFC 3339 time.
        #[arg(long)]
        until: String,
        /// The schema to create.
        #[arg(long)]
        into: String,
    },
    /// Print each projection's position and lag (the Kafka publisher's as `kafka`).
    Status,
    /// Join a consumer group on every topic and print each domain event, committing as it goes.
    Tail {
        #[arg(long, default_value = "projector-tail")]
        group: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http_layer::telemetry::init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // The request-sized statement limit is for the live workers; the operator's commands run long
    // statements over the whole log (and `status` and `tail` are the operator's too).
    let limits = match command {
        Command::Run => cli.limits.limits(),
        _ => cli.limits.limits().without_statement_timeout(),
    };
    let pool =
        event_log::database::connect(&cli.database_url, projector::pool_size(), limits).await?;

    match command {
        Command::Run => {
            // Only the long-running workers handle signals: the operator's commands keep the
            // default, so Ctrl-C stops them at once (each of their writes is one transaction).
            let shutdown = Shutdown::on_signal().context("installing the signal handlers")?;
            let metrics =
                metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
            let mut tasks = spawn_workers(
                &pool,
                WorkerConfig {
                    shutdown: shutdown.clone(),
                    ..Default::default()
                },
            );
            match &cli.kafka.kafka_brokers {
                Some(brokers) => {
                    let config = PublisherConfig {
                        partitions: cli.kafka.kafka_topic_partitions,
                        replication: cli.kafka.kafka_topic_replication,
                        shutdown: shutdown.clone(),
                        ..PublisherConfig::new(brokers, &cli.kafka.kafka_topic_prefix)
                    };
                    tasks.push(tokio::spawn(publisher::run(pool.clone(), config)));
                }
                None => tracing::info!("KAFKA_BROKERS is not set: not publishing to Kafka"),
            }
            match cli.s3.bucket() {
                Some(bucket) => {
                    let config = IndexerConfig {
                        poll_interval: cli.indexer.poll_interval,
                        reconcile_interval: cli.indexer.reconcile_interval,
                        max_body_bytes: cli.s3.max_body_bytes,
                        shutdown: shutdown.clone(),
                        ..IndexerConfig::default()
                    };
                    tasks.push(tokio::spawn(indexer::run(pool.clone(), bucket, config)));
                }
                None => tracing::info!("S3_BUCKET is not set: no processed queue to index"),
            }
            let instance = http_layer::heartbeat::spawn(pool.clone(), "projector");
            tasks.push(tokio::spawn(job_runner::run(
                pool.clone(),
                instance,
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(housekeeping::run(
                pool.clone(),
                cli.housekeeping_interval,
                shutdown.clone(),
            )));
            // Everything stops on the signal: the server after its requests, each worker after its
            // batch, the publisher once its messages in flight are acknowledged.
            let ops = projector::ops::router(pool, metrics);
            let stopped = shutdown
                .within_grace(async {
                    http_layer::serve("projector", cli.addr, ops, &shutdown).await?;
                    for task in tasks {
                        let _ = task.await;
                    }
                    anyhow::Ok(())
                })
                .await;
            if let Some(stopped) = stopped {
                stopped?;
            }
            tracing::info!("projector stopped");
        }
        Command::Rebuild { name } => run_job(&pool, JobSpec::Rebuild { projection: name }).await?,
        Command::Verify { name, log } => {
            run_job(
                &pool,
                JobSpec::Verify {
                    projection: name,
                    log,
                },
            )
            .await?
        }
        Command::Replay { until, into } => {
            let until = until.parse().map_err(|e| anyhow::anyhow!("--until: {e}"))?;
            run_job(&pool, JobSpec::Replay { until, into }).await?
        }
        Command::Status => {
            println!(
                "{:<20} {:>14} {:>14} {:>10} {:>10}",
                "projection", "transaction", "position", "behind", "lag (s)"
            );
            let statuses = statuses(&pool).await?;
            for s in &statuses {
                println!(
                    "{:<20} {:>14} {:>14} {:>10} {:>10.1}",
                    s.name, s.transaction_id, s.global_position, s.behind, s.lag_seconds
                );
            }
            for failure in statuses.iter().filter_map(|s| s.failure()) {
                println!("FAILING: {failure}");
            }
        }
        Command::Tail { group } => {
            let brokers = cli
                .kafka
                .kafka_brokers
                .context("tail needs KAFKA_BROKERS (or --kafka-brokers)")?;
            tail(&brokers, &cli.kafka.kafka_topic_prefix, &group).await?;
        }
    }
    Ok(())
}

/// Runs an operator command as a job (see `projector::job_runner`), printing its progress; exits 1
/// when it fails (a verification that finds a difference fails) or is cancelled.
async fn run_job(pool: &sqlx::PgPool, spec: JobSpec) -> anyhow::Result<()> {
    let spec = spec
        .checked(&PROJECTIONS)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match job_runner::run_from_cli(pool, spec).await? {
        Ended::Succeeded(result) => println!("done: {result}"),
        Ended::Failed(error) => {
            println!("failed: {error}");
            std::process::exit(1);
        }
        Ended::Cancelled => {
            println!("cancelled");
            std::process::exit(1);
        }
    }
    Ok(())
}
