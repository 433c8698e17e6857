//! `schemas/events/` holds the JSON Schema of every event type's Kafka message value, generated from
//! the Rust types (`contracts::published::schemas`). This test fails when the checked-in files differ
//! from what the code generates; `UPDATE_SCHEMAS=1 cargo test -p tests --test it event_schemas::` rewrites
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events")
}

fn checked_in() -> BTreeMap<String, String> {
    std::fs::read_dir(schema_dir())
        .expect("reading schemas/events")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read_to_string(&path).expect("reading a schema"),
            )
        })
        .collect()
}

fn generated() -> BTreeMap<String, String> {
    contracts::published::schemas()
        .into_iter()
        .map(|(name, schema)| {
            let text = serde_json::to_string_pretty(&schema).expect("schemas serialise");
            (name, format!("{text}\n"))
        })
        .collect()
}

#[test]
fn the_checked_in_event_schemas_are_what_the_code_generates() {
    let generated = generated();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        for name in checked_in().keys() {
            std::fs::remove_file(schema_dir().join(name)).expect("removing a stale schema");
        }
        for (name, text) in &generated {
            std::fs::write(schema_dir().join(name), text).expect("writing a schema");
        }
    }
    let checked_in = checked_in();
    let names = |files: &BTreeMap<String, String>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&checked_in),
        names(&generated),
        "schemas/events/ lists other event types than the code has; \
         run UPDATE_SCHEMAS=1 cargo test -p tests --test it event_schemas::"
    );
    for (name, text) in &generated {
        assert!(
            checked_in[name] == *text,
            "schemas/events/{name} differs from the generated schema; \
             run UPDATE_SCHEMAS=1 cargo test -p tests --test it event_schemas::"
        );
    }
}

#[test]
fn every_schema_is_a_valid_json_schema() {
    for (name, schema) in contracts::published::schemas() {
        jsonschema::meta::validate(&schema)
            .unwrap_or_else(|e| panic!("{name} is not a valid JSON Schema: {e}"));
    }
}
