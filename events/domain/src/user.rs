//! The user aggregate: someone who signed in through the identity provider, recorded on their first
//! authenticated request, with the System role when another System user granted it, and their browser
//! sign-ins and sign-outs (so that the audit trail shows them). A System user can erase a user: the
//! personal data its events carry (sealed per user, `event_log::personal`) becomes unreadable, and a later
//! request of the same subject registers a new user in the same stream.
//!
//! A user's id is derived from the token's subject (a name-based UUID), so the id of a subject is known
//! without a lookup and two first requests of one subject race for the same stream: one registers, the
//! other finds it registered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};

/// The namespace of user ids (UUID v5 of the subject).
const USER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_2b0e_8a4c_4b7e_9d35_0c2f_7e41_a9d3);

/// Longest accepted email or display name from an identity provider's claims.
const PROFILE_FIELD_MAX_CHARS: usize = 320;

/// The user id of a token subject.
pub fn user_id(subject: &str) -> Uuid {
    Uuid::new_v5(&USER_ID_NAMESPACE, subject.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum UserEvent {
    /// `subject`, `email` and `name` are sealed in the log (`event_log::personal`); once the user is
    /// erased they read `"[erased]"`, in messages published from then on too.
    #[serde(rename = "user.registered")]
    Registered {
        id: Uuid,
        subject: String,
        email: Option<String>,
        name: Option<String>,
    },
    /// Carries only the fields that changed, sealed and erased as `user.registered`'s.
    #[serde(rename = "user.profile_updated")]
    ProfileUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    #[serde(rename = "user.system_role_granted")]
    SystemRoleGranted {},
    #[serde(rename = "user.system_role_revoked")]
    SystemRoleRevoked {},
    /// A browser session began; the id is the session's public id, never its cookie.
    #[serde(rename = "user.signed_in")]
    SignedIn { session_id: Uuid },
    #[serde(rename = "user.signed_out")]
    SignedOut { session_id: Uuid },
    /// The user's personal data was erased (its key destroyed with this event) and its memberships
    /// removed before it. Consumers should forget what they hold about the user.
    #[serde(rename = "user.erased")]
    Erased {},
}

/// What the identity provider says about a user: the subject, and the profile claims it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Records the user if new, or updates the profile fields the provider now reports differently.
    Recognise(Identity),
    GrantSystemRole,
    RevokeSystemRole,
    SignIn {
        session_id: Uuid,
    },
    SignOut {
        session_id: Uuid,
    },
    Erase,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    pub id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Granted through the API; `SYSTEM_ADMINS` confers the role without being recorded here.
    pub system_role: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// `None` until registered, and after erasure until registered again.
    pub live: Option<UserData>,
    /// When the user was last erased, while not registered again.
    pub erased_at: Option<DateTime<Utc>>,
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    const SNAPSHOTS: bool = false;
    type Event = UserEvent;
    type Command = UserCommand;

    fn apply(&mut self, event: &UserEvent, at: DateTime<Utc>) {
        match event {
            UserEvent::Registered {
                id,
                subject,
                email,
                name,
            } => {
                self.live = Some(UserData {
                    id: *id,
                    subject: subject.clone(),
                    email: email.clone(),
                    name: name.clone(),
                    system_role: false,
                    created_at: at,
                    updated_at: at,
                });
                self.erased_at = None;
            }
            UserEvent::ProfileUpdated { email, name } => {
                if let Some(user) = &mut self.live {
                    if email.is_some() {
                        user.email = email.clone();
                    }
                    if name.is_some() {
                        user.name = name.clone();
                    }
                    user.updated_at = at;
                }
            }
            UserEvent::SystemRoleGranted {} | UserEvent::SystemRoleRevoked {} => {
                if let Some(user) = &mut self.live {
                    user.system_role = matches!(event, UserEvent::SystemRoleGranted {});
                    user.updated_at = at;
                }
            }
            UserEvent::SignedIn { .. } | UserEvent::SignedOut { .. } => {}
            UserEvent::Erased {} => {
                self.live = None;
                self.erased_at = Some(at);
            }
        }
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, DomainError> {
        match (command, &self.live) {
            (UserCommand::Recognise(identity), _) => Ok(self.recognise(identity)),
            (UserCommand::GrantSystemRole, Some(user)) => Ok(if user.system_role {
                vec![]
            } else {
                vec![UserEvent::SystemRoleGranted {}]
            }),
            (UserCommand::RevokeSystemRole, Some(user)) => Ok(if user.system_role {
                vec![UserEvent::SystemRoleRevoked {}]
            } else {
                vec![]
            }),
            (UserCommand::SignIn { session_id }, Some(_)) => {
                Ok(vec![UserEvent::SignedIn { session_id }])
            }
            (UserCommand::SignOut { session_id }, Some(_)) => {
                Ok(vec![UserEvent::SignedOut { session_id }])
            }
            (UserCommand::Erase, Some(_)) => Ok(vec![UserEvent::Erased {}]),
            (_, None) => Err(DomainError::NotFound),
        }
    }
}

impl User {
    /// Registers a new user, or records the profile claims that changed; never refused.
    pub fn recognise(&self, identity: Identity) -> Vec<UserEvent> {
        let Some(user) = &self.live else {
            return vec![UserEvent::Registered {
                id: user_id(&identity.subject),
                email: profile_field(identity.email),
                name: profile_field(identity.name),
                subject: identity.subject,
            }];
        };
        // A claim the provider stopped sending leaves the recorded value alone.
        let email = profile_field(identity.email).filter(|e| Some(e) != user.email.as_ref());
        let name = profile_field(identity.name).filter(|n| Some(n) != user.name.as_ref());
        if email.is_none() && name.is_none() {
            return vec![];
        }
        vec![UserEvent::ProfileUpdated { email, name }]
    }
}

impl Identity {
    /// Whether recognising this identity would change a user recorded with `email` and `name`.
    pub fn differs_from(&self, email: Option<&str>, name: Option<&str>) -> bool {
        let changed = |claim: &Option<String>, recorded: Option<&str>| {
            profile_field(claim.clone()).is_some_and(|c| Some(c.as_str()) != recorded)
        };
        changed(&self.email, email) || changed(&self.name, name)
    }
}

/// Profile claims are the provider's to choose; keep what fits, drop blanks and oversized values.
fn profile_field(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.chars().count() <= PROFILE_FIELD_MAX_CHARS)
        .filter(|v| !v.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given::{at, given};

    const SUBJECT: &str = "auth0|alice";

    fn identity(email: Option<&str>, name: Option<&str>) -> Identity {
        Identity {
            subject: SUBJECT.into(),
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }

    fn registered() -> UserEvent {
        UserEvent::Registered {
            id: user_id(SUBJECT),
            subject: SUBJECT.into(),
            email: Some("alice@example.test".into()),
            name: Some("Alice".into()),
        }
    }

    #[test]
    fn ids_are_derived_from_the_subject() {
        assert_eq!(user_id(SUBJECT), user_id(SUBJECT));
        assert_ne!(user_id(SUBJECT), user_id("auth0|bob"));
        given::<User>([])
            .when(UserCommand::Recognise(identity(
                Some("alice@example.test"),
                Some("Alice"),
            )))
            .then([registered()]);
    }

    #[test]
    fn recognising_a_known_user_records_only_changed_claims() {
        let user = given::<User>([registered()]);
        let same = identity(Some("alice@example.test"), Some("Alice"));
        user.when(UserCommand::Recognise(same)).then([]);
        user.when(UserCommand::Recognise(identity(None, None)))
            .then([]);
        let renamed = identity(Some("alice@example.test"), Some("Alice Liddell"));
        user.when(UserCommand::Recognise(renamed))
            .then([UserEvent::ProfileUpdated {
                email: None,
                name: Some("Alice Liddell".into()),
            }]);
    }

    #[test]
    fn granting_twice_or_revoking_what_was_never_granted_changes_nothing() {
        given::<User>([registered()])
            .when(UserCommand::RevokeSystemRole)
            .then([]);
        given::<User>([registered(), UserEvent::SystemRoleGranted {}])
            .when(UserCommand::GrantSystemRole)
            .then([]);
        given::<User>([])
            .when(UserCommand::GrantSystemRole)
            .then_refused(DomainError::NotFound);
    }

    #[test]
    fn an_erased_user_is_gone_until_its_subject_registers_again() {
        let erased = given::<User>([registered(), UserEvent::Erased {}]);
        assert_eq!(erased.state.live, None);
        assert_eq!(erased.state.erased_at, Some(at(1)));
        erased
            .when(UserCommand::Erase)
            .then_refused(DomainError::NotFound);
        erased
            .when(UserCommand::GrantSystemRole)
            .then_refused(DomainError::NotFound);
        // A later request of the subject registers it anew, without the System role it had.
        erased
            .when(UserCommand::Recognise(identity(
                Some("alice@example.test"),
                Some("Alice"),
            )))
            .then([registered()]);
        let again = given::<User>([
            registered(),
            UserEvent::SystemRoleGranted {},
            UserEvent::Erased {},
            registered(),
        ]);
        assert_eq!(again.state.erased_at, None);
        assert!(!again.state.live.unwrap().system_role);
    }
}
