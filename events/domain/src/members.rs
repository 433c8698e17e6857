//! The members aggregate: who belongs to one organization, and in which role. One stream per
//! organization (`members-<organization id>`), so that the rule "an organization keeps at least one
//! admin" is decided against the whole membership at once and concurrent changes serialise on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Role;
use crate::aggregate::{Aggregate, DomainError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum MembersEvent {
    #[serde(rename = "member.added")]
    Added { user_id: Uuid, role: Role },
    /// Version 2: with the role held before (`null` in events recorded before version 2).
    #[serde(rename = "member.role_changed")]
    RoleChanged {
        user_id: Uuid,
        role: Role,
        previous_role: Option<Role>,
    },
    #[serde(rename = "member.removed")]
    Removed { user_id: Uuid },
}

pub enum MembersCommand {
    Add { user_id: Uuid, role: Role },
    ChangeRole { user_id: Uuid, role: Role },
    Remove { user_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Members {
    pub members: BTreeMap<Uuid, Membership>,
}

impl Members {
    fn admins(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.role == Role::Admin)
            .count()
    }

    /// Refuses a change that would take away the organization's last admin.
    fn keep_an_admin(&self, user_id: Uuid) -> Result<(), DomainError> {
        let is_admin = self
            .members
            .get(&user_id)
            .is_some_and(|m| m.role == Role::Admin);
        if is_admin && self.admins() == 1 {
            return Err(DomainError::Conflict {
                error: "The last admin of an organization cannot be removed or demoted",
                details: "make another member an admin first".into(),
            });
        }
        Ok(())
    }
}

impl Aggregate for Members {
    const TYPE: &'static str = "members";
    type Event = MembersEvent;
    type Command = MembersCommand;

    fn apply(&mut self, event: &MembersEvent, at: DateTime<Utc>) {
        match event {
            MembersEvent::Added { user_id, role } => {
                self.members.insert(
                    *user_id,
                    Membership {
                        role: *role,
                        created_at: at,
                        updated_at: at,
                    },
                );
            }
            MembersEvent::RoleChanged { user_id, role, .. } => {
                if let Some(member) = self.members.get_mut(user_id) {
                    member.role = *role;
                    member.updated_at = at;
                }
            }
            MembersEvent::Removed { user_id } => {
                self.members.remove(user_id);
            }
        }
    }

    fn decide(&self, command: MembersCommand) -> Result<Vec<MembersEvent>, DomainError> {
        match command {
            MembersCommand::Add { role, .. } | MembersCommand::ChangeRole { role, .. }
                if !role.is_assignable() =>
            {
                Err(DomainError::invalid(
                    "role",
                    format!("{role} is not an organization role"),
                ))
            }
            MembersCommand::Add { user_id, role } => {
                if self.members.contains_key(&user_id) {
                    return Err(DomainError::AlreadyExists);
                }
                Ok(vec![MembersEvent::Added { user_id, role }])
            }
            MembersCommand::ChangeRole { user_id, role } => {
                let member = self.members.get(&user_id).ok_or(DomainError::NotFound)?;
                if member.role == role {
                    return Ok(vec![]);
                }
                self.keep_an_admin(user_id)?;
                Ok(vec![MembersEvent::RoleChanged {
                    user_id,
                    role,
                    previous_role: Some(member.role),
                }])
            }
            MembersCommand::Remove { user_id } => {
                if !self.members.contains_key(&user_id) {
                    return Err(DomainError::NotFound);
                }
                self.keep_an_admin(user_id)?;
                Ok(vec![MembersEvent::Removed { user_id }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given::given;

    fn added(user_id: Uuid, role: Role) -> MembersEvent {
        MembersEvent::Added { user_id, role }
    }

    #[test]
    fn the_last_admin_can_be_neither_removed_nor_demoted() {
        let (admin, user) = (Uuid::now_v7(), Uuid::now_v7());
        let members = given::<Members>([added(admin, Role::Admin), added(user, Role::User)]);
        members
            .when(MembersCommand::Remove { user_id: admin })
            .then_conflict();
        members
            .when(MembersCommand::ChangeRole {
                user_id: admin,
                role: Role::Guest,
            })
            .then_conflict();
        members
            .when(MembersCommand::Remove { user_id: user })
            .then([MembersEvent::Removed { user_id: user }]);
    }

    #[test]
    fn with_a_second_admin_the_first_may_go() {
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        given::<Members>([added(first, Role::Admin), added(second, Role::Admin)])
            .when(MembersCommand::Remove { user_id: first })
            .then([MembersEvent::Removed { user_id: first }]);
    }

    #[test]
    fn a_demotion_records_the_role_held_before() {
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        given::<Members>([added(first, Role::Admin), added(second, Role::Admin)])
            .when(MembersCommand::ChangeRole {
                user_id: first,
                role: Role::Guest,
            })
            .then([MembersEvent::RoleChanged {
                user_id: first,
                role: Role::Guest,
                previous_role: Some(Role::Admin),
            }]);
    }

    #[test]
    fn members_are_added_once_in_an_organization_role() {
        let user = Uuid::now_v7();
        let members = given::<Members>([added(user, Role::Guest)]);
        members
            .when(MembersCommand::Add {
                user_id: user,
                role: Role::User,
            })
            .then_refused(DomainError::AlreadyExists);
        assert!(matches!(
            members.state.decide(MembersCommand::Add {
                user_id: Uuid::now_v7(),
                role: Role::System
            }),
            Err(DomainError::Invalid { field, .. }) if field == "role"
        ));
        members
            .when(MembersCommand::ChangeRole {
                user_id: user,
                role: Role::Guest,
            })
            .then([]);
        members
            .when(MembersCommand::Remove {
                user_id: Uuid::now_v7(),
            })
            .then_refused(DomainError::NotFound);
    }
}
