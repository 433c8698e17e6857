//! The `security` projection: `read_models.security_events`, the security events the event log holds
//! (sign-ins and sign-outs, System role grants and revokes, changes of write-only values), for the
//! operator surface's security events beside the refused requests the APIs record
//! (`http_layer::security`). A write-only value's change names the fields and whether each was set
//! or cleared; the sealed value itself never leaves the event.

use async_trait::async_trait;
use contracts::read_models::SECURITY;
use domain::aggregate::Aggregate;
use domain::catalog::kinds::by_type_name;
use domain::catalog::SEALED_VALUES;
use domain::user::User;
use domain::RecordedEvent;
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::projection::Projection;

pub struct Security;

/// The kind of security event `event` is, with its details; `None` for the others.
fn security_event(event: &RecordedEvent) -> Option<(&'static str, Value)> {
    let (stream_type, id) = event.stream_id.split_once('-')?;
    if stream_type == User::TYPE {
        let kind = match event.event_type.as_str() {
            "user.signed_in" => "sign_in",
            "user.signed_out" => "sign_out",
            "user.system_role_granted" => "system_role_granted",
            "user.system_role_revoked" => "system_role_revoked",
            _ => return None,
        };
        return Some((kind, json!({ "userId": id })));
    }
    let kind = by_type_name(stream_type)?;
    let sealed = event.data.get(SEALED_VALUES)?.as_object()?;
    let fields: serde_json::Map<String, Value> = sealed
        .iter()
        .map(|(field, value)| {
            let change = if value.is_null() { "cleared" } else { "set" };
            (field.clone(), json!(change))
        })
        .collect();
    (!fields.is_empty()).then(|| {
        (
            "secret_changed",
            json!({ "resourceType": kind.type_name, "resourceId": id, "fields": fields }),
        )
    })
}

#[async_trait]
impl Projection for Security {
    fn name(&self) -> &'static str {
        SECURITY
    }

    fn tables(&self) -> &'static [&'static str] {
        &["security_events"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        stream_type == User::TYPE
            || by_type_name(stream_type).is_some_and(|kind| !kind.write_only.is_empty())
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let rows: Vec<(&RecordedEvent, &'static str, Value)> = events
            .iter()
            .filter_map(|event| security_event(event).map(|(kind, details)| (event, kind, details)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO security_events (id, kind, occurred_at, actor_id, organization_id, ip, user_agent, details) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::uuid[], \
                                  $6::text[], $7::text[], $8::jsonb[]) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(rows.iter().map(|(e, _, _)| e.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, kind, _)| *kind).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.recorded_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.metadata.actor.id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.metadata.organization_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.metadata.client_ip.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.metadata.user_agent.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, details)| details.clone()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
