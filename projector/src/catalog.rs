//! The `catalog` projection: one `read_models.catalog` row per catalog resource (every kind of
//! `domain::catalog`), the list counts in `catalog_counts`, `workflow_entity_usage`, which says
//! which workflows use which workflow entities, and `prompt_template_versions`, one row per version of
//! each live prompt template (its state after each created or updated event), so that a page of
//! versions is read rather than folded from the template's whole stream.
//!
//! Like `tenants`, a batch is folded in memory with the aggregate's own fold (`Change::apply_to`) over
//! the rows it touches, loaded once, and written back with a few multi-row statements. Nested names
//! (organization, environment, model) are not copied here: query-api joins them by id, so renames
//! show at once without rewriting rows.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use contracts::read_models::{
    catalog_count, catalog_environment_count, catalog_organization_count, CATALOG,
};
use domain::catalog::kinds::{by_type_name, PromptTemplate, Workflow, WorkflowFields};
use domain::catalog::{Change, DocumentData, DocumentState, Kind, KindInfo};
use domain::RecordedEvent;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

pub struct Catalog;

#[async_trait]
impl Projection for Catalog {
    fn name(&self) -> &'static str {
        CATALOG
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "catalog",
            "catalog_counts",
            "workflow_entity_usage",
            "prompt_template_versions",
        ]
    }

    fn handles(&self, stream_type: &str) -> bool {
        by_type_name(stream_type).is_some()
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let decoded = decode(events)?;
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = BatchState::load(conn, &decoded).await?;
        for event in &decoded {
            batch.apply(event);
        }
        batch.write(conn).await
    }
}

struct CatalogEvent {
    info: &'static KindInfo,
    id: Uuid,
    change: Change,
    version: i64,
    at: DateTime<Utc>,
    /// Who wrote it: kept for prompt templates only, whose versions show it.
    actor: Option<Value>,
}

fn decode(events: &[RecordedEvent]) -> anyhow::Result<Vec<CatalogEvent>> {
    let mut decoded = Vec::new();
    for event in events {
        let Some((kind, id)) = event.stream_id.split_once('-') else {
            continue;
        };
        let Some(info) = by_type_name(kind) else {
            continue;
        };
        let action = event
            .event_type
            .strip_prefix(info.type_name)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_default();
        let change = Change::from_stored(action, &event.data).map_err(|reason| {
            anyhow::anyhow!("event {} of {}: {reason}", event.event_id, event.stream_id)
        })?;
        let actor = if info.type_name == PromptTemplate::INFO.type_name {
            Some(serde_json::to_value(&event.metadata.actor)?)
        } else {
            None
        };
        decoded.push(CatalogEvent {
            info,
            id: id.parse()?,
            change,
            version: event.stream_version,
            at: event.recorded_at,
            actor,
        });
    }
    Ok(decoded)
}

struct Row {
    info: &'static KindInfo,
    state: DocumentState,
    version: i64,
}

#[derive(Default)]
struct BatchState {
    rows: HashMap<Uuid, Row>,
    count_changes: HashMap<String, i64>,
    /// Workflows whose entity usage must be written again.
    workflows: HashSet<Uuid>,
    /// The prompt-template versions the batch made, in log order.
    versions: Vec<Version>,
}

/// One row of `prompt_template_versions`.
struct Version {
    template: Uuid,
    version: i64,
    data: DocumentData,
    changed_by: Value,
    changed_at: DateTime<Utc>,
    changes: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    id: Uuid,
    kind: String,
    fields: Value,
    secrets: sqlx::types::Json<HashSet<String>>,
    annotations: sqlx::types::Json<Map<String, Value>>,
    annotation_events: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl BatchState {
    /// Loads the rows the batch touches that existed before it (streams created in the batch have none).
    async fn load(conn: &mut PgConnection, events: &[CatalogEvent]) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let existing: Vec<Uuid> = events
            .iter()
            .filter(|e| seen.insert(e.id) && !matches!(e.change, Change::Created { .. }))
            .map(|e| e.id)
            .collect();
        let stored: Vec<StoredRow> = sqlx::query_as(
            "SELECT id, kind, fields, secrets, annotations, annotation_events, version, created_at, updated_at \
             FROM catalog WHERE id = ANY($1)",
        )
        .bind(&existing)
        .fetch_all(&mut *conn)
        .await?;
        let mut rows = HashMap::new();
        for row in stored {
            let info = by_type_name(&row.kind).ok_or_else(|| {
                anyhow::anyhow!("catalog row {} has unknown kind {}", row.id, row.kind)
            })?;
            let Value::Object(fields) = row.fields else {
                anyhow::bail!("catalog row {} has fields that are not an object", row.id);
            };
            let state = DocumentState {
                live: Some(DocumentData {
                    id: row.id,
                    fields,
                    secrets: row.secrets.0.into_iter().collect(),
                    annotations: row.annotations.0,
                    annotation_events: row.annotation_events,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                }),
                deleted_at: None,
            };
            rows.insert(
                row.id,
                Row {
                    info,
                    state,
                    version: row.version,
                },
            );
        }
        Ok(BatchState {
            rows,
            ..Default::default()
        })
    }

    fn apply(&mut self, event: &CatalogEvent) {
        let row = self.rows.entry(event.id).or_insert_with(|| Row {
            info: event.info,
            state: DocumentState::default(),
            version: 0,
        });
        let before = row.state.live.clone();
        event.change.apply_to(&mut row.state, event.at);
        row.version = event.version;
        let delta = match (&event.change, before, &row.state.live) {
            (Change::Created { .. }, _, Some(after)) => Some((after.clone(), 1)),
            (Change::Deleted, Some(before), _) => Some((before, -1)),
            _ => None,
        };
        if let Some((data, delta)) = delta {
            for scope in count_scopes(event.info, &data) {
                *self.count_changes.entry(scope).or_default() += delta;
            }
        }
        if event.info.type_name == Workflow::INFO.type_name {
            self.workflows.insert(event.id);
        }
        // Created and updated events make versions; annotations and deletions do not.
        let changed = match &event.change {
            Change::Created { fields, .. } | Change::Updated { fields, .. } => Some(fields),
            Change::Deleted | Change::SentimentAnalyzed { .. } => None,
        };
        if let (Some(actor), Some(live), Some(fields)) = (&event.actor, &row.state.live, changed) {
            let changes = fields.keys().cloned().collect();
            self.versions.push(Version {
                template: event.id,
                version: live.content_version(event.version),
                data: live.clone(),
                changed_by: actor.clone(),
                changed_at: event.at,
                changes,
            });
        }
    }

    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let live: Vec<(&Row, &DocumentData)> = self
            .rows
            .values()
            .filter_map(|row| Some((row, row.state.live.as_ref()?)))
            .collect();
        if !live.is_empty() {
            sqlx::query(
                "INSERT INTO catalog (id, kind, organization_id, environment_id, model_id, name, fields, secrets, version, created_at, updated_at, \
                                     annotations, annotation_events) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::jsonb[], $8::jsonb[], \
                                      $9::bigint[], $10::timestamptz[], $11::timestamptz[], $12::jsonb[], $13::bigint[]) \
                 ON CONFLICT (id) DO UPDATE SET model_id = EXCLUDED.model_id, name = EXCLUDED.name, fields = EXCLUDED.fields, \
                   secrets = EXCLUDED.secrets, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, \
                   annotations = EXCLUDED.annotations, annotation_events = EXCLUDED.annotation_events",
            )
            .bind(live.iter().map(|(_, d)| d.id).collect::<Vec<_>>())
            .bind(live.iter().map(|(r, _)| r.info.type_name).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.organization_id()).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.environment_id()).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.model_id()).collect::<Vec<_>>())
            .bind(live.iter().map(|(r, d)| d.name(r.info)).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| Value::Object(d.fields.clone())).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| serde_json::json!(d.secrets)).collect::<Vec<_>>())
            .bind(live.iter().map(|(r, _)| r.version).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.created_at).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.updated_at).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| Value::Object(d.annotations.clone())).collect::<Vec<_>>())
            .bind(live.iter().map(|(_, d)| d.annotation_events).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let deleted: Vec<Uuid> = self
            .rows
            .iter()
            .filter(|(_, row)| row.state.live.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM catalog WHERE id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *conn)
                .await?;
            // A deleted template has no versions to show. Only ids of prompt templates have rows
            // here, so the other kinds' ids delete nothing.
            sqlx::query("DELETE FROM prompt_template_versions WHERE template_id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *conn)
                .await?;
        }

        // Versions of templates deleted later in the same batch were deleted above, or never existed:
        // they are not written.
        let versions: Vec<&Version> = self
            .versions
            .iter()
            .filter(|v| {
                self.rows
                    .get(&v.template)
                    .is_some_and(|row| row.state.live.is_some())
            })
            .collect();
        if !versions.is_empty() {
            // A batch applied again after a crash writes the same rows: the stored ones stand.
            sqlx::query(
                "INSERT INTO prompt_template_versions (template_id, version, fields, secrets, changed_by, changed_at, changes, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::timestamptz[], $7::jsonb[], \
                                      $8::timestamptz[], $9::timestamptz[]) \
                 ON CONFLICT (template_id, version) DO NOTHING",
            )
            .bind(versions.iter().map(|v| v.template).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| v.version).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| Value::Object(v.data.fields.clone())).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| serde_json::json!(v.data.secrets)).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| v.changed_by.clone()).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| v.changed_at).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| serde_json::json!(v.changes)).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| v.data.created_at).collect::<Vec<_>>())
            .bind(versions.iter().map(|v| v.data.updated_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        if !self.workflows.is_empty() {
            let workflows: Vec<Uuid> = self.workflows.iter().copied().collect();
            sqlx::query("DELETE FROM workflow_entity_usage WHERE workflow_id = ANY($1)")
                .bind(&workflows)
                .execute(&mut *conn)
                .await?;
            let mut usage: Vec<(Uuid, Uuid)> = Vec::new();
            for workflow in &workflows {
                let Some(data) = self.rows.get(workflow).and_then(|r| r.state.live.as_ref()) else {
                    continue;
                };
                let fields: WorkflowFields =
                    serde_json::from_value(Value::Object(data.fields.clone()))?;
                usage.extend(
                    fields
                        .workflow_data
                        .entity_ids()
                        .into_iter()
                        .map(|entity| (entity, *workflow)),
                );
            }
            if !usage.is_empty() {
                sqlx::query(
                    "INSERT INTO workflow_entity_usage (entity_id, workflow_id) \
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[])",
                )
                .bind(usage.iter().map(|(e, _)| *e).collect::<Vec<_>>())
                .bind(usage.iter().map(|(_, w)| *w).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
            }
        }

        let counts: Vec<(String, i64)> = self
            .count_changes
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .collect();
        if !counts.is_empty() {
            sqlx::query(
                "INSERT INTO catalog_counts (scope, count) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
                 ON CONFLICT (scope) DO UPDATE SET count = catalog_counts.count + EXCLUDED.count",
            )
            .bind(counts.iter().map(|(scope, _)| scope.clone()).collect::<Vec<_>>())
            .bind(counts.iter().map(|(_, delta)| *delta).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The list scopes a resource is counted in.
fn count_scopes(info: &KindInfo, data: &DocumentData) -> Vec<String> {
    let mut scopes = vec![
        catalog_count(info.type_name),
        catalog_organization_count(info.type_name, data.organization_id()),
    ];
    scopes.extend(
        data.environment_id()
            .map(|env| catalog_environment_count(info.type_name, env)),
    );
    scopes
}
