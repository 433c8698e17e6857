//! The event envelope: what every stored event carries besides its payload, and the log position that
//! orders the whole log.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::access::Role;

/// A place in the log, in the order readers see it: by writing transaction, then by global position.
///
/// Ordering by transaction first is what makes following the log safe: a reader only takes events of
/// transactions older than every transaction still in flight, so nothing can later appear behind a
/// position it has passed. Consistency tokens and projection checkpoints are positions of this kind.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub transaction_id: i64,
    pub global_position: i64,
}

impl LogPosition {
    pub const START: LogPosition = LogPosition {
        transaction_id: 0,
        global_position: 0,
    };
}

/// Rendered as the opaque consistency token that write responses carry.
impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}", self.transaction_id, self.global_position)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a consistency token")]
pub struct InvalidToken;

impl FromStr for LogPosition {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, pos) = s.split_once('.').ok_or(InvalidToken)?;
        let parse = |part: &str| i64::from_str_radix(part, 16).map_err(|_| InvalidToken);
        Ok(LogPosition {
            transaction_id: parse(tx)?,
            global_position: parse(pos)?,
        })
    }
}

/// Who did something, as recorded in every event: the user id and the role acted in. The role is
/// `None` when users act on their own account (registering, signing in or out), outside any role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRef {
    pub id: String,
    pub role: Option<Role>,
}

/// Everything an event records about the request that caused it (contract §6,
/// `events/docs/contract.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    pub actor: ActorRef,
    pub organization_id: Option<Uuid>,
    pub request_id: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The interface the request came through when it was not the REST API itself; absent for REST
    /// (and in every event recorded before channels were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
}

/// An interface that serves the API's operations through another protocol. The service that
/// forwards a request into the API marks it with a request extension, which no client can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The MCP server (`command-api/mcp`): a tool an AI agent called.
    Mcp,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mcp => "mcp",
        }
    }
}

/// Where a request came from: what every event it causes records besides the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// Set by the API from the request's extensions, never from its headers.
    pub channel: Option<Channel>,
}

impl RequestContext {
    /// Reads the context from request headers (`X-Request-Id`, `X-Correlation-Id`, `X-Real-IP`,
    /// `X-Forwarded-For`, `User-Agent`; names in lower case), falling back to the peer's address. The
    /// gateway sets the forwarding headers; a request without an id gets a fresh one.
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        peer_ip: Option<String>,
    ) -> Self {
        let request_id = header("x-request-id")
            .map(str::to_owned)
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let client_ip = header("x-real-ip")
            .or_else(|| {
                header("x-forwarded-for")
                    .and_then(|v| v.split(',').next())
                    .map(str::trim)
            })
            .map(str::to_owned)
            .or(peer_ip);
        RequestContext {
            correlation_id: header("x-correlation-id")
                .map(str::to_owned)
                .unwrap_or_else(|| request_id.clone()),
            request_id,
            client_ip,
            user_agent: header("user-agent").map(str::to_owned),
            channel: None,
        }
    }

    pub fn metadata(&self, actor: ActorRef, organization_id: Option<Uuid>) -> EventMetadata {
        EventMetadata {
            actor,
            organization_id,
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: None,
            client_ip: self.client_ip.clone(),
            user_agent: self.user_agent.clone(),
            channel: self.channel,
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

impl NewEvent {
    /// Wraps a domain event. The time is truncated to the microseconds PostgreSQL stores, so state folded
    /// before the append equals state folded from the stored row.
    pub fn new<E: Serialize>(
        event: &E,
        metadata: EventMetadata,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        let (event_type, data) = split_tagged(event);
        NewEvent {
            event_id: Uuid::now_v7(),
            schema_version: crate::upcast::current_version(&event_type),
            event_type,
            data,
            metadata,
            recorded_at: recorded_at.trunc_subsecs(6),
        }
    }
}

/// An event as read from the log, its payload upcast to the current version of its type (see
/// [`crate::upcast`]): `schema_version` and `data` are the current shape, whatever the row holds.
/// Personal data in it is opened, or reads as erased ([`crate::personal`]). `event_log` decodes rows
/// into it.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub global_position: i64,
    pub transaction_id: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn position(&self) -> LogPosition {
        LogPosition {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }

    /// Decodes the payload into a domain event enum (see [`split_tagged`] for the shape).
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(json!({ "type": self.event_type, "data": self.data }))
    }
}

impl RecordedEvent {
    /// An event as a unit test reads it from the log.
    pub fn fixture(stream_id: &str, event_type: &str, stream_version: i64, data: Value) -> Self {
        RecordedEvent {
            global_position: 40 + stream_version,
            transaction_id: 7,
            stream_id: stream_id.into(),
            stream_version,
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: EventMetadata::fixture(),
            recorded_at: Utc::now(),
        }
    }
}

impl EventMetadata {
    /// What a unit test's event records about its request.
    pub fn fixture() -> Self {
        EventMetadata {
            actor: ActorRef {
                id: "u".into(),
                role: None,
            },
            organization_id: None,
            request_id: "r".into(),
            correlation_id: "r".into(),
            causation_id: None,
            client_ip: Some("10.0.0.1".into()),
            user_agent: None,
            channel: None,
        }
    }
}

/// Domain event enums are serde "adjacently tagged" (`{"type": ..., "data": ...}`): the tag becomes the
/// stored `event_type`, the content the stored `data`.
fn split_tagged<E: Serialize>(event: &E) -> (String, Value) {
    // Serialising plain data structs to a Value cannot fail; a failure here is a programming error in
    // the event type's definition.
    let mut value = serde_json::to_value(event).expect("domain events serialise to JSON");
    let event_type = match value.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => panic!("domain event enums must be #[serde(tag = \"type\", content = \"data\")]"),
    };
    let data = value
        .get_mut("data")
        .map(Value::take)
        .unwrap_or_else(|| json!({}));
    (event_type, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_tokens_round_trip_and_order_by_transaction_first() {
        let a = LogPosition {
            transaction_id: 10,
            global_position: 99,
        };
        let b = LogPosition {
            transaction_id: 11,
            global_position: 5,
        };
        assert!(a < b);
        assert_eq!(a.to_string().parse::<LogPosition>().unwrap(), a);
        assert!("12".parse::<LogPosition>().is_err());
        assert!("x.1".parse::<LogPosition>().is_err());
    }
}
