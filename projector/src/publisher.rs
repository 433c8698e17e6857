//! The Kafka publisher: a projection whose "tables" are Kafka topics. It follows the log from its
//! checkpoint (`kafka` in `projection_checkpoints`, so `projector status` and `/metrics` show its lag
//! like any projection's) and produces every event as a CloudEvents message ([`contracts::published`]).
//!
//! At least once, in order per stream:
//! - the producer is idempotent with `acks=all` and never gives up on a message (no delivery timeout),
//!   so within a partition the broker stores messages in the order they were produced, without
//!   duplicates from retries, and a broker outage only makes the publisher wait;
//! - many messages are in flight at once, but the checkpoint only ever moves to the end of the longest
//!   acknowledged prefix of what was produced, so a crash re-publishes from there: a consumer may see an
//!   event again (same `ce_id`), never miss one, and after dropping repeated ids sees each stream in
//!   version order;
//! - any delivery error ends the run: the producer is dropped and a new one starts again from the
//!   checkpoint, so a message is never published after a later one of its stream that failed.
//!
//! Shutdown: it stops reading the log, waits for the messages in flight to be acknowledged and moves
//! the checkpoint to the last of them, then returns. Cut short (a broker outage outlasting the grace
//! period), the checkpoint stays where it was and those messages are published again next time.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::{Connection, PgConnection, PgPool};

use crate::projection::{ensure_checkpoint, save_checkpoint};
use crate::worker::become_runner;
use contracts::published::{aggregate_types, topic, Message};
use domain::LogPosition;
use event_log::{listen_for_appends, read_log};
use http_layer::shutdown::Shutdown;

/// The publisher's checkpoint name.
pub const NAME: &str = "kafka";

/// Partitions of the topics it creates, unless configured otherwise.
pub const DEFAULT_PARTITIONS: i32 = 3;

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics are `<prefix>.<aggregate type>`; also the CloudEvents source.
    pub topic_prefix: String,
    /// For topics the publisher creates.
    pub partitions: i32,
    pub replication: i32,
    /// Most messages produced and not yet acknowledged at once.
    pub max_in_flight: usize,
    /// Most events read from the log at once.
    pub batch_size: i64,
    /// How often the checkpoint moves while messages keep being acknowledged.
    pub checkpoint_interval: Duration,
    /// How often to look for events when no notification arrives.
    pub poll_interval: Duration,
    pub retry_delay: Duration,
    /// Stops the publisher between batches, once what is in flight is acknowledged.
    pub shutdown: Shutdown,
}

impl PublisherConfig {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        PublisherConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: DEFAULT_PARTITIONS,
            replication: 1,
            max_in_flight: 20_000,
            batch_size: 2_000,
            checkpoint_interval: Duration::from_millis(100),
            poll_interval: Duration::from_millis(250),
            retry_delay: Duration::from_secs(1),
            shutdown: Shutdown::default(),
        }
    }
}

/// Publishes until shutdown is requested or the task is dropped, starting again from the checkpoint
/// after any failure.
pub async fn run(pool: PgPool, config: PublisherConfig) {
    while !config.shutdown.is_requested() {
        if let Err(error) = publish(&pool, &config).await {
            tracing::error!(error = format!("{error:#}"), "publisher stopped; retrying");
            metrics::counter!("projection_failures_total", "projection" => NAME).increment(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_delay) => {}
            _ = config.shutdown.requested() => {}
        }
    }
    tracing::info!("publisher stopped");
}

async fn publish(pool: &PgPool, config: &PublisherConfig) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("connecting")?;
    ensure_checkpoint(&mut conn, NAME).await?;
    tokio::select! {
        became = become_runner(&mut conn, NAME, config.poll_interval) => became?,
        _ = config.shutdown.requested() => return Ok(()),
    }
    let mut topics = Topics::connect(config)?;
    topics.ensure(&aggregate_types()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // 0: retry until delivered; an outage makes the publisher wait, never skip.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set(
            "queue.buffering.max.messages",
            (config.max_in_flight * 2).to_string(),
        )
        .create()
        .context("creating the Kafka producer")?;
    let mut listener = listen_for_appends(pool)
        .await
        .context("listening for appends")?;
    let mut produced = checkpoint(&mut conn).await?;
    let mut acknowledged = produced;
    let mut saved = produced;
    let mut last_save = Instant::now();
    let mut in_flight = FuturesOrdered::new();
    let mut caught_up = false;
    tracing::info!(position = %produced, brokers = config.brokers, "publishing");
    loop {
        if config.shutdown.is_requested() {
            while let Some(ack) = in_flight.next().await {
                acknowledged = ack?;
            }
            if acknowledged != saved {
                save(&mut conn, acknowledged).await?;
            }
            return Ok(());
        }
        if !caught_up && in_flight.len() < config.max_in_flight {
            let room = (config.max_in_flight - in_flight.len()) as i64;
            let limit = room.min(config.batch_size);
            let events = read_log(&mut conn, produced, limit).await?;
            caught_up = (events.len() as i64) < limit;
            for event in &events {
                let message = Message::of(event, &config.topic_prefix);
                topics.ensure_for(&message.topic, &event.stream_id).await?;
                in_flight.push_back(acknowledgement(
                    send(&producer, &message)?,
                    event.position(),
                ));
                produced = event.position();
            }
        }
        if in_flight.is_empty() {
            if acknowledged != saved {
                save(&mut conn, acknowledged).await?;
                saved = acknowledged;
            }
            tokio::select! {
                notification = listener.recv() => { notification.context("waiting for appends")?; }
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = config.shutdown.requested() => {}
            }
            caught_up = false;
            continue;
        }
        let has_room = in_flight.len() < config.max_in_flight;
        tokio::select! {
            ack = in_flight.next() => {
                acknowledged = ack.expect("in_flight is not empty")?;
                // Take every acknowledgement that is already in, without waiting.
                while let Some(Some(ack)) = in_flight.next().now_or_never() {
                    acknowledged = ack?;
                }
            }
            notification = listener.recv(), if caught_up && has_room => {
                notification.context("waiting for appends")?;
                caught_up = false;
            }
        }
        if acknowledged != saved && last_save.elapsed() >= config.checkpoint_interval {
            save(&mut conn, acknowledged).await?;
            saved = acknowledged;
            last_save = Instant::now();
        }
    }
}

/// Hands one message to the producer's queue.
pub fn send(producer: &FutureProducer, message: &Message) -> anyhow::Result<DeliveryFuture> {
    let headers = message
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
    let record = FutureRecord::to(&message.topic)
        .key(&message.key)
        .payload(&message.value)
        .headers(headers);
    producer
        .send_result(record)
        .map_err(|(error, _)| error)
        .context("queueing a message")
}

/// Resolves to the event's position once the broker acknowledged its message.
fn acknowledgement(
    delivery: DeliveryFuture,
    position: LogPosition,
) -> impl Future<Output = anyhow::Result<LogPosition>> {
    delivery.map(move |outcome| match outcome {
        Ok(Ok(_)) => Ok(position),
        Ok(Err((error, _))) => Err(error).context(format!("delivering the event at {position}")),
        Err(_) => anyhow::bail!("the producer dropped the event at {position}"),
    })
}

async fn checkpoint(conn: &mut PgConnection) -> sqlx::Result<LogPosition> {
    let (transaction_id, global_position) = sqlx::query_as(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(NAME)
    .fetch_one(conn)
    .await?;
    Ok(LogPosition {
        transaction_id,
        global_position,
    })
}

async fn save(conn: &mut PgConnection, acknowledged: LogPosition) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    save_checkpoint(&mut tx, NAME, acknowledged).await?;
    tx.commit().await?;
    metrics::gauge!("projection_position", "projection" => NAME)
        .set(acknowledged.global_position as f64);
    Ok(())
}

/// Creates the topic of every aggregate type unless it exists, as the publisher does when it starts.
pub async fn create_topics(config: &PublisherConfig) -> anyhow::Result<()> {
    Topics::connect(config)?.ensure(&aggregate_types()).await
}

/// The topics known to exist, and the admin client that creates missing ones.
struct Topics {
    admin: AdminClient<DefaultClientContext>,
    prefix: String,
    partitions: i32,
    replication: i32,
    known: HashSet<String>,
}

impl Topics {
    fn connect(config: &PublisherConfig) -> anyhow::Result<Topics> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .create()
            .context("creating the Kafka admin client")?;
        Ok(Topics {
            admin,
            prefix: config.topic_prefix.clone(),
            partitions: config.partitions,
            replication: config.replication,
            known: HashSet::new(),
        })
    }

    /// Creates the topics of these aggregate types unless they exist.
    async fn ensure(&mut self, aggregate_types: &[&str]) -> anyhow::Result<()> {
        let names: Vec<String> = aggregate_types
            .iter()
            .map(|t| topic(&self.prefix, t))
            .filter(|name| !self.known.contains(name))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic> = names
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self
            .admin
            .create_topics(&new_topics, &options)
            .await
            .context("creating topics")?
        {
            match result {
                Ok(name) => tracing::info!(topic = name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
        self.known.extend(names);
        Ok(())
    }

    /// Makes sure the topic of an event's stream exists, for streams of a type added after start.
    async fn ensure_for(&mut self, topic: &str, stream_id: &str) -> anyhow::Result<()> {
        if self.known.contains(topic) {
            return Ok(());
        }
        let aggregate_type = stream_id.split_once('-').map_or(stream_id, |(t, _)| t);
        self.ensure(&[aggregate_type]).await
    }
}
