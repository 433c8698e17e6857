//! Domain events on Kafka (contract §7), against a real broker and a real consumer group: every logged
//! event arrives (exactly once after dropping repeated `ce_id`s), in stream-version order per key,
//! valid against its JSON Schema and without any written secret; through a broker outage, a publisher
//! crash, and a consumer restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use contracts::published::{aggregate_types, topic, value};
use domain::{LogPosition, RecordedEvent};
use event_log::{log_head, COLUMNS};
use futures::future::join_all;
use projector::publisher::{self, PublisherConfig};
use serde_json::{json, Value};
use tests::kafka::{publisher_checkpoint, Broker, GroupMember, Received};
use tests::s3::S3Server;
use tests::TestApp;
use tokio::task::JoinHandle;

/// How long a test waits for every message to arrive.
const ARRIVAL: Duration = Duration::from_secs(90);

/// The system, a private broker and the topic prefix of this test.
struct Setup {
    app: TestApp,
    broker: Broker,
    prefix: String,
    publisher: Option<JoinHandle<()>>,
}

impl Setup {
    async fn start() -> Setup {
        Setup::with_app(TestApp::spawn().await).await
    }

    async fn with_app(app: TestApp) -> Setup {
        let broker = Broker::start().await;
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        // The topics exist before any group member subscribes, as they do in production: a member
        // that subscribes to a topic created later sees it only at its next metadata refresh
        // (five minutes by default), long after a test has given up.
        publisher::create_topics(&PublisherConfig::new(broker.address(), &prefix))
            .await
            .expect("creating the topics");
        let mut setup = Setup {
            app,
            broker,
            prefix,
            publisher: None,
        };
        setup.start_publisher();
        setup
    }

    fn start_publisher(&mut self) {
        let config = PublisherConfig {
            retry_delay: Duration::from_millis(200),
            ..PublisherConfig::new(self.broker.address(), &self.prefix)
        };
        self.publisher = Some(tokio::spawn(publisher::run(
            self.app.db.pool.clone(),
            config,
        )));
    }

    /// Kills the publisher wherever it is, messages in flight included.
    fn kill_publisher(&mut self) {
        self.publisher.take().expect("a running publisher").abort();
    }

    fn join_group(&self, group: &str) -> GroupMember {
        let topics: Vec<String> = aggregate_types()
            .iter()
            .map(|t| topic(&self.prefix, t))
            .collect();
        GroupMember::join(&self.broker.address(), group, &topics)
    }

    /// Every committed event, in log order.
    async fn logged(&self) -> Vec<RecordedEvent> {
        // Every event, committed or not when the publisher last looked (`read_log` would leave out
        // those behind the server's oldest transaction, the broker's included).
        let sql = format!("SELECT {COLUMNS} FROM events ORDER BY transaction_id, global_position");
        event_log::fetch_events(&self.app.db.pool, sqlx::query(&sql))
            .await
            .expect("reading the log")
    }

    async fn publisher_checkpoint(&self) -> LogPosition {
        publisher_checkpoint(&self.app.db.pool).await
    }

    /// Reads with a new group member until every logged event has arrived, then checks the delivery.
    async fn receive_everything(&self, group: &str) -> Vec<Received> {
        let logged = self.logged().await;
        let member = self.join_group(group);
        let received = member.take_all(ARRIVAL, event_ids(&logged)).await;
        check_delivery(&self.prefix, &logged, &received);
        received
    }
}

fn event_ids(events: &[RecordedEvent]) -> HashSet<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

/// The checked-in schemas, by `ce_type`.
fn schemas() -> HashMap<String, jsonschema::Validator> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
    std::fs::read_dir(&dir)
        .expect("reading schemas/events")
        .map(|entry| {
            let path = entry.unwrap().path();
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let ce_type = path.file_stem().unwrap().to_string_lossy().into_owned();
            (ce_type, jsonschema::validator_for(&schema).unwrap())
        })
        .collect()
}

/// What a consumer that drops repeated `ce_id`s must see: every logged event once, each stream's events
/// in version order from 1 without a gap, each message carrying its event's attributes and its data
/// without sealed values, valid against the schema of its type. A repeat must equal the first copy.
fn check_delivery(prefix: &str, logged: &[RecordedEvent], received: &[Received]) {
    let schemas = schemas();
    let mut first: HashMap<&str, &Received> = HashMap::new();
    // A stream is a key in a topic (an organization's id keys its `organization` and its `members`).
    let mut versions_by_stream: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in received {
        let id = message.header("ce_id");
        if let Some(earlier) = first.get(id) {
            assert_eq!(earlier.value, message.value, "a repeat of {id} differs");
            assert_eq!(earlier.headers, message.headers, "a repeat of {id} differs");
            continue;
        }
        first.insert(id, message);
        versions_by_stream
            .entry(format!("{}/{}", message.topic, message.key))
            .or_default()
            .push(message.header("ce_streamversion").parse().unwrap());
    }
    let logged_ids = event_ids(logged);
    let received_ids: HashSet<String> = first.keys().map(|id| id.to_string()).collect();
    assert_eq!(
        logged_ids.difference(&received_ids).count(),
        0,
        "events never arrived"
    );
    assert_eq!(
        received_ids.len(),
        logged_ids.len(),
        "unknown events arrived"
    );

    for event in logged {
        let (aggregate_type, id) = event.stream_id.split_once('-').unwrap();
        let message = first[event.event_id.to_string().as_str()];
        assert_eq!(message.topic, topic(prefix, aggregate_type));
        assert_eq!(message.key, id);
        assert_eq!(message.header("ce_specversion"), "1.0");
        assert_eq!(message.header("ce_subject"), id);
        assert_eq!(
            message.header("ce_type"),
            format!("{}.v{}", event.event_type, event.schema_version)
        );
        assert_eq!(message.header("content-type"), "application/json");
        assert_eq!(
            message.header("ce_logposition"),
            event.position().to_string()
        );
        assert_eq!(message.value, value(&event.data));
        assert!(message.value.get("secrets").is_none());
        let schema = &schemas[message.header("ce_type")];
        if let Err(error) = schema.validate(&message.value) {
            panic!(
                "{} does not match its schema: {error}: {}",
                message.header("ce_type"),
                message.value
            );
        }
    }
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in logged {
        let (aggregate_type, id) = event.stream_id.split_once('-').unwrap();
        expected
            .entry(format!("{}/{id}", topic(prefix, aggregate_type)))
            .or_default()
            .push(event.stream_version);
    }
    assert_eq!(
        versions_by_stream, expected,
        "a stream arrived out of order"
    );
}

/// A secret unlike anything else in a message, so that a match cannot be a coincidence.
fn secret(n: u32) -> String {
    format!("sk-live-{n}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn every_event_arrives_once_in_order_valid_and_without_secrets() {
    let s3 = S3Server::start().await;
    let setup = Setup::with_app(TestApp::spawn_with_queue(&s3).await).await;
    let app = &setup.app;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    // A processed message, deleted.
    let stored = tests::processed_messages::message(
        org.parse().unwrap(),
        env.parse().unwrap(),
        domain::processed_queue::MessageStatus::Fail,
        chrono::Utc::now(),
        1,
    );
    let bucket = app.bucket.as_ref().unwrap();
    bucket.put(&stored.key, stored.body).await.unwrap();
    let (status, body) = app
        .delete(&format!(
            "/api/processed-queue/{}?organizationId={org}",
            stored.key
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let alice = app.add_member(&org, "alice", "user").await;
    // A role change as schema version 1 wrote it, then one of today's: both go out as version 2.
    app.append_role_change_v1(&org, &alice, "guest").await;
    let (status, body) = app
        .put(
            &format!("/api/organizations/{org}/members/{alice}"),
            json!({"role": "user"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let secrets: Vec<String> = (0..4).map(secret).collect();
    let (status, variable) = app
        .post(
            "/api/variables",
            json!({"organizationId": org, "environmentId": env, "name": "KEY", "value": secrets[0]}),
        )
        .await;
    assert_eq!(status, 201, "{variable}");
    let (status, model) = app
        .post(
            "/api/models",
            json!({"organizationId": org, "name": "M", "modelUrl": "https://m.example",
                   "token": secrets[1], "clientKey": secrets[2]}),
        )
        .await;
    assert_eq!(status, 201, "{model}");
    let model_id = model["id"].as_str().unwrap();
    let (status, template) = app
        .post(
            "/api/prompt-templates",
            json!({"organizationId": org, "environmentId": env, "modelId": model_id,
                   "name": "Greeting", "promptText": "Hello"}),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let template_path = format!("/api/prompt-templates/{}", template["id"].as_str().unwrap());
    for n in 0..5 {
        let (status, body) = app
            .put(&template_path, json!({"promptText": format!("Hello {n}")}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Executions on a provider that echoes the credential back, and a sentiment analysis.
    let provider = tests::fake_provider::FakeProvider::spawn().await.unwrap();
    for scenario in ["ok", "echo-credential"] {
        let (status, _) = app
            .put(
                &format!("/api/models/{model_id}"),
                json!({"token": secrets[3], "clientKey": null, "modelUrl": provider.url(scenario, "openai")}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, answer) = app
            .post(&format!("{template_path}/execute"), json!({}))
            .await;
        assert!(matches!(status, 200 | 502), "{answer}");
    }
    let (status, answer) = app
        .post(&format!("{template_path}/analyze-sentiment"), json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = app.delete(&template_path).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .put(
            &format!("/api/organizations/{org}"),
            json!({"description": "d"}),
        )
        .await;
    assert_eq!(status, 200);

    let received = setup.receive_everything("every-event").await;
    let types: HashSet<&str> = received.iter().map(|r| r.header("ce_type")).collect();
    for expected in [
        "organization.created.v1",
        "member.added.v1",
        "member.role_changed.v2",
        "variable.created.v1",
        "model.updated.v1",
        "prompt_template.deleted.v1",
        "prompt_template.sentiment_analyzed.v1",
        "execution.requested.v1",
        "execution.succeeded.v1",
        "execution.failed.v1",
        "workflow_entity_type.created.v1",
        "processed_message.deleted.v1",
    ] {
        assert!(
            types.contains(expected),
            "no {expected} arrived: {types:?} {}",
            received.len()
        );
    }
    assert!(
        !types.contains("member.role_changed.v1"),
        "rows of schema version 1 are published in today's shape"
    );
    for message in &received {
        let text = format!("{:?} {}", message.headers, message.value);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a message holds a secret: {text}"
            );
        }
        assert!(
            !text.contains("\"v1."),
            "a message holds ciphertext: {text}"
        );
    }
}

#[tokio::test]
async fn messages_published_after_an_erasure_hold_none_of_the_users_personal_data() {
    let mut setup = Setup::start().await;
    setup.kill_publisher();
    let org = setup.app.create_organization("Acme").await;
    let kept = setup.app.add_member(&org, "kept", "admin").await;
    let zoe = setup.app.add_member(&org, "zoe-erased", "user").await;
    assert_eq!(setup.app.delete(&format!("/api/users/{zoe}")).await.0, 200);
    setup.start_publisher();

    let received = setup.receive_everything("after-erasure").await;
    let of_user = |user: &str, ce_type: &str| {
        received
            .iter()
            .find(|m| m.key == user && m.header("ce_type") == ce_type)
            .unwrap_or_else(|| panic!("no {ce_type} for {user}"))
            .value
            .clone()
    };
    let registered = of_user(&zoe, "user.registered.v1");
    for field in ["subject", "email", "name"] {
        assert_eq!(registered[field], "[erased]", "{registered}");
    }
    assert_eq!(of_user(&zoe, "user.erased.v1"), json!({}));
    // A user who was not erased goes out in plaintext: the publisher opens what the log seals.
    assert_eq!(
        of_user(&kept, "user.registered.v1")["email"],
        "kept@example.test"
    );
    for message in &received {
        let text = format!("{:?} {}", message.headers, message.value);
        assert!(!text.contains("zoe-erased"), "{text}");
        assert!(
            !text.contains("\"p1."),
            "a message holds ciphertext: {text}"
        );
    }
}

/// Twenty new variables, each created and then updated nine times: 200 writes, ten per key in order.
async fn two_hundred_writes(app: &TestApp, org: &str, env: &str) {
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let batch = &batch;
    let writes = (0..20).map(|n| async move {
        let (status, body) = app
            .post(
                "/api/variables",
                json!({"organizationId": org, "environmentId": env, "name": format!("V{n}-{batch}"), "value": "x"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let path = format!("/api/variables/{}", body["id"].as_str().unwrap());
        for round in 0..9 {
            let (status, body) = app
                .put(&path, json!({"description": format!("round {round}")}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    });
    join_all(writes).await;
}

#[tokio::test]
async fn a_broker_outage_loses_nothing_and_writes_keep_being_answered() {
    let mut setup = Setup::start().await;
    let org = setup.app.create_organization("Acme").await;
    let env = setup.app.create_environment(&org, "Production").await;
    // Everything so far is on the broker before it goes down.
    let head = log_head(&setup.app.db.pool).await.unwrap();
    while setup.publisher_checkpoint().await < head {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    setup.broker.stop();
    let before = setup.logged().await.len();
    two_hundred_writes(&setup.app, &org, &env).await;
    assert_eq!(setup.logged().await.len(), before + 200);
    // Nothing was acknowledged during the outage, and the publisher's lag shows it.
    let kafka = event_log::status::statuses(&setup.app.db.pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "kafka")
        .expect("the publisher's status");
    assert_eq!(kafka.behind, 200);
    assert!(kafka.lag_seconds > 0.0);
    setup.broker.resume().await;

    let received = setup.receive_everything("after-outage").await;
    let variables = received
        .iter()
        .filter(|r| r.header("ce_type").starts_with("variable."))
        .map(|r| r.header("ce_id"))
        .collect::<HashSet<_>>();
    assert_eq!(variables.len(), 200);
}

#[tokio::test]
async fn a_publisher_killed_with_messages_in_flight_loses_nothing() {
    let mut setup = Setup::start().await;
    setup.kill_publisher();
    let org = setup.app.create_organization("Acme").await;
    let env = setup.app.create_environment(&org, "Production").await;

    // Killed while draining a backlog of thousands of events.
    for _ in 0..10 {
        two_hundred_writes(&setup.app, &org, &env).await;
    }
    let head = log_head(&setup.app.db.pool).await.unwrap();
    setup.start_publisher();
    while setup.publisher_checkpoint().await == LogPosition::START {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    setup.kill_publisher();
    assert!(
        setup.publisher_checkpoint().await < head,
        "the publisher finished before it was killed; the test needs a longer backlog"
    );
    setup.start_publisher();
    while setup.publisher_checkpoint().await < head {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Killed while the messages it produced wait for a broker that is down: none was acknowledged,
    // so none may count as published.
    setup.broker.stop();
    two_hundred_writes(&setup.app, &org, &env).await;
    // Time to read the new events and hand them to the producer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.kill_publisher();
    assert_eq!(setup.publisher_checkpoint().await, head);
    setup.broker.resume().await;
    setup.start_publisher();

    setup.receive_everything("after-crash").await;
}

#[tokio::test]
async fn a_restarted_group_member_resumes_from_its_committed_offsets() {
    let setup = Setup::start().await;
    let org = setup.app.create_organization("Acme").await;
    let env = setup.app.create_environment(&org, "Production").await;
    two_hundred_writes(&setup.app, &org, &env).await;
    let logged = setup.logged().await;

    let first = setup.join_group("resuming");
    let taken = first.take_until(ARRIVAL, |r| r.len() >= 100).await;
    assert_eq!(taken.len(), 100);
    drop(first);

    let second = setup.join_group("resuming");
    let mut missing = event_ids(&logged);
    for r in &taken {
        missing.remove(r.header("ce_id"));
    }
    let rest = second.take_all(ARRIVAL, missing).await;
    // Nothing the first member committed comes again, and each partition goes on right after the
    // last offset the first member committed in it.
    let committed: HashSet<(String, i32, i64)> = taken
        .iter()
        .map(|r| (r.topic.clone(), r.partition, r.offset))
        .collect();
    for message in &rest {
        assert!(
            !committed.contains(&(message.topic.clone(), message.partition, message.offset)),
            "{message:?} was committed by the first member"
        );
    }
    let mut last_committed: HashMap<(String, i32), i64> = HashMap::new();
    for r in &taken {
        let last = last_committed
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset);
        *last = (*last).max(r.offset);
    }
    for ((topic, partition), last) in &last_committed {
        if let Some(next) = rest
            .iter()
            .find(|r| &r.topic == topic && r.partition == *partition)
        {
            assert_eq!(next.offset, last + 1, "{topic}/{partition} did not resume");
        }
    }
    let mut all = taken;
    all.extend(rest);
    check_delivery(&setup.prefix, &logged, &all);
}
