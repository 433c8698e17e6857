//! Who the projector's own writes are by: the job runner's records of how jobs end
//! ([`crate::job_runner`]) and the indexer's records of failed messages ([`crate::indexer`]). They run
//! through the command executor like every write, as the platform itself: a System caller no user
//! is, and events whose actor names the projector (or the operator at its command line).

use std::collections::HashMap;

use domain::{Actor, ActorRef, EventMetadata, Role};
use uuid::Uuid;

/// The caller the executor is given: System, and no user (the nil id).
pub fn system_actor() -> Actor {
    Actor {
        user_id: Uuid::nil(),
        system: true,
        memberships: HashMap::new(),
    }
}

/// What the events record: `actor` (acting as System), the organization they are about, and the
/// id that ties them to what caused them (a job's, or a batch's).
pub fn metadata(actor: &str, organization_id: Option<Uuid>, request_id: String) -> EventMetadata {
    EventMetadata {
        actor: ActorRef {
            id: actor.into(),
            role: Some(Role::System),
        },
        organization_id,
        correlation_id: request_id.clone(),
        request_id,
        causation_id: None,
        client_ip: None,
        user_agent: None,
        channel: None,
    }
}
