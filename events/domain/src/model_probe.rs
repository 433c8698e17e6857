//! On-demand probes of a model (`model_probe-<model id>`): an operator's minimal request through the
//! same outbound path executions take (`POST /api/v1/admin/models/{id}/probe`), and what it found.
//! Kept apart from the model's own stream so that probing never changes the model's version.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The model's organization; none for a system model.
    pub organization_id: Option<Uuid>,
    pub ok: bool,
    pub latency_ms: u64,
    /// The provider's HTTP status, when it answered.
    pub provider_status: Option<u16>,
    /// Why the probe failed, with credentials scrubbed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ModelProbeEvent {
    #[serde(rename = "model_probe.recorded")]
    Recorded(ProbeResult),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelProbe {
    pub last: Option<ProbeResult>,
    pub probed_at: Option<DateTime<Utc>>,
}

impl Aggregate for ModelProbe {
    const TYPE: &'static str = "model_probe";
    type Event = ModelProbeEvent;
    type Command = ProbeResult;

    fn apply(&mut self, event: &ModelProbeEvent, at: DateTime<Utc>) {
        let ModelProbeEvent::Recorded(result) = event;
        self.last = Some(result.clone());
        self.probed_at = Some(at);
    }

    /// Every probe is recorded, even one that found what the last did: when it ran is news.
    fn decide(&self, result: ProbeResult) -> Result<Vec<ModelProbeEvent>, DomainError> {
        Ok(vec![ModelProbeEvent::Recorded(result)])
    }
}
