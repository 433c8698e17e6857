//! The shared kernel of the platform: domain events and their envelope, the aggregates that decide
//! them, the event store, the actor and permission model, token verification and browser sessions.
//! Nothing here knows about HTTP servers or reads the environment: the service crates build on it and
//! pass their configuration in.

pub mod access;
pub mod aggregate;
pub mod auth;
pub mod catalog;
pub mod database;
pub mod envelope;
pub mod environment;
pub mod history;
pub mod json;
pub mod lookups;
pub mod members;
pub mod organization;
pub mod personal;
pub mod published;
pub mod read_models;
pub mod secrets;
pub mod sessions;
pub mod shutdown;
pub mod store;
pub mod token;
pub mod upcast;
pub mod user;
pub mod values;
pub mod views;

pub use access::{AccessError, Action, Actor, Permission, Resource, Role};
pub use aggregate::{Aggregate, DomainError, Loaded};
pub use envelope::{ActorRef, EventMetadata, LogPosition, NewEvent, RecordedEvent, RequestContext};
pub use store::{Appended, EventStore, ExpectedVersion, PgEventStore, StoreError};
