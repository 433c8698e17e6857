//! The `audit` projection: `read_models.audit_index`, one complete row of the audit trail per event
//! (what the trail filters on, what each row shows, and the event's `changes`), `audit_counts`, the
//! exact number of rows per organization, resource type and resource, `audit_values`, the long values of
//! changes stored once each, and `audit_states`, the state each stream was folded to, so that the
//! changes of an event are computed from one stored row and not from the stream's history.
//!
//! A batch loads the states of the streams it touches, folds its events into them in log order with
//! the aggregates' own `apply` ([`domain::history`]), and writes rows, values and states back with a
//! few multi-row statements. Write-only values are `"[redacted]"` in the changes, and the states only
//! record which write-only fields are set, so nothing here holds a secret or its ciphertext. Erasing a
//! user rewrites its earlier rows' personal values to `"[erased]"`.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use async_trait::async_trait;
use contracts::read_models::{audit_count, audit_resource_count, AuditRows, AUDIT};
use domain::history::{erase_personal_changes, fold_key, subject, StreamState};
use domain::user::User;
use domain::{Aggregate, RecordedEvent};
use event_log::Stored;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::projection::Projection;

/// Values of changes whose JSON text is longer than this are stored apart, once, in `audit_values`
/// (see `schemas/migrations/0012_audit_changes.sql`).
const INLINE_MAX_BYTES: usize = 1024;

/// The event that erases a user's personal data.
const ERASED_EVENT: &str = "user.erased";

pub struct Audit;

#[async_trait]
impl Projection for Audit {
    fn name(&self) -> &'static str {
        AUDIT
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "audit_index",
            "audit_counts",
            "audit_values",
            "audit_states",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let changes = fold(conn, events).await?;
        let mut values = BTreeMap::new();
        let (changes, large): (Vec<Value>, Vec<Value>) = changes
            .into_iter()
            .map(|changes| store_apart(changes, &mut values))
            .unzip();
        let subjects: Vec<_> = events.iter().map(subject).collect();
        let metadata: Vec<_> = events.iter().map(|e| &e.metadata).collect();
        sqlx::query(
            "INSERT INTO audit_index (global_position, organization_id, resource_type, resource_id, actor_id, occurred_at, \
                                      event_id, event_type, actor_role, request_id, client_ip, user_agent, channel, changes, large_values) \
             SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[], \
                                  $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                                  $14::jsonb[], $15::jsonb[])",
        )
        .bind(events.iter().map(|e| e.global_position).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.organization_id).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.resource_type.clone()).collect::<Vec<_>>())
        .bind(subjects.iter().map(|s| s.resource_id).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.actor.id.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.actor.role.map(|r| r.to_string())).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.request_id.clone()).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.client_ip.clone()).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.user_agent.clone()).collect::<Vec<_>>())
        .bind(metadata.iter().map(|m| m.channel.map(|c| c.as_str())).collect::<Vec<_>>())
        .bind(changes)
        .bind(large)
        .execute(&mut *conn)
        .await?;

        if !values.is_empty() {
            // A value shown before is stored already: its hash is its content.
            sqlx::query(
                "INSERT INTO audit_values (hash, value) SELECT * FROM UNNEST($1::text[], $2::jsonb[]) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(values.keys().cloned().collect::<Vec<_>>())
            .bind(values.into_values().collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        let mut counts: HashMap<String, i64> = HashMap::new();
        for about in &subjects {
            let rows = match about.organization_id {
                Some(id) => AuditRows::Organization(id),
                None => AuditRows::Platform,
            };
            let resource_type = Some(about.resource_type.as_str());
            let mut scopes = vec![
                audit_count(AuditRows::All, None),
                audit_count(AuditRows::All, resource_type),
                audit_count(rows, None),
                audit_count(rows, resource_type),
            ];
            if let Some(id) = about.resource_id {
                scopes.push(audit_resource_count(
                    AuditRows::All,
                    &about.resource_type,
                    id,
                ));
                scopes.push(audit_resource_count(rows, &about.resource_type, id));
            }
            for scope in scopes {
                *counts.entry(scope).or_default() += 1;
            }
        }
        sqlx::query(
            "INSERT INTO audit_counts (scope, count) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (scope) DO UPDATE SET count = audit_counts.count + EXCLUDED.count",
        )
        .bind(counts.keys().cloned().collect::<Vec<_>>())
        .bind(counts.values().copied().collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        forget_erased_users(conn, events).await
    }
}

/// An erased user's rows, the erasure's own included (its before-state was folded from values that
/// opened then), keep saying which personal fields changed, never what they held: their values become
/// `"[erased]"` ([`erase_personal_changes`]), as a rebuild from the log gives. The states kept hold
/// none of it: an erased user's state has no profile.
async fn forget_erased_users(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
) -> anyhow::Result<()> {
    for erasure in events.iter().filter(|e| e.event_type == ERASED_EVENT) {
        let user = subject(erasure).resource_id;
        let rows: Vec<(i64, Stored)> = sqlx::query_as(
            "SELECT global_position, changes FROM audit_index \
             WHERE resource_type = $1 AND resource_id = $2 AND global_position <= $3",
        )
        .bind(User::TYPE)
        .bind(user)
        .bind(erasure.global_position)
        .fetch_all(&mut *conn)
        .await?;
        for (position, Stored(mut changes)) in rows {
            if erase_personal_changes(&mut changes) {
                sqlx::query("UPDATE audit_index SET changes = $2 WHERE global_position = $1")
                    .bind(position)
                    .bind(changes)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Folds each event into the state of its stream (see [`fold_key`]), loaded from `audit_states` once
/// per batch, and returns what each event changed; the states are written back. Streams of a type the
/// system does not know have no state and no changes. A key first met in the batch at its stream's
/// first event has no stored state yet, and is not looked up: that spares most lookups of a busy log
/// (where most streams are new) and nearly all of a rebuild's.
async fn fold(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let keys: Vec<String> = events.iter().map(fold_key).collect();
    let mut seen = HashSet::new();
    let stored_keys: Vec<&String> = events
        .iter()
        .zip(&keys)
        .filter(|(event, key)| seen.insert(key.as_str()) && event.stream_version > 1)
        .map(|(_, key)| key)
        .collect();
    let stored: Vec<(String, Stored)> = if stored_keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT key, state FROM audit_states WHERE key = ANY($1)")
            .bind(&stored_keys)
            .fetch_all(&mut *conn)
            .await?
    };
    let mut states: HashMap<String, Option<StreamState>> = HashMap::new();
    for (key, Stored(state)) in stored {
        let state = StreamState::from_stored(&key, state)
            .with_context(|| format!("reading the stored state of {key}"))?;
        states.insert(key, state);
    }
    let mut changes = Vec::with_capacity(events.len());
    for (event, key) in events.iter().zip(&keys) {
        let state = states
            .entry(key.clone())
            .or_insert_with(|| StreamState::for_stream(key));
        changes.push(match state {
            Some(state) => state.audit(event)?,
            None => Map::new(),
        });
    }

    let mut written: Vec<String> = Vec::new();
    let mut stored: Vec<Value> = Vec::new();
    for (key, state) in states {
        if let Some(state) = state {
            stored.push(state.to_stored()?);
            written.push(key);
        }
    }
    if !written.is_empty() {
        sqlx::query(
            "INSERT INTO audit_states (key, state) SELECT * FROM UNNEST($1::text[], $2::jsonb[]) \
             ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state",
        )
        .bind(&written)
        .bind(&stored)
        .execute(&mut *conn)
        .await?;
    }
    Ok(changes)
}

/// An event's changes as `audit_index` stores them: `(changes, large_values)`, each value longer than
/// [`INLINE_MAX_BYTES`] replaced by null in `changes`, named by its hash in `large_values`, and added
/// to `values` by that hash.
fn store_apart(
    changes: Map<String, Value>,
    values: &mut BTreeMap<String, Value>,
) -> (Value, Value) {
    let mut inline = Map::new();
    let mut large = Map::new();
    for (field, mut change) in changes {
        let mut hashes = Map::new();
        if let Value::Object(sides) = &mut change {
            for (side, value) in sides.iter_mut() {
                if value.to_string().len() > INLINE_MAX_BYTES {
                    let hash = format!("{:x}", Sha256::digest(sorted(value).to_string()));
                    values.insert(hash.clone(), value.take());
                    hashes.insert(side.clone(), Value::String(hash));
                }
            }
        }
        if !hashes.is_empty() {
            large.insert(field.clone(), Value::Object(hashes));
        }
        inline.insert(field, change);
    }
    (Value::Object(inline), Value::Object(large))
}

/// `value` with every object's keys in order, so that equal values have one JSON text and one hash
/// however their keys came to be ordered.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_values_are_stored_apart_once_by_their_content() {
        let long = "x".repeat(INLINE_MAX_BYTES + 1);
        let changes = json!({
            "name": { "from": "a", "to": "b" },
            "promptText": { "from": long, "to": { "b": 1, "a": long } },
        });
        let Value::Object(changes) = changes else {
            unreachable!()
        };
        let mut values = BTreeMap::new();
        let (inline, large) = store_apart(changes, &mut values);
        assert_eq!(
            inline,
            json!({ "name": { "from": "a", "to": "b" }, "promptText": { "from": null, "to": null } })
        );
        let from = large["promptText"]["from"].as_str().unwrap();
        let to = large["promptText"]["to"].as_str().unwrap();
        assert_eq!(values[from], json!(long));
        assert_eq!(values[to], json!({ "b": 1, "a": long }));
        assert_eq!(large.as_object().unwrap().len(), 1);

        // The same value, its keys in another order, is the same entry.
        let Value::Object(again) = json!({ "p": { "from": null, "to": { "a": long, "b": 1 } } })
        else {
            unreachable!()
        };
        let (_, large) = store_apart(again, &mut values);
        assert_eq!(large["p"]["to"], json!(to));
        assert_eq!(values.len(), 2);
    }
}
