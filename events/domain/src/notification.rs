//! The notification aggregate: what operators did about one platform alert. The alerts themselves
//! are derived from the event log by the projector (`notifications`), keyed by what they are about,
//! so a rebuild derives them again; this stream records only their acknowledgement and resolution,
//! each with who and when (in its events' metadata). Both may be repeated: a resolved alert that
//! fires again is resolved again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum NotificationEvent {
    #[serde(rename = "notification.acknowledged")]
    Acknowledged {},
    #[serde(rename = "notification.resolved")]
    Resolved {},
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationCommand {
    Acknowledge,
    Resolve,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Aggregate for Notification {
    const TYPE: &'static str = "notification";
    type Event = NotificationEvent;
    type Command = NotificationCommand;

    fn apply(&mut self, event: &NotificationEvent, at: DateTime<Utc>) {
        match event {
            NotificationEvent::Acknowledged {} => self.acknowledged_at = Some(at),
            NotificationEvent::Resolved {} => self.resolved_at = Some(at),
        }
    }

    fn decide(&self, command: NotificationCommand) -> Result<Vec<NotificationEvent>, DomainError> {
        Ok(vec![match command {
            NotificationCommand::Acknowledge => NotificationEvent::Acknowledged {},
            NotificationCommand::Resolve => NotificationEvent::Resolved {},
        }])
    }
}
