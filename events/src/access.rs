//! Who is calling and what they may do: roles, the one permission table every endpoint consults, and
//! the rule that hides other tenants' resources.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::ActorRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// What a permission is about. Displayed as the word used in `403` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Organizations,
    Environments,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Organizations => "organizations",
            Resource::Environments => "environments",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The permission matrix of API.md §3: the only place that says which role may do what.
pub fn role_allows(role: Role, resource: Resource, action: Action) -> bool {
    use Action::*;
    match (role, resource) {
        (Role::System, _) => true,
        // Organizations are created and deleted platform-wide, by System only.
        (Role::Admin, Resource::Organizations) => matches!(action, Read | Update),
        (Role::Admin, Resource::Environments) => true,
        (Role::User | Role::Guest, Resource::Organizations | Resource::Environments) => {
            action == Read
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("Forbidden: You do not have permission to {action} {resource}")]
    Forbidden { action: Action, resource: Resource },
    /// The resource belongs to an organization the caller is not a member of: answered as "not found"
    /// so that other tenants' ids do not leak.
    #[error("not found")]
    Hidden,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's subject.
    pub id: String,
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
        let forbidden = AccessError::Forbidden { action, resource };
        match self.role_in(organization) {
            Some(role) if role_allows(role, resource, action) => Ok(role),
            Some(_) => Err(forbidden),
            // Someone with no role anywhere learns nothing from a 404 either way; tell them plainly.
            None if self.memberships.is_empty() => Err(forbidden),
            None => Err(AccessError::Hidden),
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

    /// May the caller do `action` on `resource` in some organization (or platform-wide)? Lists use
    /// this, then filter rows to [`Actor::visible_organizations`].
    pub fn authorize_anywhere(
        &self,
        resource: Resource,
        action: Action,
    ) -> Result<Role, AccessError> {
        if self.system {
            return Ok(Role::System);
        }
        self.memberships
            .values()
            .copied()
            .find(|role| role_allows(*role, resource, action))
            .ok_or(AccessError::Forbidden { action, resource })
    }

    /// `None`: every organization (System); otherwise the organizations the caller belongs to.
    pub fn visible_organizations(&self) -> Option<Vec<Uuid>> {
        (!self.system).then(|| self.memberships.keys().copied().collect())
    }

    /// The actor as recorded in an event, acting in `role`.
    pub fn as_ref_with(&self, role: Role) -> ActorRef {
        ActorRef {
            id: self.id.clone(),
            role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: Role, organization: Uuid) -> Actor {
        Actor {
            id: "u".into(),
            system: false,
            memberships: HashMap::from([(organization, role)]),
        }
    }

    #[test]
    fn the_matrix_for_organizations_and_environments() {
        use Action::*;
        use Resource::*;
        let cases = [
            (Role::Admin, Organizations, [true, false, true, false]),
            (Role::User, Organizations, [true, false, false, false]),
            (Role::Guest, Organizations, [true, false, false, false]),
            (Role::Admin, Environments, [true, true, true, true]),
            (Role::User, Environments, [true, false, false, false]),
            (Role::Guest, Environments, [true, false, false, false]),
            (Role::System, Organizations, [true, true, true, true]),
        ];
        for (role, resource, expected) in cases {
            let got = [Read, Create, Update, Delete].map(|a| role_allows(role, resource, a));
            assert_eq!(got, expected, "{role} on {resource}");
        }
    }

    #[test]
    fn other_tenants_are_hidden_and_the_roleless_are_forbidden() {
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
        let nobody = Actor {
            id: "n".into(),
            system: false,
            memberships: HashMap::new(),
        };
        let err = nobody
            .authorize_in(own, Resource::Environments, Action::Create)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Forbidden: You do not have permission to create environments"
        );
    }
}
