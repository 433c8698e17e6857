//! Who is calling and what they may do: roles, the one permission table every endpoint consults, and
//! the rule that hides other tenants' resources.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::ActorRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Admin,
    User,
    Guest,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::System => "system",
            Role::Admin => "admin",
            Role::User => "user",
            Role::Guest => "guest",
        })
    }
}

impl Role {
    /// The roles a membership can hold, in the order `GET /api/roles` lists them.
    pub const ASSIGNABLE: [Role; 3] = [Role::Admin, Role::User, Role::Guest];

    /// Whether the role belongs to organization memberships (System is platform-wide).
    pub fn is_assignable(self) -> bool {
        self != Role::System
    }

    /// The role's id. Fixed for ever, so that clients may store it.
    pub fn id(self) -> Uuid {
        Uuid::from_u128(match self {
            Role::System => 0x0193_0000_0000_7000_8000_0000_0000_0000,
            Role::Admin => 0x0193_0000_0000_7000_8000_0000_0000_0001,
            Role::User => 0x0193_0000_0000_7000_8000_0000_0000_0002,
            Role::Guest => 0x0193_0000_0000_7000_8000_0000_0000_0003,
        })
    }

    pub fn description(self) -> &'static str {
        match self {
            Role::System => "Platform administrator",
            Role::Admin => "Organization administrator",
            Role::User => "Standard user",
            Role::Guest => "Read-only access",
        }
    }
}

/// What a permission is about. Displayed as the word used in `403` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Organizations,
    Environments,
    Members,
    /// Platform-wide user administration: the user list and the System role.
    Users,
    /// Environment-scoped variables with write-only values.
    Variables,
    /// The API's `entities:*`: models, workflow entities and their types, prompt templates, prompts.
    Entities,
    Workflows,
    /// Platform-wide model configurations (`GET /api/system-models/visible` is open to everyone).
    SystemModels,
    /// The audit trail and event history: System users everywhere, admins in their organizations.
    AuditEvents,
    /// The processed queue's messages: every member reads them; admins delete them.
    ProcessedMessages,
    /// Reports to the platform's triage queue (`POST /api/feedback`): every member submits them.
    Feedback,
    /// The operator surface, `/api/v1/admin/*`: System users only.
    Operations,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Organizations => "organizations",
            Resource::Environments => "environments",
            Resource::Members => "members",
            Resource::Users => "users",
            Resource::Variables => "variables",
            Resource::Entities => "entities",
            Resource::Workflows => "workflows",
            Resource::SystemModels => "system models",
            Resource::AuditEvents => "audit events",
            Resource::ProcessedMessages => "processed messages",
            Resource::Feedback => "feedback",
            Resource::Operations => "the operator surface",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        })
    }
}

/// The permission matrix (contract §3, `events/docs/contract.md`): the only place that says which
/// role may do what.
pub fn role_allows(role: Role, resource: Resource, action: Action) -> bool {
    use Action::*;
    use Resource::*;
    match (role, resource) {
        (Role::System, _) => true,
        // Organizations are created and deleted platform-wide, by System only.
        (Role::Admin, Organizations) => matches!(action, Read | Update),
        (Role::Admin, Environments | Members | Variables | Entities | Workflows) => true,
        (Role::User, Workflows) => true,
        (
            Role::User | Role::Guest,
            Organizations | Environments | Members | Variables | Entities,
        ) => action == Read,
        (Role::Guest, Workflows) => action == Read,
        (Role::Admin, AuditEvents) => action == Read,
        (Role::Admin, ProcessedMessages) => matches!(action, Read | Delete),
        (Role::User | Role::Guest, ProcessedMessages) => action == Read,
        (Role::Admin | Role::User | Role::Guest, Users | SystemModels) => false,
        (Role::User | Role::Guest, AuditEvents) => false,
        (Role::Admin | Role::User | Role::Guest, Feedback) => action == Create,
        (Role::Admin | Role::User | Role::Guest, Operations) => false,
    }
}

/// One question to the permission table: `action` on `resource` inside `organization`, or
/// platform-wide (`None`). A write keeps the one it passed with the response stored under its
/// idempotency key, so that a replay asks it again of the caller's current roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub organization: Option<Uuid>,
    pub resource: Resource,
    pub action: Action,
}

impl Permission {
    pub fn within(organization: Uuid, resource: Resource, action: Action) -> Self {
        Permission {
            organization: Some(organization),
            resource,
            action,
        }
    }

    pub fn platform(resource: Resource, action: Action) -> Self {
        Permission {
            organization: None,
            resource,
            action,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("Forbidden: You do not have permission to {action} {resource}")]
    Forbidden { action: Action, resource: Resource },
    /// The resource belongs to an organization the caller is not a member of. Services answer exactly
    /// as they would for a resource that does not exist, so that other tenants' ids do not leak.
    #[error("not found")]
    Hidden,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Uuid,
    pub system: bool,
    /// The caller's role in each organization it belongs to.
    pub memberships: HashMap<Uuid, Role>,
}

impl Actor {
    pub fn role_in(&self, organization: Uuid) -> Option<Role> {
        if self.system {
            Some(Role::System)
        } else {
            self.memberships.get(&organization).copied()
        }
    }

    /// May the caller do `action` on `resource` inside `organization`? Returns the role it acts in.
    pub fn authorize_in(
        &self,
        organization: Uuid,
        resource: Resource,
        action: Action,
    ) -> Result<Role, AccessError> {
        match self.role_in(organization) {
            Some(role) if role_allows(role, resource, action) => Ok(role),
            Some(_) => Err(AccessError::Forbidden { action, resource }),
            None => Err(AccessError::Hidden),
        }
    }

    /// [`Actor::authorize_in`] or [`Actor::authorize_platform`], as `permission` says.
    pub fn authorize(&self, permission: &Permission) -> Result<Role, AccessError> {
        match permission.organization {
            Some(organization) => {
                self.authorize_in(organization, permission.resource, permission.action)
            }
            None => self.authorize_platform(permission.resource, permission.action),
        }
    }

    /// May the caller do `action` on `resource` platform-wide (outside any one organization)?
    pub fn authorize_platform(
        &self,
        resource: Resource,
        action: Action,
    ) -> Result<Role, AccessError> {
        if self.system && role_allows(Role::System, resource, action) {
            Ok(Role::System)
        } else {
            Err(AccessError::Forbidden { action, resource })
        }
    }

    /// The early check of a request whose organization is not known yet (it is in the body, or the
    /// resource must be loaded first): refuses callers whose roles allow `action` nowhere, before their
    /// input is looked at. A caller with no membership at all passes: [`Actor::authorize_in`] then hides
    /// the organization from it, as from anyone outside it.
    pub fn authorize_anywhere(
        &self,
        resource: Resource,
        action: Action,
    ) -> Result<(), AccessError> {
        let allowed = self.system
            || self.memberships.is_empty()
            || self
                .memberships
                .values()
                .any(|role| role_allows(*role, resource, action));
        if allowed {
            Ok(())
        } else {
            Err(AccessError::Forbidden { action, resource })
        }
    }

    /// The organizations whose rows a list of `resource` may show: `None` for all (System), otherwise
    /// those where the caller's role may read it.
    pub fn readable_organizations(&self, resource: Resource) -> Option<Vec<Uuid>> {
        (!self.system).then(|| {
            self.memberships
                .iter()
                .filter(|(_, role)| role_allows(**role, resource, Action::Read))
                .map(|(organization, _)| *organization)
                .collect()
        })
    }

    /// A user acting on its own account (registering, signing in or out): no role, no memberships.
    pub fn own_account(user_id: Uuid) -> Self {
        Actor {
            user_id,
            system: false,
            memberships: HashMap::new(),
        }
    }

    /// The actor as recorded in an event of its own account: without a role.
    pub fn as_own_ref(&self) -> ActorRef {
        ActorRef {
            id: self.user_id.to_string(),
            role: None,
        }
    }

    /// The actor as recorded in an event, acting in `role`.
    pub fn as_ref_with(&self, role: Role) -> ActorRef {
        ActorRef {
            id: self.user_id.to_string(),
            role: Some(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: Role, organization: Uuid) -> Actor {
        Actor {
            user_id: Uuid::now_v7(),
            system: false,
            memberships: HashMap::from([(organization, role)]),
        }
    }

    #[test]
    fn the_matrix() {
        use Action::*;
        use Resource::*;
        let cases = [
            (Role::Admin, Organizations, [true, false, true, false]),
            (Role::User, Organizations, [true, false, false, false]),
            (Role::Guest, Organizations, [true, false, false, false]),
            (Role::Admin, Environments, [true, true, true, true]),
            (Role::User, Environments, [true, false, false, false]),
            (Role::Guest, Environments, [true, false, false, false]),
            (Role::Admin, Members, [true, true, true, true]),
            (Role::User, Members, [true, false, false, false]),
            (Role::Guest, Members, [true, false, false, false]),
            (Role::Admin, Users, [false, false, false, false]),
            (Role::Admin, Variables, [true, true, true, true]),
            (Role::User, Variables, [true, false, false, false]),
            (Role::Guest, Variables, [true, false, false, false]),
            (Role::Admin, Entities, [true, true, true, true]),
            (Role::User, Entities, [true, false, false, false]),
            (Role::Guest, Entities, [true, false, false, false]),
            (Role::Admin, Workflows, [true, true, true, true]),
            (Role::User, Workflows, [true, true, true, true]),
            (Role::Guest, Workflows, [true, false, false, false]),
            (Role::Admin, SystemModels, [false, false, false, false]),
            (Role::System, SystemModels, [true, true, true, true]),
            (Role::Admin, AuditEvents, [true, false, false, false]),
            (Role::User, AuditEvents, [false, false, false, false]),
            (Role::Guest, AuditEvents, [false, false, false, false]),
            (Role::Admin, ProcessedMessages, [true, false, false, true]),
            (Role::User, ProcessedMessages, [true, false, false, false]),
            (Role::Guest, ProcessedMessages, [true, false, false, false]),
            (Role::System, ProcessedMessages, [true, true, true, true]),
            (Role::System, Organizations, [true, true, true, true]),
            (Role::System, Users, [true, true, true, true]),
            (Role::Admin, Feedback, [false, true, false, false]),
            (Role::User, Feedback, [false, true, false, false]),
            (Role::Guest, Feedback, [false, true, false, false]),
            (Role::Admin, Operations, [false, false, false, false]),
            (Role::System, Operations, [true, true, true, true]),
        ];
        for (role, resource, expected) in cases {
            let got = [Read, Create, Update, Delete].map(|a| role_allows(role, resource, a));
            assert_eq!(got, expected, "{role} on {resource}");
        }
    }

    #[test]
    fn other_tenants_are_hidden_and_missing_permissions_forbidden() {
        let own = Uuid::now_v7();
        let other = Uuid::now_v7();
        let admin = member(Role::Admin, own);
        assert_eq!(
            admin.authorize_in(own, Resource::Environments, Action::Delete),
            Ok(Role::Admin)
        );
        assert_eq!(
            admin.authorize_in(other, Resource::Environments, Action::Read),
            Err(AccessError::Hidden)
        );
        let guest = member(Role::Guest, own);
        let err = guest
            .authorize_in(own, Resource::Environments, Action::Create)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Forbidden: You do not have permission to create environments"
        );
        assert!(guest
            .authorize_anywhere(Resource::Members, Action::Create)
            .is_err());
    }

    #[test]
    fn lists_show_only_the_callers_organizations() {
        let own = Uuid::now_v7();
        assert_eq!(
            member(Role::Guest, own).readable_organizations(Resource::Environments),
            Some(vec![own])
        );
        let nobody = Actor {
            user_id: Uuid::now_v7(),
            system: false,
            memberships: HashMap::new(),
        };
        assert_eq!(
            nobody.readable_organizations(Resource::Organizations),
            Some(vec![])
        );
        assert!(nobody
            .authorize_anywhere(Resource::Environments, Action::Create)
            .is_ok());
        assert_eq!(
            nobody.authorize_in(own, Resource::Environments, Action::Create),
            Err(AccessError::Hidden)
        );
    }
}
