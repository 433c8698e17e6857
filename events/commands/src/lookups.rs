//! What a write's events imply outside the log, committed in the same transaction: the access lookups
//! every request is authorised against (`access_users`, `access_memberships`), and the keys that go
//! when an organization is deleted (its data key, `crate::secrets`) or a user erased (its personal
//! data key, `event_log::personal`, with its sessions and kept responses); and what an
//! organization's budget is and what it has spent this month (`organization_budgets`,
//! `organization_spend`), which executions are refused against (`402` past a hard stop) with no lag.
//!
//! They are derived here, in Rust, from the events the write appends, each read as the current version
//! of its type through `domain::upcast` (as every reader of the log reads them), so that a new version
//! of an event cannot leave authorisation reading an old shape. `WriteSet::append` derives them and
//! `append_write` applies them with `apply_lookups` (migration `0013`); nothing else writes those
//! tables.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use domain::access::Role;
use domain::aggregate::Aggregate;
use domain::budget::{self, Budget, BudgetEvent};
use domain::envelope::NewEvent;
use domain::execution::{Execution, ExecutionEvent};
use domain::members::{Members, MembersEvent};
use domain::organization::{Organization, OrganizationEvent};
use domain::user::{User, UserEvent};

/// The lookups of one write (which appends to one stream).
#[derive(Clone, Default, Serialize)]
pub struct Lookups {
    registered: Vec<RegisteredUser>,
    profiles: Vec<Profile>,
    system_roles: Vec<SystemRole>,
    memberships: Vec<Membership>,
    memberships_removed: Vec<MembershipRemoved>,
    organization_deleted: Option<Uuid>,
    user_erased: Option<Uuid>,
    budget_set: Option<BudgetRow>,
    budget_removed: Option<Uuid>,
    spend: Vec<Spend>,
}

/// Never prints personal data.
impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lookups(..)")
    }
}

#[derive(Clone, Serialize)]
struct RegisteredUser {
    user_id: Uuid,
    subject: String,
    email: Option<String>,
    name: Option<String>,
}

/// Absent fields keep their value.
#[derive(Clone, Serialize)]
struct Profile {
    user_id: Uuid,
    email: Option<String>,
    name: Option<String>,
}

#[derive(Clone, Serialize)]
struct SystemRole {
    user_id: Uuid,
    granted: bool,
}

#[derive(Clone, Serialize)]
struct Membership {
    user_id: Uuid,
    organization_id: Uuid,
    role: Role,
}

/// An organization's budget, as the hard stop, `GET …/budget` and billing health read it.
#[derive(Clone, Serialize)]
struct BudgetRow {
    organization_id: Uuid,
    monthly_limit: f64,
    currency: String,
    alert_at: Vec<f64>,
    hard_stop: bool,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// What a finished execution cost, added to its organization's spend in the month it finished.
#[derive(Clone, Serialize)]
struct Spend {
    organization_id: Uuid,
    period: chrono::NaiveDate,
    currency: String,
    amount: f64,
}

#[derive(Clone, Serialize)]
struct MembershipRemoved {
    user_id: Uuid,
    organization_id: Uuid,
}

impl Lookups {
    /// The lookups `events`, appended to `stream_id`, imply. Panics on an event of a user, members or
    /// organization stream that does not decode as its aggregate's event: only this system's own
    /// commands append to those streams.
    pub fn of(stream_id: &str, events: &[NewEvent]) -> Lookups {
        let mut lookups = Lookups::default();
        let Some((kind, id)) = stream_id.split_once('-') else {
            return lookups;
        };
        let Ok(id) = id.parse::<Uuid>() else {
            return lookups;
        };
        match kind {
            User::TYPE => {
                for event in decoded::<UserEvent>(events) {
                    lookups.user(id, event);
                }
            }
            Members::TYPE => {
                // The end state of each membership the write touched, in event order.
                let mut touched: BTreeMap<Uuid, Option<Role>> = BTreeMap::new();
                for event in decoded::<MembersEvent>(events) {
                    match event {
                        MembersEvent::Added { user_id, role }
                        | MembersEvent::RoleChanged { user_id, role, .. } => {
                            touched.insert(user_id, Some(role));
                        }
                        MembersEvent::Removed { user_id } => {
                            touched.insert(user_id, None);
                        }
                    }
                }
                for (user_id, role) in touched {
                    match role {
                        Some(role) => lookups.memberships.push(Membership {
                            user_id,
                            organization_id: id,
                            role,
                        }),
                        None => lookups.memberships_removed.push(MembershipRemoved {
                            user_id,
                            organization_id: id,
                        }),
                    }
                }
            }
            Budget::TYPE => {
                for (event, decoded) in events.iter().zip(decoded::<BudgetEvent>(events)) {
                    match decoded {
                        BudgetEvent::Set { limits, .. } => {
                            lookups.budget_removed = None;
                            lookups.budget_set = Some(BudgetRow {
                                organization_id: id,
                                monthly_limit: limits.monthly_limit,
                                currency: limits.currency,
                                alert_at: limits.alert_at,
                                hard_stop: limits.hard_stop,
                                updated_at: event.recorded_at,
                            });
                        }
                        BudgetEvent::Removed {} => {
                            lookups.budget_set = None;
                            lookups.budget_removed = Some(id);
                        }
                    }
                }
            }
            Execution::TYPE => {
                // Only an execution's end has a cost; its request (the rendered prompt) is not decoded.
                let ends = events
                    .iter()
                    .filter(|e| e.event_type == "execution.succeeded");
                for event in ends {
                    let (
                        ExecutionEvent::Succeeded {
                            cost: Some(cost), ..
                        },
                        Some(organization_id),
                    ) = (decode(event), event.metadata.organization_id)
                    else {
                        continue;
                    };
                    lookups.spend.push(Spend {
                        organization_id,
                        period: budget::period(event.recorded_at),
                        currency: cost.currency,
                        amount: cost.total,
                    });
                }
            }
            Organization::TYPE => {
                for event in decoded::<OrganizationEvent>(events) {
                    if let OrganizationEvent::Deleted {} = event {
                        lookups.organization_deleted = Some(id);
                    }
                }
            }
            _ => {}
        }
        lookups
    }

    /// Whether the write implies nothing outside the log (then `append_write` skips `apply_lookups`).
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
            && self.profiles.is_empty()
            && self.system_roles.is_empty()
            && self.memberships.is_empty()
            && self.memberships_removed.is_empty()
            && self.organization_deleted.is_none()
            && self.user_erased.is_none()
            && self.budget_set.is_none()
            && self.budget_removed.is_none()
            && self.spend.is_empty()
    }

    /// Whose access lookups these change.
    pub fn access_changes(&self) -> AccessChanges {
        if self.organization_deleted.is_some() {
            return AccessChanges::Everyone;
        }
        let users: Vec<Uuid> = (self.registered.iter().map(|r| r.user_id))
            .chain(self.profiles.iter().map(|p| p.user_id))
            .chain(self.system_roles.iter().map(|r| r.user_id))
            .chain(self.memberships.iter().map(|m| m.user_id))
            .chain(self.memberships_removed.iter().map(|m| m.user_id))
            .chain(self.user_erased)
            .collect();
        if users.is_empty() {
            AccessChanges::None
        } else {
            AccessChanges::Users(users)
        }
    }

    fn user(&mut self, user_id: Uuid, event: UserEvent) {
        match event {
            UserEvent::Registered {
                subject,
                email,
                name,
                ..
            } => self.registered.push(RegisteredUser {
                user_id,
                subject,
                email,
                name,
            }),
            UserEvent::ProfileUpdated { email, name } => self.profiles.push(Profile {
                user_id,
                email,
                name,
            }),
            UserEvent::SystemRoleGranted {} => self.system_roles.push(SystemRole {
                user_id,
                granted: true,
            }),
            UserEvent::SystemRoleRevoked {} => self.system_roles.push(SystemRole {
                user_id,
                granted: false,
            }),
            UserEvent::Erased {} => self.user_erased = Some(user_id),
            UserEvent::SignedIn { .. } | UserEvent::SignedOut { .. } => {}
        }
    }
}

/// Whose access lookups a write changes: what the caches of them must drop when it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessChanges {
    None,
    Users(Vec<Uuid>),
    /// An organization was deleted: any of its members.
    Everyone,
}

/// `events` as their aggregate's event type, each upcast to its type's current version first.
fn decoded<E: DeserializeOwned>(events: &[NewEvent]) -> impl Iterator<Item = E> + '_ {
    events.iter().map(|event| decode(event))
}

fn decode<E: DeserializeOwned>(event: &NewEvent) -> E {
    let (_, data) =
        domain::upcast::upcast(&event.event_type, event.schema_version, event.data.clone());
    serde_json::from_value(json!({ "type": event.event_type, "data": data }))
        .unwrap_or_else(|error| panic!("a {} event does not decode: {error}", event.event_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::envelope::EventMetadata;
    use serde_json::Value;

    fn event(event_type: &str, schema_version: i32, data: Value) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            data,
            metadata: EventMetadata::fixture(),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn as_json(lookups: &Lookups) -> Value {
        serde_json::to_value(lookups).unwrap()
    }

    #[test]
    fn memberships_end_in_the_state_the_last_event_leaves_them_in() {
        let org = Uuid::now_v7();
        let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let lookups = Lookups::of(
            &format!("members-{org}"),
            &[
                event("member.added", 1, json!({ "userId": ann, "role": "user" })),
                event("member.added", 1, json!({ "userId": bob, "role": "user" })),
                event("member.removed", 1, json!({ "userId": bob })),
                // A row as version 1 wrote it reads as version 2.
                event(
                    "member.role_changed",
                    1,
                    json!({ "userId": ann, "role": "admin" }),
                ),
            ],
        );
        let json = as_json(&lookups);
        assert_eq!(
            json["memberships"],
            json!([{ "user_id": ann, "organization_id": org, "role": "admin" }])
        );
        assert_eq!(
            json["memberships_removed"],
            json!([{ "user_id": bob, "organization_id": org }])
        );
    }

    #[test]
    fn users_organizations_and_other_streams() {
        let id = Uuid::now_v7();
        let user = as_json(&Lookups::of(
            &format!("user-{id}"),
            &[
                event(
                    "user.registered",
                    1,
                    json!({ "id": id, "subject": "s", "email": "e@x.test", "name": null }),
                ),
                event("user.system_role_granted", 1, json!({})),
                event("user.erased", 1, json!({})),
            ],
        ));
        assert_eq!(user["registered"][0]["email"], "e@x.test");
        assert_eq!(user["system_roles"][0]["granted"], true);
        assert_eq!(user["user_erased"], json!(id));

        let org = as_json(&Lookups::of(
            &format!("organization-{id}"),
            &[event("organization.deleted", 1, json!({}))],
        ));
        assert_eq!(org["organization_deleted"], json!(id));

        let other = as_json(&Lookups::of(
            &format!("prompt-{id}"),
            &[event("prompt.deleted", 1, json!({}))],
        ));
        assert_eq!(other["organization_deleted"], Value::Null);
        assert_eq!(format!("{:?}", Lookups::default()), "Lookups(..)");
    }
}
