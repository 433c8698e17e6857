//! The environment aggregate: a deployment stage inside an organization.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};
use crate::values::{double_option, Description, Name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum EnvironmentEvent {
    #[serde(rename = "environment.created")]
    Created {
        id: Uuid,
        organization_id: Uuid,
        name: String,
        description: Option<String>,
    },
    /// Carries only the fields that changed.
    #[serde(rename = "environment.updated")]
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
    #[serde(rename = "environment.deleted")]
    Deleted {},
}

pub enum EnvironmentCommand {
    Create {
        id: Uuid,
        organization_id: Uuid,
        name: Name,
        description: Option<Description>,
    },
    Update(EnvironmentChanges),
    Delete,
}

/// A partial update: `None` leaves a field unchanged; for `description`, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChanges {
    pub name: Option<Name>,
    pub description: Option<Option<Description>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentData {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `None` before creation and after deletion.
    pub live: Option<EnvironmentData>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Aggregate for Environment {
    const TYPE: &'static str = "environment";
    type Event = EnvironmentEvent;
    type Command = EnvironmentCommand;

    fn apply(&mut self, event: &EnvironmentEvent, at: DateTime<Utc>) {
        match event {
            EnvironmentEvent::Created {
                id,
                organization_id,
                name,
                description,
            } => {
                self.live = Some(EnvironmentData {
                    id: *id,
                    organization_id: *organization_id,
                    name: name.clone(),
                    description: description.clone(),
                    created_at: at,
                    updated_at: at,
                })
            }
            EnvironmentEvent::Updated { name, description } => {
                if let Some(env) = &mut self.live {
                    if let Some(name) = name {
                        env.name = name.clone();
                    }
                    if let Some(description) = description {
                        env.description = description.clone();
                    }
                    env.updated_at = at;
                }
            }
            EnvironmentEvent::Deleted {} => {
                self.live = None;
                self.deleted_at = Some(at);
            }
        }
    }

    fn decide(&self, command: EnvironmentCommand) -> Result<Vec<EnvironmentEvent>, DomainError> {
        match (command, &self.live) {
            (
                EnvironmentCommand::Create {
                    id,
                    organization_id,
                    name,
                    description,
                },
                None,
            ) if self.deleted_at.is_none() => Ok(vec![EnvironmentEvent::Created {
                id,
                organization_id,
                name: name.as_str().to_owned(),
                description: description.map(|d| d.as_str().to_owned()),
            }]),
            (EnvironmentCommand::Create { .. }, _) => Err(DomainError::AlreadyExists),
            (EnvironmentCommand::Update(changes), Some(env)) => {
                let name = changes
                    .name
                    .map(|n| n.as_str().to_owned())
                    .filter(|n| *n != env.name);
                let description = changes
                    .description
                    .map(|d| d.map(|d| d.as_str().to_owned()))
                    .filter(|d| *d != env.description);
                if name.is_none() && description.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![EnvironmentEvent::Updated { name, description }])
            }
            (EnvironmentCommand::Delete, Some(_)) => Ok(vec![EnvironmentEvent::Deleted {}]),
            (EnvironmentCommand::Update(_) | EnvironmentCommand::Delete, None) => {
                Err(DomainError::NotFound)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::aggregate::given::at;

    fn created() -> Environment {
        let events = Environment::default()
            .decide(EnvironmentCommand::Create {
                id: Uuid::nil(),
                organization_id: Uuid::max(),
                name: Name::parse("name", "Production").unwrap(),
                description: Some(Description::parse("description", "Live").unwrap()),
            })
            .unwrap();
        let mut env = Environment::default();
        env.apply(&events[0], at(0));
        env
    }

    #[test]
    fn create_records_the_organization_and_fields() {
        let env = created().live.unwrap();
        assert_eq!(env.organization_id, Uuid::max());
        assert_eq!(env.name, "Production");
        assert_eq!(env.description.as_deref(), Some("Live"));
    }

    #[test]
    fn rename_and_clear_description() {
        let mut env = created();
        let events = env
            .decide(EnvironmentCommand::Update(EnvironmentChanges {
                name: Some(Name::parse("name", "Prod").unwrap()),
                description: Some(None),
            }))
            .unwrap();
        env.apply(&events[0], at(5));
        let live = env.live.unwrap();
        assert_eq!(live.name, "Prod");
        assert_eq!(live.description, None);
        assert_eq!(live.updated_at, at(5));
    }

    #[test]
    fn a_second_create_and_commands_on_a_deleted_environment_are_refused() {
        let mut env = created();
        assert_eq!(
            env.decide(EnvironmentCommand::Create {
                id: Uuid::nil(),
                organization_id: Uuid::max(),
                name: Name::parse("name", "Other").unwrap(),
                description: None,
            }),
            Err(DomainError::AlreadyExists)
        );
        let events = env.decide(EnvironmentCommand::Delete).unwrap();
        env.apply(&events[0], at(1));
        assert_eq!(
            env.decide(EnvironmentCommand::Delete),
            Err(DomainError::NotFound)
        );
    }
}
