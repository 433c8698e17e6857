//! The read shapes of resources, as the REST API returns them (seed 001's field names and casing).
//! command-api builds them from aggregate state for write responses and query-api from read-model rows,
//! so both answer with the same shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::environment::EnvironmentData;
use crate::organization::OrganizationData;

/// Timestamps are rendered as in the seed: RFC 3339, milliseconds, `Z`.
fn timestamp<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
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

/// A parent resource nested by name, as in the seed's `"organization": { "name": "Acme Corp" }`.
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
