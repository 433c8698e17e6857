//! Failed messages the processed queue's indexer found (`processed_failures-<organization id>`): the
//! workflow runtime files a message it could not process under `<organization>/<environment>/fail/`,
//! and each page of such messages the indexer indexes for the first time is recorded here, so that the
//! platform's alerts (`notifications`) are derived from the log like every other, and other teams
//! hear of failures on Kafka.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};

/// The most keys an event names; `count` says how many there were.
pub const KEYS_NAMED: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ProcessedFailuresEvent {
    #[serde(rename = "processed_failures.found")]
    Found {
        environment_id: Uuid,
        /// How many failed messages were found.
        count: u64,
        /// The first of their keys, at most [`KEYS_NAMED`].
        keys: Vec<String>,
    },
}

/// Failed messages found in one environment: their keys, in the order listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub environment_id: Uuid,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedFailures {
    pub found: u64,
    pub last_found_at: Option<DateTime<Utc>>,
}

impl Aggregate for ProcessedFailures {
    const TYPE: &'static str = "processed_failures";
    type Event = ProcessedFailuresEvent;
    type Command = Found;

    fn apply(&mut self, event: &ProcessedFailuresEvent, at: DateTime<Utc>) {
        let ProcessedFailuresEvent::Found { count, .. } = event;
        self.found += count;
        self.last_found_at = Some(at);
    }

    /// Finding none records nothing.
    fn decide(&self, found: Found) -> Result<Vec<ProcessedFailuresEvent>, DomainError> {
        if found.keys.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![ProcessedFailuresEvent::Found {
            environment_id: found.environment_id,
            count: found.keys.len() as u64,
            keys: found.keys.into_iter().take(KEYS_NAMED).collect(),
        }])
    }
}
