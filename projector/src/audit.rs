//! The `audit` projection: `read_models.audit_index`, one row per event with what the audit trail
//! filters on (organization, resource type and id, actor, time). The trail's rows themselves are read
//! from the log by position, and their changes folded from the streams, so nothing is stored twice.

use async_trait::async_trait;
use events::history::subject;
use events::read_models::AUDIT;
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
        &["audit_index"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
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
        .execute(conn)
        .await?;
        Ok(())
    }
}
