//! The names the projector and query-api share about read models: which projection keeps which
//! tables, the channel checkpoint moves are announced on, and the scopes of the list counts.
//! The projector writes by these names and query-api reads by them, so they are defined once here.

use uuid::Uuid;

/// The channel a projection notifies on when its checkpoint moves; the payload is its name.
pub const CHECKPOINT_CHANNEL: &str = "projection_checkpoints";

/// The projection that keeps `organizations`, `environments` and `tenant_counts`.
pub const TENANTS: &str = "tenants";

/// The projection that keeps `users` and `members`.
pub const ACCESS: &str = "access";

/// The `tenant_counts` scope counting all organizations.
pub const ORGANIZATIONS_COUNT: &str = "organizations";

/// The `tenant_counts` scope counting one organization's environments.
pub fn environments_count(organization_id: Uuid) -> String {
    format!("environments:{organization_id}")
}
