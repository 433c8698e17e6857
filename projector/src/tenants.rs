//! The `tenants` projection: the organizations and environments read models, and their list counts.
//!
//! A batch is folded in memory first: the rows it touches are loaded once, each event is applied with
//! the aggregate's own `apply` (so the read model cannot disagree with the write side on what an event
//! means), and the result is written back with a handful of multi-row statements. That keeps a rebuild
//! at tens of thousands of events per second.
//!
//! Environment rows carry their organization's name; a rename rewrites every row of that organization.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use contracts::read_models::{environments_count, ORGANIZATIONS_COUNT, TENANTS};
use domain::environment::{Environment, EnvironmentData, EnvironmentEvent};
use domain::organization::{Organization, OrganizationData, OrganizationEvent};
use domain::{Aggregate, RecordedEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

pub struct Tenants;

#[async_trait]
impl Projection for Tenants {
    fn name(&self) -> &'static str {
        TENANTS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["organizations", "environments", "tenant_counts"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        matches!(stream_type, Organization::TYPE | Environment::TYPE)
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let decoded = decode(events)?;
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = BatchState::load(conn, &decoded).await?;
        for (event, version, at) in &decoded {
            batch.apply(event, *version, *at);
        }
        batch.write(conn).await
    }
}

enum TenantEvent {
    Organization(Uuid, OrganizationEvent),
    Environment(Uuid, EnvironmentEvent),
}

fn decode(events: &[RecordedEvent]) -> anyhow::Result<Vec<(TenantEvent, i64, DateTime<Utc>)>> {
    let mut decoded = Vec::new();
    for event in events {
        let Some((kind, id)) = event.stream_id.split_once('-') else {
            continue;
        };
        let tenant_event = match kind {
            Organization::TYPE => TenantEvent::Organization(id.parse()?, event.decode()?),
            Environment::TYPE => TenantEvent::Environment(id.parse()?, event.decode()?),
            _ => continue,
        };
        decoded.push((tenant_event, event.stream_version, event.recorded_at));
    }
    Ok(decoded)
}

/// A row being folded: the aggregate state plus the stream version it is at.
struct Row<A> {
    state: A,
    version: i64,
}

#[derive(Default)]
struct BatchState {
    organizations: HashMap<Uuid, Row<Organization>>,
    environments: HashMap<Uuid, Row<Environment>>,
    renamed_organizations: HashSet<Uuid>,
    count_changes: HashMap<String, i64>,
}

impl BatchState {
    /// Loads every existing row the batch touches, and the organizations that new environments belong
    /// to (for their names). A stream whose first event in the batch creates it has no row yet, which
    /// spares a rebuild almost all of its lookups.
    async fn load(
        conn: &mut PgConnection,
        events: &[(TenantEvent, i64, DateTime<Utc>)],
    ) -> anyhow::Result<Self> {
        let mut organization_ids = HashSet::new();
        let mut environment_ids = HashSet::new();
        let mut seen = HashSet::new();
        for (event, _, _) in events {
            match event {
                TenantEvent::Organization(id, event) => {
                    let created_here = matches!(event, OrganizationEvent::Created { .. });
                    if seen.insert(*id) && !created_here {
                        organization_ids.insert(*id);
                    }
                }
                TenantEvent::Environment(id, event) => {
                    let created_here = matches!(event, EnvironmentEvent::Created { .. });
                    if seen.insert(*id) && !created_here {
                        environment_ids.insert(*id);
                    }
                    if let EnvironmentEvent::Created {
                        organization_id, ..
                    } = event
                    {
                        organization_ids.insert(*organization_id);
                    }
                }
            }
        }
        let organization_ids: Vec<Uuid> = organization_ids.into_iter().collect();
        let environment_ids: Vec<Uuid> = environment_ids.into_iter().collect();

        let organizations = sqlx::query_as::<_, (Uuid, String, Option<String>, i64, DateTime<Utc>, DateTime<Utc>)>(
            "SELECT id, name, description, version, created_at, updated_at FROM organizations WHERE id = ANY($1)",
        )
        .bind(&organization_ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, name, description, version, created_at, updated_at)| {
            let state = Organization {
                live: Some(OrganizationData { id, name, description, created_at, updated_at }),
                deleted_at: None,
            };
            (id, Row { state, version })
        })
        .collect();

        let environments = sqlx::query_as::<
            _,
            (
                Uuid,
                Uuid,
                String,
                Option<String>,
                i64,
                DateTime<Utc>,
                DateTime<Utc>,
            ),
        >(
            "SELECT id, organization_id, name, description, version, created_at, updated_at \
             FROM environments WHERE id = ANY($1)",
        )
        .bind(&environment_ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(
            |(id, organization_id, name, description, version, created_at, updated_at)| {
                let state = Environment {
                    live: Some(EnvironmentData {
                        id,
                        organization_id,
                        name,
                        description,
                        created_at,
                        updated_at,
                    }),
                    deleted_at: None,
                };
                (id, Row { state, version })
            },
        )
        .collect();

        Ok(BatchState {
            organizations,
            environments,
            ..Default::default()
        })
    }

    fn apply(&mut self, event: &TenantEvent, version: i64, at: DateTime<Utc>) {
        match event {
            TenantEvent::Organization(id, event) => {
                let row = self.organizations.entry(*id).or_insert_with(|| Row {
                    state: Organization::default(),
                    version: 0,
                });
                row.state.apply(event, at);
                row.version = version;
                match event {
                    OrganizationEvent::Created { .. } => {
                        self.count(ORGANIZATIONS_COUNT.to_owned(), 1)
                    }
                    OrganizationEvent::Deleted {} => self.count(ORGANIZATIONS_COUNT.to_owned(), -1),
                    OrganizationEvent::Updated { name: Some(_), .. } => {
                        self.renamed_organizations.insert(*id);
                    }
                    OrganizationEvent::Updated { .. } => {}
                }
            }
            TenantEvent::Environment(id, event) => {
                let row = self.environments.entry(*id).or_insert_with(|| Row {
                    state: Environment::default(),
                    version: 0,
                });
                let organization_id = row.state.live.as_ref().map(|e| e.organization_id);
                row.state.apply(event, at);
                row.version = version;
                match event {
                    EnvironmentEvent::Created {
                        organization_id, ..
                    } => self.count(environments_count(*organization_id), 1),
                    EnvironmentEvent::Deleted {} => {
                        if let Some(organization_id) = organization_id {
                            self.count(environments_count(organization_id), -1)
                        }
                    }
                    EnvironmentEvent::Updated { .. } => {}
                }
            }
        }
    }

    fn count(&mut self, scope: String, delta: i64) {
        *self.count_changes.entry(scope).or_default() += delta;
    }

    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let (live_organizations, deleted_organizations): (Vec<_>, Vec<_>) = self
            .organizations
            .iter()
            .partition(|(_, row)| row.state.live.is_some());
        let organizations: Vec<(&OrganizationData, i64)> = live_organizations
            .iter()
            .filter_map(|(_, row)| Some((row.state.live.as_ref()?, row.version)))
            .collect();
        if !organizations.is_empty() {
            sqlx::query(
                "INSERT INTO organizations (id, name, description, version, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], $6::timestamptz[]) \
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description, \
                   version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
            )
            .bind(organizations.iter().map(|(o, _)| o.id).collect::<Vec<_>>())
            .bind(organizations.iter().map(|(o, _)| o.name.clone()).collect::<Vec<_>>())
            .bind(organizations.iter().map(|(o, _)| o.description.clone()).collect::<Vec<_>>())
            .bind(organizations.iter().map(|(_, v)| *v).collect::<Vec<_>>())
            .bind(organizations.iter().map(|(o, _)| o.created_at).collect::<Vec<_>>())
            .bind(organizations.iter().map(|(o, _)| o.updated_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let deleted: Vec<Uuid> = deleted_organizations.iter().map(|(id, _)| **id).collect();
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM organizations WHERE id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *conn)
                .await?;
        }

        let (live_environments, deleted_environments): (Vec<_>, Vec<_>) = self
            .environments
            .iter()
            .partition(|(_, row)| row.state.live.is_some());
        let environments: Vec<(&EnvironmentData, i64)> = live_environments
            .iter()
            .filter_map(|(_, row)| Some((row.state.live.as_ref()?, row.version)))
            .collect();
        if !environments.is_empty() {
            // A new environment takes its organization's name from the batch (loaded, or as the batch
            // left it); existing rows keep theirs unless the rename below rewrites them.
            let organization_name = |id: Uuid| {
                self.organizations
                    .get(&id)
                    .and_then(|row| row.state.live.as_ref())
                    .map(|o| o.name.clone())
            };
            sqlx::query(
                "INSERT INTO environments (id, organization_id, organization_name, name, description, version, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::timestamptz[], $8::timestamptz[]) \
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description, \
                   version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
            )
            .bind(environments.iter().map(|(e, _)| e.id).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| e.organization_id).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| organization_name(e.organization_id).unwrap_or_default()).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| e.name.clone()).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| e.description.clone()).collect::<Vec<_>>())
            .bind(environments.iter().map(|(_, v)| *v).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| e.created_at).collect::<Vec<_>>())
            .bind(environments.iter().map(|(e, _)| e.updated_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let deleted: Vec<Uuid> = deleted_environments.iter().map(|(id, _)| **id).collect();
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM environments WHERE id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *conn)
                .await?;
        }

        let renamed: Vec<(Uuid, String)> = self
            .renamed_organizations
            .iter()
            .filter_map(|id| {
                Some((
                    *id,
                    self.organizations
                        .get(id)?
                        .state
                        .live
                        .as_ref()?
                        .name
                        .clone(),
                ))
            })
            .collect();
        if !renamed.is_empty() {
            sqlx::query(
                "UPDATE environments e SET organization_name = o.name \
                 FROM UNNEST($1::uuid[], $2::text[]) AS o(id, name) \
                 WHERE e.organization_id = o.id AND e.organization_name <> o.name",
            )
            .bind(renamed.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(
                renamed
                    .iter()
                    .map(|(_, name)| name.clone())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }

        let counts: Vec<(String, i64)> = self
            .count_changes
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .collect();
        if !counts.is_empty() {
            sqlx::query(
                "INSERT INTO tenant_counts (scope, count) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
                 ON CONFLICT (scope) DO UPDATE SET count = tenant_counts.count + EXCLUDED.count",
            )
            .bind(counts.iter().map(|(scope, _)| scope.clone()).collect::<Vec<_>>())
            .bind(counts.iter().map(|(_, delta)| *delta).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
