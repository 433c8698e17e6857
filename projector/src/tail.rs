//! `projector tail`: the smallest consumer of the domain events, for consuming teams to see the Kafka
//! contract work. It joins a consumer group on every topic, prints one line per message (its type,
//! subject, stream version and value) and commits each message's offset after printing it, so a
//! restarted member of the group resumes where the group left off.

use std::io::Write;

use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use contracts::published::{aggregate_types, header, topic};

pub async fn tail(brokers: &str, topic_prefix: &str, group: &str) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the Kafka consumer")?;
    let topics: Vec<String> = aggregate_types()
        .iter()
        .map(|t| topic(topic_prefix, t))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    eprintln!("tail: group {group:?} on {}", topics.join(", "));
    let mut messages = consumer.stream();
    let mut out = std::io::stdout().lock();
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            // A topic nobody has published to yet.
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                continue
            }
            Err(error) => return Err(error).context("consuming"),
        };
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        };
        writeln!(
            out,
            "{} {} v{} {}",
            header(header::TYPE),
            header(header::SUBJECT),
            header(header::STREAM_VERSION),
            String::from_utf8_lossy(message.payload().unwrap_or_default())
        )?;
        out.flush()?;
        consumer
            .commit_message(&message, CommitMode::Async)
            .context("committing")?;
    }
    Ok(())
}
