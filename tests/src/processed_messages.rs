//! Realistic processed messages, as the workflow runtime stores them in the processed queue's bucket,
//! for the local stack's producer (`queue-producer`), the tests and the benchmark. It owns what such a
//! message looks like: its key ([`MessageKey::format`]) with a time-ordered, UUID v7 message id, and
//! its body (a [`StoredMessage`]: a workflow, an input, a result or an error), varied by a number `n`
//! with no randomness, so that the same `n` and time always give the same message ([`message`]);
//! bodies of the wrong shape under well-formed keys ([`malformed`]); and writing a batch of both
//! spread over the last days ([`produce`]).

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use domain::processed_queue::{MessageKey, MessageStatus, StoredMessage};
use futures::stream::{self, StreamExt, TryStreamExt};
use processed_queue::Bucket;
use serde_json::{json, Value};
use uuid::Uuid;

/// How many puts [`produce`] keeps in flight.
const PUT_CONCURRENCY: usize = 16;

/// The workflows messages are processed by.
const WORKFLOWS: [&str; 3] = ["wf-orders", "wf-support-triage", "wf-invoices"];

/// Where messages come from.
const CHANNELS: [&str; 4] = ["email", "chat", "whatsapp", "web-form"];

/// One object of the processed queue: its key and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub key: String,
    pub body: Vec<u8>,
}

/// How message `n` ended, as [`produce`] chooses it: about 70% `success`, 20% `fail` and 10%
/// `ignore`, mixed so that neighbouring messages differ.
pub fn status_of(n: u64) -> MessageStatus {
    match mix(n) % 10 {
        0..=6 => MessageStatus::Success,
        7 | 8 => MessageStatus::Fail,
        _ => MessageStatus::Ignore,
    }
}

/// The message id of message `n` processed at `processed_at`: a UUID v7 of that millisecond, so that
/// ids sort by processing time, whose other bits come from `n` (unique per `n` below 2^56).
pub fn message_id(processed_at: DateTime<Utc>, n: u64) -> String {
    let millis = u64::try_from(processed_at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 10];
    bytes[..3].copy_from_slice(&mix(n).to_be_bytes()[..3]);
    bytes[3..].copy_from_slice(&n.to_be_bytes()[1..]);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Message `n` of `environment_id`, processed at `processed_at` with `status`: received a few
/// hundred milliseconds before, by one of a few workflows, with an input (`channel`, `customerId`,
/// `text`), and a `result` (`success`, `ignore`) or an `error` (`fail`, with `code` and `message`).
pub fn message(
    organization_id: Uuid,
    environment_id: Uuid,
    status: MessageStatus,
    processed_at: DateTime<Utc>,
    n: u64,
) -> Generated {
    let mixed = mix(n);
    let message_id = message_id(processed_at, n);
    let workflow = WORKFLOWS[(n % WORKFLOWS.len() as u64) as usize];
    let variant = ((mixed >> 8) % 3) as usize;
    let reference = 40_000 + (mixed >> 16) % 10_000;
    let received_at = processed_at - Duration::milliseconds(150 + ((mixed >> 24) % 750) as i64);
    let input = json!({
        "channel": CHANNELS[((mixed >> 32) % CHANNELS.len() as u64) as usize],
        "customerId": format!("cus_{:06}", (mixed >> 40) % 1_000_000),
        "text": text(workflow, variant, reference),
    });
    let (result, error) = match status {
        MessageStatus::Success => (Some(result(workflow, variant, reference, mixed)), None),
        MessageStatus::Ignore => (Some(ignored(variant)), None),
        MessageStatus::Fail => (None, Some(failure(workflow, variant))),
    };
    let stored = StoredMessage {
        message_id: message_id.clone(),
        status,
        workflow_id: Some(workflow.to_owned()),
        received_at: Some(received_at),
        processed_at: Some(processed_at),
        input: Some(input),
        result,
        error,
    };
    // The runtime leaves out what it has not got rather than writing `null`.
    let mut body = serde_json::to_value(&stored).expect("a stored message serialises");
    if let Value::Object(fields) = &mut body {
        fields.retain(|_, value| !value.is_null());
    }
    Generated {
        key: MessageKey::format(
            organization_id,
            environment_id,
            status,
            processed_at.date_naive(),
            &message_id,
        ),
        body: serde_json::to_vec(&body).expect("JSON serialises"),
    }
}

/// A well-formed key of `environment_id` whose body is not a processed message: plain text, JSON
/// without `messageId`, or JSON cut short, as `n` picks.
pub fn malformed(
    organization_id: Uuid,
    environment_id: Uuid,
    processed_at: DateTime<Utc>,
    n: u64,
) -> Generated {
    let status = status_of(n);
    let message_id = message_id(processed_at, n);
    let body = match n % 3 {
        0 => "worker crashed before writing the result\n".to_owned(),
        1 => json!({
            "status": status,
            "workflowId": WORKFLOWS[(n % WORKFLOWS.len() as u64) as usize],
            "processedAt": processed_at,
            "note": "messageId missing",
        })
        .to_string(),
        _ => format!(
            r#"{{"messageId":"{message_id}","status":"{}","input":{{"te"#,
            status.as_str()
        ),
    };
    Generated {
        key: MessageKey::format(
            organization_id,
            environment_id,
            status,
            processed_at.date_naive(),
            &message_id,
        ),
        body: body.into_bytes(),
    }
}

/// Writes `count` messages ([`message`], statuses by [`status_of`]) and `malformed` bad ones
/// ([`malformed`], numbered after the messages) into `bucket` for `environment_id`, each kind spread
/// evenly over the last `days` days (at least one) up to now, [`PUT_CONCURRENCY`] puts at a time.
/// The keys written, sorted.
pub async fn produce(
    bucket: &Bucket,
    organization_id: Uuid,
    environment_id: Uuid,
    count: u64,
    days: u32,
    malformed: u64,
) -> anyhow::Result<Vec<String>> {
    let now = Utc::now().timestamp_millis();
    let span = i64::from(days.max(1)) * 86_400_000;
    // The middle of the i-th of `of` equal slices of the span that ends now.
    let at = move |i: u64, of: u64| {
        let offset = i128::from(span) * (2 * i128::from(i) + 1) / (2 * i128::from(of));
        let millis = now - span + offset as i64;
        DateTime::from_timestamp_millis(millis).expect("a time near now")
    };
    let messages = (0..count).map(move |n| {
        message(
            organization_id,
            environment_id,
            status_of(n),
            at(n, count),
            n,
        )
    });
    let bad = (0..malformed).map(move |i| {
        self::malformed(organization_id, environment_id, at(i, malformed), count + i)
    });
    let mut keys: Vec<String> = stream::iter(messages.chain(bad))
        .map(|generated| async move {
            bucket
                .put(&generated.key, generated.body)
                .await
                .with_context(|| {
                    format!("putting {} into bucket {}", generated.key, bucket.name())
                })?;
            Ok::<_, anyhow::Error>(generated.key)
        })
        .buffer_unordered(PUT_CONCURRENCY)
        .try_collect()
        .await?;
    keys.sort();
    Ok(keys)
}

/// What a customer wrote to `workflow`.
fn text(workflow: &str, variant: usize, reference: u64) -> String {
    match (workflow, variant) {
        ("wf-orders", 0) => {
            format!("Where is my order #{reference}? It was supposed to arrive yesterday.")
        }
        ("wf-orders", 1) => format!(
            "Please change the delivery address of order #{reference} to 12 Harbour Street."
        ),
        ("wf-orders", _) => {
            format!("I want to cancel order #{reference}, I picked the wrong size.")
        }
        ("wf-support-triage", 0) => {
            "The app logs me out every few minutes since the last update.".to_owned()
        }
        ("wf-support-triage", 1) => "How do I export my invoices as CSV?".to_owned(),
        ("wf-support-triage", _) => "Thanks for the quick help yesterday, all good now!".to_owned(),
        (_, 0) => format!("Attached is invoice INV-{reference} for last month, due in 30 days."),
        (_, 1) => format!("Can you resend the invoice for order #{reference}? I never got it."),
        (_, _) => format!("We were charged twice for subscription {reference} this month."),
    }
}

/// What processing a message of `workflow` produced.
fn result(workflow: &str, variant: usize, reference: u64, mixed: u64) -> Value {
    let confidence = (70 + (mixed >> 48) % 30) as f64 / 100.0;
    let (intent, action, reply) = match (workflow, variant) {
        ("wf-orders", 0) => (
            "order_status",
            "tracking_sent",
            format!("Order #{reference} is with the carrier and arrives tomorrow."),
        ),
        ("wf-orders", 1) => (
            "change_address",
            "address_updated",
            format!("The delivery address of order #{reference} is updated."),
        ),
        ("wf-orders", _) => (
            "cancel_order",
            "order_cancelled",
            format!("Order #{reference} is cancelled; the refund follows in 3 to 5 days."),
        ),
        ("wf-support-triage", 0) => (
            "bug_report",
            "ticket_created",
            format!("Ticket SUP-{reference} was opened for the engineering team."),
        ),
        ("wf-support-triage", 1) => (
            "how_to",
            "article_sent",
            "Here is how to export invoices: Billing > Invoices > Export.".to_owned(),
        ),
        ("wf-support-triage", _) => (
            "feedback",
            "thanked",
            "Thank you for the kind words!".to_owned(),
        ),
        (_, 0) => (
            "invoice_received",
            "invoice_booked",
            format!("Invoice INV-{reference} is booked for payment."),
        ),
        (_, 1) => (
            "invoice_request",
            "invoice_resent",
            format!("The invoice of order #{reference} was sent again."),
        ),
        (_, _) => (
            "billing_dispute",
            "refund_requested",
            format!("A refund of the double charge on subscription {reference} was requested."),
        ),
    };
    json!({
        "intent": intent,
        "confidence": confidence,
        "action": action,
        "reply": reply,
    })
}

/// Why a message was left alone.
fn ignored(variant: usize) -> Value {
    let reason = match variant {
        0 => "duplicate of a message processed earlier",
        1 => "sender is on the ignore list",
        _ => "no actionable content",
    };
    json!({ "ignored": true, "reason": reason })
}

/// Why processing a message of `workflow` failed.
fn failure(workflow: &str, variant: usize) -> Value {
    let (code, message) = match variant {
        0 => (
            "MODEL_TIMEOUT",
            "the model did not answer within 30 s".to_owned(),
        ),
        1 => (
            "INVALID_OUTPUT",
            format!("the model's answer does not match the output schema of {workflow}"),
        ),
        _ => (
            "UPSTREAM_UNAVAILABLE",
            "the downstream service answered 503 three times".to_owned(),
        ),
    };
    json!({ "code": code, "message": message })
}

/// SplitMix64's finaliser: a fixed, well-spread function of `n`.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use domain::processed_queue::Summary;

    use super::*;

    const ORG: Uuid = Uuid::from_u128(0x0193_a000_0000_7000_8000_0000_0000_0001);
    const ENV: Uuid = Uuid::from_u128(0x0193_a000_0000_7000_8000_0000_0000_0002);

    fn at(rfc3339: &str) -> DateTime<Utc> {
        rfc3339.parse().expect("a time")
    }

    #[test]
    fn a_message_is_summarised_as_its_key_says() {
        for n in 0..30 {
            let processed_at = at("2026-03-01T23:59:59.250Z");
            let generated = message(ORG, ENV, status_of(n), processed_at, n);
            let key = MessageKey::parse_in(ORG, &generated.key).expect("a key of the queue");
            assert_eq!(
                (key.environment_id, key.status, key.day.to_string()),
                (ENV, status_of(n), "2026-03-01".to_owned())
            );
            let Summary::Parsed {
                workflow_id,
                received_at,
                processed_at: summarised_at,
            } = Summary::of(&key, &generated.body)
            else {
                panic!("message {n} is not summarised");
            };
            assert!(WORKFLOWS.contains(&workflow_id.as_deref().unwrap()));
            assert_eq!(summarised_at, Some(processed_at));
            assert!(received_at.unwrap() < processed_at);
            let body: Value = serde_json::from_slice(&generated.body).unwrap();
            let fail = status_of(n) == MessageStatus::Fail;
            assert_eq!(body["error"].is_object(), fail, "{body}");
            assert_eq!(body["result"].is_object(), !fail, "{body}");
            assert!(body["input"]["text"].is_string());
            assert_eq!(message(ORG, ENV, status_of(n), processed_at, n), generated);
        }
    }

    #[test]
    fn ids_sort_by_processing_time_and_differ_by_n() {
        let ids: Vec<String> = (0..100)
            .map(|n| {
                message_id(
                    at("2026-03-01T10:00:00Z") + Duration::milliseconds(n),
                    n as u64,
                )
            })
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        let same_time = message_id(at("2026-03-01T10:00:00Z"), 1);
        assert_ne!(same_time, message_id(at("2026-03-01T10:00:00Z"), 2));
        assert_eq!(
            same_time.parse::<Uuid>().unwrap().get_version_num(),
            7,
            "{same_time}"
        );
    }

    #[test]
    fn statuses_are_mostly_successes() {
        let count = |status| (0..1000).filter(|&n| status_of(n) == status).count();
        let (success, fail, ignore) = (
            count(MessageStatus::Success),
            count(MessageStatus::Fail),
            count(MessageStatus::Ignore),
        );
        assert!((600..800).contains(&success), "{success}");
        assert!((120..280).contains(&fail), "{fail}");
        assert!((50..150).contains(&ignore), "{ignore}");
    }

    #[test]
    fn a_malformed_body_has_a_well_formed_key() {
        for n in 0..3 {
            let generated = malformed(ORG, ENV, at("2026-03-01T10:00:00Z"), n);
            let key = MessageKey::parse_in(ORG, &generated.key).expect("a key of the queue");
            assert!(
                matches!(Summary::of(&key, &generated.body), Summary::Unparsed { .. }),
                "{}",
                String::from_utf8_lossy(&generated.body)
            );
        }
    }
}
