//! The domain, with no I/O: the events every aggregate records and their envelope, the aggregates
//! that decide them, the catalog's kinds, validated values, the actor and permission model, the
//! upcasters that read old event versions as the current shape, and the history (audit changes) folded
//! from a stream's events. The store, the services and the projector build on it; nothing here talks
//! to a database, a broker or the network.

pub mod access;
pub mod aggregate;
pub mod budget;
pub mod catalog;
pub mod envelope;
pub mod environment;
pub mod execution;
pub mod feedback;
pub mod history;
pub mod job;
pub mod json;
pub mod members;
pub mod model_probe;
pub mod notification;
pub mod organization;
pub mod personal;
pub mod processed_failures;
pub mod processed_queue;
pub mod sentiment;
pub mod upcast;
pub mod user;
pub mod values;

pub use access::{AccessError, Action, Actor, Permission, Resource, Role};
pub use aggregate::{Aggregate, DomainError, Loaded};
pub use envelope::{
    ActorRef, Channel, EventMetadata, LogPosition, NewEvent, RecordedEvent, RequestContext,
};
