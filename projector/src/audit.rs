//! The `audit` projection: `read_models.audit_index`, one row per event with what the audit trail
//! filters on (organization, resource type and id, actor, time), and `audit_counts`, the exact number
//! of rows per organization and resource type. The trail's rows themselves are read from the log by
//! position, and their changes folded from the streams, so nothing is stored twice.

use std::collections::HashMap;

use async_trait::async_trait;
use events::history::subject;
use events::read_models::{audit_count, AuditRows, AUDIT};
use events::RecordedEvent;
use sqlx::PgConnection;

use crate::projection::Projection;

pub struct Audit;

#[async_trait]
impl Projection for Audit {
    fn name(&self) -> &'static str {
        AUDIT
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_index", "audit_counts"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let subjects: Vec<_> = events.iter().map(subject).collect();
        sqlx::query(
            "INSERT INTO audit_index (global_position, organization_id, resource_type, resource_id, actor_id, occurred_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[])",
        )
        .bind(events.iter().map(|e| e.global_position).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.organization_id).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.resource_type.clone()).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.resource_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.metadata.0.actor.id.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;

        let mut counts: HashMap<String, i64> = HashMap::new();
        for about in &subjects {
            let rows = match about.organization_id {
                Some(id) => AuditRows::Organization(id),
                None => AuditRows::Platform,
            };
            let resource_type = Some(about.resource_type.as_str());
            for scope in [
                audit_count(AuditRows::All, None),
                audit_count(AuditRows::All, resource_type),
                audit_count(rows, None),
                audit_count(rows, resource_type),
            ] {
                *counts.entry(scope).or_default() += 1;
            }
        }
        sqlx::query(
            "INSERT INTO audit_counts (scope, count) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (scope) DO UPDATE SET count = audit_counts.count + EXCLUDED.count",
        )
        .bind(counts.keys().cloned().collect::<Vec<_>>())
        .bind(counts.values().copied().collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}
