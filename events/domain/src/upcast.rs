//! Schema versions of event payloads, and the upcasters that read old payloads as the current shape.
//!
//! Events are immutable: when an event type's shape changes, new events are written with a higher
//! `schema_version`, and the rows already in the log keep theirs. Every read of the log
//! ([`crate::RecordedEvent`]'s row decoding) passes each row through [`upcast`], so aggregates,
//! projections, the audit trail and the Kafka publisher only ever see the current shape, and only the
//! upcasters here know the old ones. The hash chain covers the stored row, so upcasting never disturbs it.
//!
//! The versions so far:
//! - `member.role_changed` v2 records `previousRole`, so that a consumer of the Kafka topic learns who
//!   was demoted or promoted from what without keeping every membership itself. A v1 row does not know
//!   it: it reads as `previousRole: null`.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::access::Role;

/// One step from `from_version` to the next version of an event type.
struct Upcaster {
    event_type: &'static str,
    from_version: i32,
    upcast: fn(Value) -> Value,
}

const UPCASTERS: &[Upcaster] = &[Upcaster {
    event_type: "member.role_changed",
    from_version: 1,
    upcast: role_changed_v1_to_v2,
}];

/// The version new events of `event_type` are written with: one past its last upcaster.
pub fn current_version(event_type: &str) -> i32 {
    UPCASTERS
        .iter()
        .filter(|u| u.event_type == event_type)
        .map(|u| u.from_version + 1)
        .max()
        .unwrap_or(1)
}

/// Brings a stored payload to the current version of its type, one step at a time.
pub fn upcast(event_type: &str, mut version: i32, mut data: Value) -> (i32, Value) {
    while let Some(step) = UPCASTERS
        .iter()
        .find(|u| u.event_type == event_type && u.from_version == version)
    {
        data = (step.upcast)(data);
        version += 1;
    }
    (version, data)
}

// `member.role_changed` as version 1 wrote it (its schema is published as it was: no doc comment).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleChangedV1 {
    pub user_id: Uuid,
    pub role: Role,
}

fn role_changed_v1_to_v2(mut data: Value) -> Value {
    if let Value::Object(fields) = &mut data {
        fields.entry("previousRole").or_insert(Value::Null);
    }
    data
}

/// The schemas of superseded versions, for `schemas/events/` (messages of those versions may still be
/// on Kafka topics): `(event type, version, schema of its data)`.
pub fn superseded_schemas() -> Vec<(&'static str, i32, schemars::Schema)> {
    vec![(
        "member.role_changed",
        1,
        schemars::schema_for!(RoleChangedV1),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_payloads_read_as_the_current_version_and_current_ones_pass_unchanged() {
        let user = Uuid::now_v7();
        assert_eq!(current_version("member.role_changed"), 2);
        assert_eq!(current_version("organization.created"), 1);
        assert_eq!(
            upcast(
                "member.role_changed",
                1,
                json!({ "userId": user, "role": "guest" })
            ),
            (
                2,
                json!({ "userId": user, "role": "guest", "previousRole": null })
            )
        );
        let current = json!({ "userId": user, "role": "guest", "previousRole": "admin" });
        assert_eq!(
            upcast("member.role_changed", 2, current.clone()),
            (2, current)
        );
        assert_eq!(
            upcast("organization.created", 1, json!({ "id": user })),
            (1, json!({ "id": user }))
        );
    }
}
