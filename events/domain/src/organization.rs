//! The organization aggregate: the top-level tenant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};
use crate::values::{double_option, Description, Name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum OrganizationEvent {
    #[serde(rename = "organization.created")]
    Created {
        id: Uuid,
        name: String,
        description: Option<String>,
    },
    /// Carries only the fields that changed.
    #[serde(rename = "organization.updated")]
    Updated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "double_option"
        )]
        #[schemars(with = "Option<String>")]
        description: Option<Option<String>>,
    },
    #[serde(rename = "organization.deleted")]
    Deleted {},
}

pub enum OrganizationCommand {
    Create {
        id: Uuid,
        name: Name,
        description: Option<Description>,
    },
    Update(OrganizationChanges),
    Delete,
}

/// A partial update: `None` leaves a field unchanged; for `description`, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct OrganizationChanges {
    pub name: Option<Name>,
    pub description: Option<Option<Description>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationData {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// `None` before creation and after deletion.
    pub live: Option<OrganizationData>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Aggregate for Organization {
    const TYPE: &'static str = "organization";
    type Event = OrganizationEvent;
    type Command = OrganizationCommand;

    fn apply(&mut self, event: &OrganizationEvent, at: DateTime<Utc>) {
        match event {
            OrganizationEvent::Created {
                id,
                name,
                description,
            } => {
                self.live = Some(OrganizationData {
                    id: *id,
                    name: name.clone(),
                    description: description.clone(),
                    created_at: at,
                    updated_at: at,
                })
            }
            OrganizationEvent::Updated { name, description } => {
                if let Some(org) = &mut self.live {
                    if let Some(name) = name {
                        org.name = name.clone();
                    }
                    if let Some(description) = description {
                        org.description = description.clone();
                    }
                    org.updated_at = at;
                }
            }
            OrganizationEvent::Deleted {} => {
                self.live = None;
                self.deleted_at = Some(at);
            }
        }
    }

    fn decide(&self, command: OrganizationCommand) -> Result<Vec<OrganizationEvent>, DomainError> {
        match (command, &self.live) {
            (
                OrganizationCommand::Create {
                    id,
                    name,
                    description,
                },
                None,
            ) if self.deleted_at.is_none() => Ok(vec![OrganizationEvent::Created {
                id,
                name: name.as_str().to_owned(),
                description: description.map(|d| d.as_str().to_owned()),
            }]),
            (OrganizationCommand::Create { .. }, _) => Err(DomainError::AlreadyExists),
            (OrganizationCommand::Update(changes), Some(org)) => {
                let name = changes
                    .name
                    .map(|n| n.as_str().to_owned())
                    .filter(|n| *n != org.name);
                let description = changes
                    .description
                    .map(|d| d.map(|d| d.as_str().to_owned()))
                    .filter(|d| *d != org.description);
                if name.is_none() && description.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![OrganizationEvent::Updated { name, description }])
            }
            (OrganizationCommand::Delete, Some(_)) => Ok(vec![OrganizationEvent::Deleted {}]),
            (OrganizationCommand::Update(_) | OrganizationCommand::Delete, None) => {
                Err(DomainError::NotFound)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::aggregate::given::{at, given};

    fn fold(events: &[OrganizationEvent]) -> Organization {
        given::<Organization>(events.to_vec()).state
    }

    fn create(name: &str) -> OrganizationCommand {
        OrganizationCommand::Create {
            id: Uuid::nil(),
            name: Name::parse("name", name).unwrap(),
            description: None,
        }
    }

    #[test]
    fn create_then_update_only_records_what_changed() {
        let created = Organization::default().decide(create("Acme")).unwrap();
        let org = fold(&created);
        let events = org
            .decide(OrganizationCommand::Update(OrganizationChanges {
                name: Some(Name::parse("name", "Acme").unwrap()),
                description: Some(Some(Description::parse("description", "HQ").unwrap())),
            }))
            .unwrap();
        assert_eq!(
            events,
            vec![OrganizationEvent::Updated {
                name: None,
                description: Some(Some("HQ".into()))
            }]
        );
        let org = fold(&[created, events].concat());
        let live = org.live.unwrap();
        assert_eq!(live.description.as_deref(), Some("HQ"));
        assert_eq!(live.created_at, at(0));
        assert_eq!(live.updated_at, at(1));
    }

    #[test]
    fn an_update_that_changes_nothing_produces_no_event() {
        let org = fold(&Organization::default().decide(create("Acme")).unwrap());
        let events = org
            .decide(OrganizationCommand::Update(OrganizationChanges::default()))
            .unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn a_deleted_organization_cannot_be_updated_deleted_or_recreated() {
        let created = Organization::default().decide(create("Acme")).unwrap();
        let org = fold(&[created, vec![OrganizationEvent::Deleted {}]].concat());
        assert!(org.live.is_none());
        assert_eq!(
            org.decide(OrganizationCommand::Delete),
            Err(DomainError::NotFound)
        );
        assert_eq!(
            org.decide(OrganizationCommand::Update(OrganizationChanges::default())),
            Err(DomainError::NotFound)
        );
        assert_eq!(org.decide(create("Acme")), Err(DomainError::AlreadyExists));
    }

    #[test]
    fn clearing_the_description_is_recorded_as_null() {
        let event = OrganizationEvent::Updated {
            name: None,
            description: Some(None),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "organization.updated", "data": {"description": null}})
        );
        assert_eq!(
            serde_json::from_value::<OrganizationEvent>(json).unwrap(),
            event
        );
    }
}
