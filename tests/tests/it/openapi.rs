//! `schemas/openapi.yaml` describes the API the services actually serve, no more and no less.
//!
//! The spec is held against the route tables that command-api and query-api build their routers from
//! (`api_routes().table`, where every route is registered): a route the spec lacks, or a spec operation
//! no route serves, fails here with the list of both. The document is also checked for what a client
//! relies on: every operation declares its success response and, unless it is one of the public
//! sign-in endpoints, its `401`; every path parameter is declared; every `$ref` resolves. No database
//! and no server are needed: the routers are built, not served.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// The keys of a path item that are operations (OpenAPI 3.0 §4.7.9).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The operations that take no credentials: the browser sign-in flow, which starts a session
/// rather than requiring one, and logout, which ends the cookie's session if there is one.
const PUBLIC: [(&str, &str); 3] = [
    ("GET", "/api/auth/login"),
    ("GET", "/api/auth/callback"),
    ("POST", "/api/auth/logout"),
];

/// The operations whose success is a redirect (to the issuer, and back to the page that signed in).
const REDIRECTS: [(&str, &str); 2] = [("GET", "/api/auth/login"), ("GET", "/api/auth/callback")];

fn spec() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a YAML document: {e}", path.display()))
}

/// One operation of the spec.
struct Operation<'a> {
    /// Upper case, as `axum::http::Method` displays it.
    method: String,
    path: &'a str,
    path_item: &'a Value,
    operation: &'a Value,
}

impl Operation<'_> {
    fn key(&self) -> (String, String) {
        (self.method.clone(), self.path.to_owned())
    }

    fn is(&self, list: &[(&str, &str)]) -> bool {
        list.iter()
            .any(|(method, path)| self.method == *method && self.path == *path)
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

fn operations(spec: &Value) -> Vec<Operation<'_>> {
    let paths = spec["paths"]
        .as_object()
        .expect("the spec has a `paths` object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter_map(move |method| {
                item.get(*method).map(|operation| Operation {
                    method: method.to_uppercase(),
                    path,
                    path_item: item,
                    operation,
                })
            })
        })
        .collect()
}

/// Every route of both services, as registered, with axum's wildcard parameters written as the
/// spec writes them.
fn served_routes() -> BTreeSet<(String, String)> {
    command_api::api_routes()
        .table
        .into_iter()
        .chain(query_api::api_routes().table)
        // axum's `{*name}` captures the rest of the path, slashes included; OpenAPI has no such
        // syntax, so the spec names it `{name}` and says so in the parameter's description.
        .map(|(method, path)| (method.as_str().to_owned(), path.replace("{*", "{")))
        .collect()
}

fn listed(routes: &BTreeSet<&(String, String)>) -> String {
    if routes.is_empty() {
        return "    (none)".into();
    }
    routes
        .iter()
        .map(|(method, path)| format!("    {method} {path}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_spec_describes_exactly_the_routes_the_services_serve() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.0.3", "the document's OpenAPI version");
    let documented: BTreeSet<(String, String)> =
        operations(&spec).iter().map(Operation::key).collect();
    let served = served_routes();
    assert!(!served.is_empty(), "the services register no routes");
    let undocumented: BTreeSet<_> = served.difference(&documented).collect();
    let unserved: BTreeSet<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "schemas/openapi.yaml is out of step with the routes of command-api and query-api\n  \
         served, but missing from the spec:\n{}\n  in the spec, but served by no route:\n{}",
        listed(&undocumented),
        listed(&unserved),
    );
}

#[test]
fn every_operation_declares_its_success_and_its_401() {
    let spec = spec();
    let mut problems = Vec::new();
    for op in operations(&spec) {
        let responses = op.operation["responses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let success = if op.is(&REDIRECTS) { '3' } else { '2' };
        if !responses.keys().any(|code| code.starts_with(success)) {
            problems.push(format!("{}: no {success}xx response", op.name()));
        }
        // `security: []` marks an operation that needs no credentials; only the public ones may.
        let public = op.operation.get("security") == Some(&Value::Array(vec![]));
        if public != op.is(&PUBLIC) {
            problems.push(format!(
                "{}: is {}public in the spec, but {}",
                op.name(),
                if public { "" } else { "not " },
                if op.is(&PUBLIC) {
                    "the sign-in flow needs no token (declare `security: []`)"
                } else {
                    "it requires a token"
                },
            ));
        }
        if !op.is(&PUBLIC) && !responses.contains_key("401") {
            problems.push(format!("{}: requires a token but has no 401", op.name()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parameters that apply to an operation: its path item's and its own, references resolved.
fn parameters<'a>(spec: &'a Value, op: &Operation<'a>) -> Vec<&'a Value> {
    let declared = |value: &'a Value| value.as_array().into_iter().flatten();
    declared(&op.path_item["parameters"])
        .chain(declared(&op.operation["parameters"]))
        .map(|parameter| match parameter["$ref"].as_str() {
            Some(reference) => resolve(spec, reference).unwrap_or(&Value::Null),
            None => parameter,
        })
        .collect()
}

fn resolve<'a>(spec: &'a Value, reference: &str) -> Option<&'a Value> {
    spec.pointer(reference.strip_prefix('#')?)
}

#[test]
fn every_path_parameter_is_declared_and_required() {
    let spec = spec();
    let mut problems = Vec::new();
    for op in operations(&spec) {
        let in_template: BTreeSet<&str> = op
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let path_parameters: Vec<&Value> = parameters(&spec, &op)
            .into_iter()
            .filter(|p| p["in"] == "path")
            .collect();
        let declared: BTreeSet<&str> = path_parameters
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        if in_template != declared {
            problems.push(format!(
                "{}: the path has parameters {in_template:?}, the operation declares {declared:?}",
                op.name()
            ));
        }
        for parameter in path_parameters {
            if parameter["required"] != true {
                problems.push(format!(
                    "{}: path parameter {} must be required",
                    op.name(),
                    parameter["name"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `$ref` under `value`, with where it was found.
fn references<'a>(value: &'a Value, at: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => found.push((at.clone(), reference)),
                    _ => references(child, format!("{at} > {key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                references(child, format!("{at} > {i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves_to_a_component() {
    let spec = spec();
    let mut found = Vec::new();
    references(&spec, "spec".into(), &mut found);
    assert!(!found.is_empty(), "the spec uses no $ref at all");
    let broken: Vec<String> = found
        .iter()
        .filter(|(_, reference)| {
            !reference.starts_with("#/components/") || resolve(&spec, reference).is_none()
        })
        .map(|(at, reference)| format!("{at}: {reference}"))
        .collect();
    assert!(
        broken.is_empty(),
        "references that name no component:\n{}",
        broken.join("\n")
    );
}
