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

/// The projection that keeps `catalog`, `catalog_counts`, `workflow_entity_usage` and
/// `prompt_template_versions`.
pub const CATALOG: &str = "catalog";

/// The `catalog_counts` scope counting every resource of a kind.
pub fn catalog_count(kind: &str) -> String {
    kind.to_owned()
}

/// The `catalog_counts` scope counting a kind's resources in one organization (`None`: platform-wide).
pub fn catalog_organization_count(kind: &str, organization_id: Option<Uuid>) -> String {
    match organization_id {
        Some(id) => format!("{kind}:organization:{id}"),
        None => format!("{kind}:platform"),
    }
}

/// The `catalog_counts` scope counting a kind's resources in one environment.
pub fn catalog_environment_count(kind: &str, environment_id: Uuid) -> String {
    format!("{kind}:environment:{environment_id}")
}

/// The projection that keeps `feedback`, `feedback_groups` and `feedback_counts` (the operator
/// surface's triage queue).
pub const FEEDBACK: &str = "feedback";

/// The `feedback_counts` scope counting every submission.
pub const FEEDBACK_ALL: &str = "all";

/// The `feedback_counts` scope counting the submissions whose `filter` (`state`, `quality`, `group`,
/// `severity` as its rank, `source`, `organization`) is `value`.
pub fn feedback_count(filter: &str, value: &str) -> String {
    format!("{filter}:{value}")
}

/// The projection that keeps `jobs` (the operator's long-running jobs).
pub const JOBS: &str = "jobs";

/// The projection that keeps `notifications` (the operator surface's platform alerts).
pub const NOTIFICATIONS: &str = "notifications";

/// The projection that keeps `security_events` (the security events the log holds).
pub const SECURITY: &str = "security";

/// The projection that keeps `audit_index` (the audit trail's rows), `audit_counts`, `audit_values`
/// and `audit_states`.
pub const AUDIT: &str = "audit";

/// Whose rows of the audit trail a count covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRows {
    All,
    /// Events of no organization (users, platform-wide resources).
    Platform,
    Organization(Uuid),
}

/// The `audit_counts` scope counting `rows`, of one resource type or of all.
pub fn audit_count(rows: AuditRows, resource_type: Option<&str>) -> String {
    let rows = match rows {
        AuditRows::All => "all".to_owned(),
        AuditRows::Platform => "platform".to_owned(),
        AuditRows::Organization(id) => format!("organization:{id}"),
    };
    match resource_type {
        Some(resource_type) => format!("{rows}:{resource_type}"),
        None => rows,
    }
}

/// The `audit_counts` scope counting `rows` about one resource, so that the total of a resource's
/// trail is read, not counted over its history.
pub fn audit_resource_count(rows: AuditRows, resource_type: &str, resource_id: Uuid) -> String {
    format!("{}:{resource_id}", audit_count(rows, Some(resource_type)))
}

/// The projection that keeps `executions` and `execution_totals`.
pub const EXECUTIONS: &str = "executions";

/// The processed queue's indexer, which keeps `processed_messages`, `processed_message_counts` and
/// `processed_queue_cursors` from the S3 bucket and applies the deletions the log records. Not a
/// projection (its rows come from the bucket), but its checkpoint is waited for like one.
pub const PROCESSED_QUEUE: &str = "processed_queue";

/// Every projection, by name: what a rebuild or verification job may name (besides `all`). The
/// projector's list of the projections it runs is checked against it.
pub const PROJECTIONS: [&str; 9] = [
    TENANTS,
    ACCESS,
    CATALOG,
    EXECUTIONS,
    FEEDBACK,
    SECURITY,
    NOTIFICATIONS,
    JOBS,
    AUDIT,
];
