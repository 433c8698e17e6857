//! Kafka for the tests and the benchmark: a private `tansu` broker per test (its own port and its own
//! PostgreSQL database, so a test can stop and restart it without disturbing others, and its data
//! survives the restart), and a consumer-group member that collects what the publisher produced.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use domain::LogPosition;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::Value;
use sqlx::PgPool;

use crate::TestDb;

/// How far the Kafka publisher has got: its checkpoint, or the log's start before it first ran.
pub async fn publisher_checkpoint(pool: &PgPool) -> LogPosition {
    let (transaction_id, global_position) = sqlx::query_as(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = 'kafka'",
    )
    .fetch_optional(pool)
    .await
    .expect("reading the publisher's checkpoint")
    .unwrap_or((0, 0));
    LogPosition {
        transaction_id,
        global_position,
    }
}

/// The PostgreSQL schema of the broker's storage (also applied by `deploy/lib.sh`).
const BROKER_SCHEMA: &str = include_str!("../../deploy/tansu-schema.sql");

/// A `tansu` broker on a local port, killed when dropped.
pub struct Broker {
    pub port: u16,
    storage: TestDb,
    process: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        let storage = TestDb::create_empty(2)
            .await
            .expect("creating the broker's database");
        sqlx::raw_sql(BROKER_SCHEMA)
            .execute(&storage.pool)
            .await
            .expect("applying the broker's schema");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free port")
            .port();
        let mut broker = Broker {
            port,
            storage,
            process: None,
        };
        broker.resume().await;
        broker
    }

    /// `bootstrap.servers` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL, as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the broker again on the same port and storage, and waits until it accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "the broker is running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        // The broker's PostgreSQL client wants a password in the URL, and `localhost` for its TLS rules.
        let server = crate::server_url();
        let (server, _) = server.rsplit_once('/').expect("a database URL");
        let storage = format!(
            "{}/{}",
            server.replace("@127.0.0.1", "@localhost"),
            self.storage.name
        );
        let tansu = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let process = Command::new(&tansu)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &storage])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {tansu} (install it with `cargo install tansu --locked --features dynostore,postgres`, as deploy/test.sh does): {e}")
            });
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.address())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the broker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message, as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub value: Value,
    pub received_at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A member of a consumer group that commits each message's offset once it has taken it.
pub struct GroupMember {
    consumer: StreamConsumer,
}

impl GroupMember {
    pub fn join(broker: &str, group: &str, topics: &[String]) -> GroupMember {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            // A topic created after the subscription is seen at the next refresh (default 5 min).
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("creating a consumer");
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).expect("subscribing");
        GroupMember { consumer }
    }

    /// Takes messages until every event id in `missing` (a `ce_id`) has arrived, or `timeout` passes.
    pub async fn take_all(&self, timeout: Duration, mut missing: HashSet<String>) -> Vec<Received> {
        self.take_until(timeout, |received| {
            if let Some(last) = received.last() {
                missing.remove(last.header("ce_id"));
            }
            missing.is_empty()
        })
        .await
    }

    /// Takes messages until `done` says so or `timeout` passes, committing each one synchronously.
    pub async fn take_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stream = self.consumer.stream();
        while !done(&received) {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            let Ok(Some(message)) = next else { break };
            // A topic not created yet is reported as an error; it is not a message.
            let Ok(message) = message else { continue };
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            received.push(Received {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                headers,
                value: serde_json::from_slice(message.payload().unwrap_or_default())
                    .expect("message values are JSON"),
                received_at: Instant::now(),
            });
            self.consumer
                .commit_message(&message, CommitMode::Sync)
                .expect("committing an offset");
        }
        received
    }
}
