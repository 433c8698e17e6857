//! The aggregate contract: state folded from a stream's events, and the pure decision of which events a
//! command produces. No I/O here; the store loads and appends, services orchestrate.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// Why a command was refused by the domain rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// The command contradicts a rule about the current state (`409`).
    #[error("{error}: {details}")]
    Conflict {
        error: &'static str,
        details: String,
    },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + Unpin + 'static
{
    /// The stream-name prefix and Kafka topic suffix, e.g. `organization`.
    const TYPE: &'static str;
    /// Bumped whenever the state's shape changes, so that stale snapshots are ignored.
    const SNAPSHOT_SCHEMA: i32 = 1;
    /// Whether loading keeps snapshots of the state. Users' do not: their state holds opened personal
    /// data, which must live nowhere but under its key (`event_log::personal`).
    const SNAPSHOTS: bool = true;

    type Event: Serialize + DeserializeOwned + Send + Sync;
    type Command;

    fn apply(&mut self, event: &Self::Event, at: DateTime<Utc>);

    /// Decides which events `command` produces from the current state. Producing no events is a
    /// valid answer (an update that changes nothing).
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    fn stream_id(id: Uuid) -> String {
        format!("{}-{}", Self::TYPE, id)
    }
}

/// An aggregate's state with the stream version it was folded up to (0: the stream does not exist).
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: i64,
}

impl<A: Aggregate> Loaded<A> {
    /// Applies freshly decided events to this state and wraps them for the store, with the same
    /// timestamp on both sides, so the state answered to the client is the state the log will fold to.
    pub fn record(
        &mut self,
        events: Vec<A::Event>,
        metadata: &crate::envelope::EventMetadata,
        at: DateTime<Utc>,
    ) -> Vec<crate::envelope::NewEvent> {
        events
            .iter()
            .map(|event| {
                let new = crate::envelope::NewEvent::new(event, metadata.clone(), at);
                self.state.apply(event, new.recorded_at);
                self.version += 1;
                new
            })
            .collect()
    }

    /// A state that does not exist yet, for commands that create a stream.
    pub fn new_stream() -> Self {
        Loaded {
            state: A::default(),
            version: 0,
        }
    }
}

/// Domain rules tested without a database: given these events, when this command, then these events
/// or this refusal.
///
/// ```ignore
/// given::<Members>([MembersEvent::Added { user_id, role: Role::Admin }])
///     .when(MembersCommand::Remove { user_id })
///     .then_refused_with_conflict();
/// ```
#[cfg(test)]
pub mod given {
    use std::fmt::Debug;

    use chrono::{DateTime, Utc};

    use super::{Aggregate, DomainError};

    /// An aggregate folded from `events`, one second apart.
    pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
        let mut state = A::default();
        for (second, event) in events.into_iter().enumerate() {
            state.apply(&event, at(second as i64));
        }
        Given { state }
    }

    /// A fixed moment plus `seconds`, so that folded timestamps are predictable.
    pub fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("a valid timestamp")
    }

    pub struct Given<A> {
        pub state: A,
    }

    impl<A: Aggregate> Given<A> {
        pub fn when(&self, command: A::Command) -> Then<A> {
            Then(self.state.decide(command))
        }
    }

    pub struct Then<A: Aggregate>(Result<Vec<A::Event>, DomainError>);

    impl<A: Aggregate> Then<A>
    where
        A::Event: PartialEq + Debug,
    {
        pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
            assert_eq!(self.0, Ok(expected.into_iter().collect::<Vec<_>>()));
        }

        pub fn then_refused(self, expected: DomainError) {
            assert_eq!(self.0, Err(expected));
        }

        /// Refused by a rule about the current state (`409`), whatever its wording.
        pub fn then_conflict(self) {
            assert!(
                matches!(self.0, Err(DomainError::Conflict { .. })),
                "expected a conflict, got {:?}",
                self.0
            );
        }
    }
}
