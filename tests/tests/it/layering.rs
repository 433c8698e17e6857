//! The crates' layering, as `cargo metadata` sees it: code that only reads cannot name the write side
//! (`commands`, where the executor, the one way anything is appended, lives), and the domain crate
//! has no I/O dependencies at all. The projector is a writer in one narrow way: its job runner records
//! how operator jobs end (`projector::job_runner`), through the executor; its projections only read.
//! The MCP server (`mcp-api`) reaches neither the executor nor the log but through the APIs' routers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each workspace package's direct dependencies (normal ones, not dev or build), by package name,
/// each with the features it switches on.
fn dependencies() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let names = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| {
                    let features = d["features"].as_array().expect("features");
                    let features = features.iter().map(|f| f.as_str().unwrap().to_owned());
                    (
                        d["name"].as_str().expect("a name").to_owned(),
                        features.collect(),
                    )
                })
                .collect();
            (package["name"].as_str().expect("a name").to_owned(), names)
        })
        .collect()
}

/// `package` and everything it depends on inside the workspace.
fn closure(
    graph: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    package: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![package.to_owned()];
    while let Some(name) = next.pop() {
        if let Some(dependencies) = graph.get(&name) {
            for dependency in dependencies.keys() {
                if graph.contains_key(dependency) && seen.insert(dependency.clone()) {
                    next.push(dependency.clone());
                }
            }
        }
    }
    seen
}

#[test]
fn readers_cannot_name_the_write_side_and_the_domain_does_no_io() {
    let graph = dependencies();
    for reader in ["query-api", "event-log", "contracts", "domain"] {
        let direct = &graph[reader];
        assert!(
            !direct.contains_key("commands"),
            "{reader} depends on commands directly: {direct:?}"
        );
    }
    for crate_without_writes in ["event-log", "contracts", "domain"] {
        assert!(
            !closure(&graph, crate_without_writes).contains("commands"),
            "{crate_without_writes} reaches commands"
        );
    }
    // The MCP server answers only through the APIs' own routers: it cannot name the executor or the
    // log itself.
    for store in ["commands", "event-log"] {
        assert!(
            !graph["mcp-api"].contains_key(store),
            "mcp-api depends on {store} directly"
        );
    }
    let domain = &graph["domain"];
    for io in [
        "sqlx",
        "reqwest",
        "tokio",
        "rdkafka",
        "axum",
        "jsonwebtoken",
    ] {
        assert!(!domain.contains_key(io), "domain depends on {io}");
    }
    // `commands::testing` commits without the executor; only the tests may switch it on.
    for (package, dependencies) in &graph {
        if let Some(features) = dependencies.get("commands") {
            assert!(
                package == "tests" || !features.iter().any(|f| f == "test-support"),
                "{package} switches on commands/test-support"
            );
        }
    }
    assert!(graph["tests"]["commands"]
        .iter()
        .any(|f| f == "test-support"));
}
