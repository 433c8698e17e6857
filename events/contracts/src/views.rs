//! The read shapes of resources, as the REST API returns them (the catalog's field names and casing,
//! contract §8, `events/docs/contract.md`).
//! command-api builds them from aggregate state for write responses and query-api from read-model rows,
//! so both answer with the same shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use domain::access::Role;
use domain::budget::Limits;
use domain::environment::EnvironmentData;
use domain::feedback::classify::{ProbeGroup, Quality};
use domain::feedback::{FeedbackData, Severity, Source, TriageState};
use domain::job::Job;
use domain::members::Membership;
use domain::organization::OrganizationData;
use domain::user::UserData;
use domain::EventMetadata;

/// Timestamps are rendered as the API shows them (contract §8): RFC 3339, milliseconds, `Z`.
fn timestamp<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn optional_timestamp<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => timestamp(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

impl From<&OrganizationData> for OrganizationView {
    fn from(o: &OrganizationData) -> Self {
        OrganizationView {
            id: o.id,
            name: o.name.clone(),
            description: o.description.clone(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// A parent resource nested by name, as the API shows it (contract §8):
/// `"organization": { "name": "Acme Corp" }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedRef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentView {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub organization: NamedRef,
    pub name: String,
    pub description: Option<String>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

impl EnvironmentView {
    pub fn new(e: &EnvironmentData, organization_name: String) -> Self {
        EnvironmentView {
            id: e.id,
            organization_id: e.organization_id,
            organization: NamedRef {
                name: organization_name,
            },
            name: e.name.clone(),
            description: e.description.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A member of an organization: the user's profile and the role held there.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Role,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

impl MemberView {
    pub fn new(organization_id: Uuid, user: &UserData, membership: &Membership) -> Self {
        MemberView {
            user_id: user.id,
            organization_id,
            email: user.email.clone(),
            name: user.name.clone(),
            role: membership.role,
            created_at: membership.created_at,
            updated_at: membership.updated_at,
        }
    }
}

/// A user as platform administrators see it. `systemRole` says whether the System role was granted
/// through the API (`SYSTEM_ADMINS` confers it too, without showing here).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: Uuid,
    pub email: Option<String>,
    pub name: Option<String>,
    pub system_role: bool,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

impl From<&UserData> for UserView {
    fn from(u: &UserData) -> Self {
        UserView {
            id: u.id,
            email: u.email.clone(),
            name: u.name.clone(),
            system_role: u.system_role,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A submission in the operator surface's triage queue, as `/api/v1/admin/feedback` shows it. The
/// `feedback` projection keeps it as JSON (read back to apply later events), with `groupId` left to
/// the read model's group column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackItem {
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub source: Source,
    pub message: String,
    pub category: Option<String>,
    pub severity: Severity,
    pub page: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub groups: Vec<ProbeGroup>,
    pub quality: Quality,
    pub fingerprint: String,
    pub state: TriageState,
    pub assignee_id: Option<Uuid>,
    /// The group it is triaged with; `None` until the projection has grouped it.
    pub group_id: Option<Uuid>,
    pub submitted_by: Submitter,
    /// Every workflow move, oldest first.
    pub transitions: Vec<TransitionView>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

/// Who submitted a piece of feedback, from the request that did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitter {
    pub user_id: String,
    pub role: Option<Role>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// One workflow move of a piece of feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionView {
    pub from: TriageState,
    pub to: TriageState,
    /// The operator's user id.
    pub by: String,
    #[serde(serialize_with = "timestamp")]
    pub at: DateTime<Utc>,
    pub note: Option<String>,
    pub assignee_id: Option<Uuid>,
}

impl FeedbackItem {
    /// A fresh submission's view, before any move and before it is grouped.
    pub fn new(data: &FeedbackData, metadata: &EventMetadata) -> Self {
        FeedbackItem {
            id: data.id,
            organization_id: data.organization_id,
            source: data.source,
            message: data.message.clone(),
            category: data.category.clone(),
            severity: data.severity,
            page: data.page.clone(),
            metadata: data.metadata.clone(),
            groups: data.groups.clone(),
            quality: data.quality,
            fingerprint: data.fingerprint.clone(),
            state: data.state,
            assignee_id: data.assignee_id,
            group_id: None,
            submitted_by: Submitter {
                user_id: metadata.actor.id.clone(),
                role: metadata.actor.role,
                client_ip: metadata.client_ip.clone(),
                user_agent: metadata.user_agent.clone(),
            },
            transitions: Vec::new(),
            created_at: data.created_at,
            updated_at: data.updated_at,
        }
    }
}

/// An organization's budget (`GET`/`PUT /api/v1/admin/organizations/{id}/budget`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    pub organization_id: Uuid,
    pub monthly_limit: f64,
    pub currency: String,
    pub alert_at: Vec<f64>,
    pub hard_stop: bool,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

impl BudgetView {
    pub fn new(organization_id: Uuid, limits: &Limits, updated_at: DateTime<Utc>) -> Self {
        BudgetView {
            organization_id,
            monthly_limit: limits.monthly_limit,
            currency: limits.currency.clone(),
            alert_at: limits.alert_at.clone(),
            hard_stop: limits.hard_stop,
            updated_at,
        }
    }
}

/// An operator job (`/api/v1/admin/jobs`, and usage exports under `/api/v1/admin/usage/exports`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: Uuid,
    pub kind: String,
    pub args: serde_json::Value,
    /// `api` or `cli`.
    pub source: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub requested_by: String,
    #[serde(serialize_with = "timestamp")]
    pub requested_at: DateTime<Utc>,
    pub runner: Option<String>,
    #[serde(serialize_with = "optional_timestamp")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_timestamp")]
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// The runner's latest report while it works (`{message, done, total}`), and its last after.
    pub progress: Option<serde_json::Value>,
}

impl JobView {
    /// A job as its stream folds (what a write answers), before any progress.
    pub fn new(id: Uuid, job: &Job, requested_by: &str) -> Option<JobView> {
        let spec = job.spec.as_ref()?;
        Some(JobView {
            id,
            kind: spec.kind().as_str().into(),
            args: spec.args(),
            source: job.source.map_or("api", |s| s.as_str()).into(),
            state: job.state.as_str().into(),
            requested_by: requested_by.into(),
            requested_at: job.requested_at?,
            runner: job.runner.clone(),
            started_at: job.started_at,
            finished_at: job.finished_at,
            cancel_requested: job.cancel_requested,
            result: job.result.clone(),
            error: job.error.clone(),
            progress: None,
        })
    }
}
