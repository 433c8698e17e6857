//! History read straight from the log, against a straightforward model: a seeded script of a few
//! hundred changes across every kind of resource, by two actors, then every prompt-template version,
//! `asOf` reads of every resource at sampled moments, and every audit row (paged and exported as
//! NDJSON) compared with what the model says they must be.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use domain::catalog::kinds::BUILT_IN_ENTITY_TYPES;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tests::{send, TestApp};

const USER_AGENT: &str = "history-script/1.0";
const REDACTED: &str = "[redacted]";

/// What the model knows of one resource.
#[derive(Debug, Clone)]
struct Resource {
    /// The collection path under `/api` (`models`), or `organizations`, or `members` (id: user id).
    path: &'static str,
    /// The audit trail's resource type.
    resource_type: &'static str,
    /// The fields reads show (write-only values as their `has…` flags), `None` once deleted.
    fields: Option<Map<String, Value>>,
    /// Which write-only fields hold a value.
    sealed: BTreeSet<&'static str>,
    /// Events appended to the resource so far.
    version: i64,
}

impl Resource {
    /// The audited form: the fields, with the write-only ones that hold a value as `[redacted]` and
    /// without their `has…` flags (which are a read shape, not state).
    fn audited(&self) -> Map<String, Value> {
        let Some(fields) = &self.fields else {
            return Map::new();
        };
        let mut audited: Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !k.starts_with("has"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for field in &self.sealed {
            audited.insert((*field).into(), json!(REDACTED));
        }
        audited
    }
}

/// One audit row the model expects.
#[derive(Debug, Clone)]
struct ExpectedRow {
    event_type: String,
    resource_type: &'static str,
    resource_id: String,
    organization_id: Option<String>,
    actor: (String, &'static str),
    request_id: String,
    changes: Map<String, Value>,
}

/// One prompt-template version the model expects.
#[derive(Debug, Clone)]
struct ExpectedVersion {
    fields: Map<String, Value>,
    actor: String,
    changed: BTreeSet<String>,
}

struct Actor {
    token: String,
    id: String,
    role: &'static str,
}

struct Script {
    app: TestApp,
    rng: StdRng,
    organization: String,
    environment: String,
    anchor_model: String,
    system: Actor,
    alice: Actor,
    /// Bob's user id: added, re-roled and removed as a member.
    bob: String,
    resources: BTreeMap<String, Resource>,
    rows: Vec<ExpectedRow>,
    versions: BTreeMap<String, Vec<ExpectedVersion>>,
    /// Moments between steps, with the resources' fields and organization name as they were then.
    samples: Vec<(DateTime<Utc>, BTreeMap<String, Resource>)>,
    steps: usize,
}

fn changes(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    resealed: &[&str],
) -> Map<String, Value> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changes = Map::new();
    for key in keys {
        let from = before.get(key).cloned().unwrap_or(Value::Null);
        let to = after.get(key).cloned().unwrap_or(Value::Null);
        if from != to || resealed.contains(&key.as_str()) {
            changes.insert(key.clone(), json!({ "from": from, "to": to }));
        }
    }
    changes
}

impl Script {
    async fn new(seed: u64) -> Script {
        let app = TestApp::spawn().await;
        let alice_id = app.user_id("alice").await;
        let bob = app.user_id("bob").await;
        let system = Actor {
            token: app.admin_token.clone(),
            id: app.admin_id.clone(),
            role: "system",
        };
        let alice = Actor {
            token: app.issuer.token("alice"),
            id: alice_id,
            role: "admin",
        };
        let mut script = Script {
            app,
            rng: StdRng::seed_from_u64(seed),
            organization: String::new(),
            environment: String::new(),
            anchor_model: String::new(),
            system,
            alice,
            bob,
            resources: BTreeMap::new(),
            rows: Vec::new(),
            versions: BTreeMap::new(),
            samples: Vec::new(),
            steps: 0,
        };
        script.organization = script
            .create(
                "organizations",
                "organization",
                json!({ "name": "Acme Corp", "description": "Main" }),
                false,
            )
            .await;
        let organization = script.organization.clone();
        let alice = script.alice.id.clone();
        script
            .member_change(Method::POST, &alice, Some("admin"), false)
            .await;
        script.environment = script
            .create(
                "environments",
                "environment",
                json!({ "organizationId": organization, "name": "Production", "description": "Live" }),
                false,
            )
            .await;
        script.anchor_model = script.create_model(false).await;
        script
    }

    fn actor(&self, as_alice: bool) -> &Actor {
        if as_alice {
            &self.alice
        } else {
            &self.system
        }
    }

    fn next_request_id(&mut self) -> String {
        self.steps += 1;
        format!("history-step-{}", self.steps)
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        as_alice: bool,
    ) -> (u16, Value, String) {
        let request_id = self.next_request_id();
        let token = self.actor(as_alice).token.clone();
        let mut request = self
            .app
            .request(method, &format!("/api/{path}"))
            .bearer_auth(token)
            .header("x-request-id", &request_id)
            .header("user-agent", USER_AGENT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = send(request).await;
        (status, body, request_id)
    }

    fn record(
        &mut self,
        event_type: String,
        id: &str,
        before: Map<String, Value>,
        resealed: &[&str],
        as_alice: bool,
        request_id: String,
    ) {
        let resource = &self.resources[id];
        let actor = self.actor(as_alice);
        let organization_id = match resource.resource_type {
            "organization" => Some(id.to_owned()),
            "system_model" => None,
            _ => Some(self.organization.clone()),
        };
        let resource_id = if resource.resource_type == "member" {
            id.trim_start_matches("member:").to_owned()
        } else {
            id.to_owned()
        };
        self.rows.push(ExpectedRow {
            event_type,
            resource_type: resource.resource_type,
            resource_id,
            organization_id,
            actor: (actor.id.clone(), actor.role),
            request_id,
            changes: changes(&before, &resource.audited(), resealed),
        });
    }

    /// Creates a resource from `body` (write-only fields named in the body are sealed) and models it.
    async fn create(
        &mut self,
        path: &'static str,
        resource_type: &'static str,
        body: Value,
        as_alice: bool,
    ) -> String {
        let (status, answer, request_id) = self
            .call(Method::POST, path, Some(body.clone()), as_alice)
            .await;
        assert_eq!(status, 201, "creating {path}: {answer}");
        let id = answer["id"].as_str().unwrap().to_owned();
        let mut fields = body.as_object().unwrap().clone();
        let mut sealed = BTreeSet::new();
        for (field, flag) in write_only(path) {
            if fields.remove(*field).is_some() {
                sealed.insert(*field);
            }
            fields.insert((*flag).into(), json!(sealed.contains(field)));
        }
        self.resources.insert(
            id.clone(),
            Resource {
                path,
                resource_type,
                fields: Some(fields),
                sealed,
                version: 1,
            },
        );
        let resealed: Vec<&str> = self.resources[&id].sealed.iter().copied().collect();
        self.record(
            format!("{resource_type}.created"),
            &id,
            Map::new(),
            &resealed,
            as_alice,
            request_id,
        );
        self.remember_version(
            &id,
            as_alice,
            body.as_object().unwrap().keys().cloned().collect(),
        );
        id
    }

    /// Sends a partial update; `patch` must change something.
    async fn update(&mut self, id: &str, patch: Value, as_alice: bool) {
        let path = self.resources[id].path;
        let before = self.resources[id].audited();
        let (status, answer, request_id) = self
            .call(
                Method::PUT,
                &format!("{path}/{id}"),
                Some(patch.clone()),
                as_alice,
            )
            .await;
        assert_eq!(status, 200, "updating {path}/{id} with {patch}: {answer}");
        let resource = self.resources.get_mut(id).unwrap();
        let fields = resource.fields.as_mut().unwrap();
        let mut resealed = Vec::new();
        let mut changed = BTreeSet::new();
        for (field, value) in patch.as_object().unwrap() {
            match write_only(path).iter().find(|(f, _)| f == field) {
                Some((field, flag)) => {
                    if value.is_null() {
                        resource.sealed.remove(field);
                    } else {
                        resource.sealed.insert(field);
                        resealed.push(*field);
                    }
                    fields.insert((*flag).into(), json!(!value.is_null()));
                }
                None => {
                    if fields.get(field) != Some(value) {
                        changed.insert(field.clone());
                    }
                    fields.insert(field.clone(), value.clone());
                }
            }
        }
        resource.version += 1;
        let resource_type = resource.resource_type;
        self.record(
            format!("{resource_type}.updated"),
            id,
            before,
            &resealed,
            as_alice,
            request_id,
        );
        self.remember_version(id, as_alice, changed);
    }

    async fn delete(&mut self, id: &str, as_alice: bool) {
        let path = self.resources[id].path;
        let before = self.resources[id].audited();
        let (status, answer, request_id) = self
            .call(Method::DELETE, &format!("{path}/{id}"), None, as_alice)
            .await;
        assert_eq!(status, 200, "deleting {path}/{id}: {answer}");
        let resource = self.resources.get_mut(id).unwrap();
        resource.fields = None;
        resource.sealed.clear();
        resource.version += 1;
        let resource_type = resource.resource_type;
        self.record(
            format!("{resource_type}.deleted"),
            id,
            before,
            &[],
            as_alice,
            request_id,
        );
    }

    /// Adds bob (or alice), changes a role or removes a member.
    async fn member_change(
        &mut self,
        method: Method,
        user: &str,
        role: Option<&str>,
        as_alice: bool,
    ) {
        let key = format!("member:{user}");
        let organization = self.organization.clone();
        let (path, body) = match method {
            Method::POST => (
                format!("organizations/{organization}/members"),
                Some(json!({ "userId": user, "role": role })),
            ),
            Method::PUT => (
                format!("organizations/{organization}/members/{user}"),
                Some(json!({ "role": role })),
            ),
            _ => (format!("organizations/{organization}/members/{user}"), None),
        };
        let before = self
            .resources
            .get(&key)
            .map(Resource::audited)
            .unwrap_or_default();
        let event_type = match method {
            Method::POST => "member.added",
            Method::PUT => "member.role_changed",
            _ => "member.removed",
        };
        let (status, answer, request_id) = self.call(method, &path, body, as_alice).await;
        assert!(
            status == 200 || status == 201,
            "{event_type} for {user}: {status} {answer}"
        );
        let resource = self.resources.entry(key.clone()).or_insert(Resource {
            path: "members",
            resource_type: "member",
            fields: None,
            sealed: BTreeSet::new(),
            version: 0,
        });
        resource.fields = role.map(|role| Map::from_iter([("role".to_owned(), json!(role))]));
        resource.version += 1;
        self.record(event_type.into(), &key, before, &[], as_alice, request_id);
    }

    fn remember_version(&mut self, id: &str, as_alice: bool, changed: BTreeSet<String>) {
        if self.resources[id].path != "prompt-templates" {
            return;
        }
        let version = ExpectedVersion {
            fields: self.resources[id].fields.clone().unwrap(),
            actor: self.actor(as_alice).id.clone(),
            changed,
        };
        self.versions
            .entry(id.to_owned())
            .or_default()
            .push(version);
    }

    fn sample(&mut self) {
        self.samples.push((Utc::now(), self.resources.clone()));
    }

    fn live(&self, path: &str) -> Vec<String> {
        self.resources
            .iter()
            .filter(|(_, r)| r.path == path && r.fields.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn pick(&mut self, path: &str) -> Option<String> {
        let live = self.live(path);
        (!live.is_empty()).then(|| live[self.rng.gen_range(0..live.len())].clone())
    }

    async fn create_model(&mut self, as_alice: bool) -> String {
        let n = self.steps;
        let body = json!({
            "organizationId": self.organization, "name": format!("Model {n}"), "description": format!("model {n}"),
            "modelUrl": format!("https://models.test/{n}/v1"), "provider": "openai",
            "token": format!("sk-history-token-{n}"),
        });
        self.create("models", "model", body, as_alice).await
    }

    /// One random change of the script.
    async fn step(&mut self) {
        let n = self.steps;
        let as_alice = self.rng.gen_bool(0.3);
        let organization = self.organization.clone();
        let environment = self.environment.clone();
        match self.rng.gen_range(0..13) {
            0 => {
                let organization = self.organization.clone();
                self.update(
                    &organization,
                    json!({ "description": format!("description {n}") }),
                    as_alice,
                )
                .await;
            }
            1 => {
                if self.rng.gen_bool(0.2) {
                    let organization = self.organization.clone();
                    self.update(&organization, json!({ "name": format!("Acme {n}") }), false)
                        .await;
                } else {
                    let environment = self.environment.clone();
                    self.update(
                        &environment,
                        json!({ "name": format!("Production {n}") }),
                        as_alice,
                    )
                    .await;
                }
            }
            2 => match self.pick("environments").filter(|e| *e != environment) {
                Some(spare) if self.rng.gen_bool(0.5) => self.delete(&spare, as_alice).await,
                _ => {
                    let body = json!({ "organizationId": organization, "name": format!("Spare {n}"), "description": null });
                    self.create("environments", "environment", body, as_alice)
                        .await;
                }
            },
            3 => match self.pick("variables") {
                Some(variable) if self.rng.gen_bool(0.7) => {
                    let patch = match self.rng.gen_range(0..3) {
                        0 => json!({ "value": format!("secret-history-value-{n}") }),
                        1 => json!({ "description": format!("variable {n}") }),
                        _ => json!({ "name": format!("VAR_{n}") }),
                    };
                    self.update(&variable, patch, as_alice).await;
                }
                Some(variable) => self.delete(&variable, as_alice).await,
                None => {
                    let body = json!({ "organizationId": organization, "environmentId": environment, "name": format!("VAR_{n}"),
                                       "description": null, "value": format!("secret-history-value-{n}") });
                    self.create("variables", "variable", body, as_alice).await;
                }
            },
            4 => match self.pick("models").filter(|m| *m != self.anchor_model) {
                Some(model) if self.rng.gen_bool(0.7) => {
                    let patch = match self.rng.gen_range(0..3) {
                        0 => json!({ "token": format!("sk-history-token-{n}") }),
                        1 => json!({ "clientKey": format!("ck-history-{n}") }),
                        _ => json!({ "name": format!("Model {n}") }),
                    };
                    self.update(&model, patch, as_alice).await;
                }
                Some(model) => self.delete(&model, as_alice).await,
                None => {
                    self.create_model(as_alice).await;
                }
            },
            5 => match self.pick("system-models") {
                Some(model) => {
                    let patch = if self.rng.gen_bool(0.5) {
                        json!({ "description": format!("system model {n}") })
                    } else {
                        json!({ "secretKey": format!("sys-secret-history-{n}") })
                    };
                    self.update(&model, patch, false).await;
                }
                None => {
                    let body = json!({ "name": format!("System {n}"), "description": null,
                                       "modelUrl": "https://system.test/v1", "provider": "openai",
                                       "visible": true });
                    self.create("system-models", "system_model", body, false)
                        .await;
                }
            },
            // Two templates at least, so that some grow long version histories.
            6 | 7 => match self
                .pick("prompt-templates")
                .filter(|_| self.live("prompt-templates").len() >= 2)
            {
                Some(template) if self.rng.gen_bool(0.97) => {
                    let patch = match self.rng.gen_range(0..3) {
                        0 => {
                            json!({ "promptText": format!("Write a welcome for {{{{userName}}}}, take {n}.") })
                        }
                        1 => {
                            json!({ "name": format!("Template {n}"), "description": format!("template {n}") })
                        }
                        _ => {
                            json!({ "variableSets": [{ "name": format!("Set {n}"), "values": { "userName": "Sarah" } }] })
                        }
                    };
                    self.update(&template, patch, as_alice).await;
                }
                Some(template) => self.delete(&template, as_alice).await,
                None => {
                    let body = json!({
                        "organizationId": organization, "environmentId": environment, "name": format!("Template {n}"),
                        "description": null, "promptText": "Welcome {{userName}}.", "modelId": self.anchor_model,
                        "variables": { "userName": "string" }, "variableSets": [],
                    });
                    self.create("prompt-templates", "prompt_template", body, as_alice)
                        .await;
                }
            },
            8 => {
                match self.pick("prompts") {
                    Some(prompt) if self.rng.gen_bool(0.7) => {
                        self.update(&prompt, json!({ "content": format!("Respond to {{{{customerMessage}}}} ({n})") }), as_alice).await;
                    }
                    Some(prompt) => self.delete(&prompt, as_alice).await,
                    None => {
                        let body = json!({ "organizationId": organization, "modelId": self.anchor_model, "title": format!("Prompt {n}"),
                                       "content": "Respond to {{customerMessage}}", "outputFormat": "text", "outputTemplate": null });
                        self.create("prompts", "prompt", body, as_alice).await;
                    }
                }
            }
            9 => match self.pick("workflow-entity-types") {
                Some(kind) if self.rng.gen_bool(0.6) => {
                    self.update(
                        &kind,
                        json!({ "description": format!("type {n}") }),
                        as_alice,
                    )
                    .await;
                }
                _ => {
                    let body = json!({ "organizationId": organization, "name": format!("Type {n}"), "description": null });
                    self.create(
                        "workflow-entity-types",
                        "workflow_entity_type",
                        body,
                        as_alice,
                    )
                    .await;
                }
            },
            10 => match self.pick("workflow-entities") {
                Some(entity) if self.rng.gen_bool(0.6) => {
                    self.update(
                        &entity,
                        json!({ "script": format!("return {n};") }),
                        as_alice,
                    )
                    .await;
                }
                _ => {
                    let body = json!({
                        "organizationId": organization, "environmentId": null, "name": format!("Entity {n}"), "description": null,
                        "workflowEntityTypeId": BUILT_IN_ENTITY_TYPES[0].0, "condition": null, "script": null, "tfCondition": null,
                        "arguments": [{ "argumentName": "userId", "argumentValue": "{{message.user.id}}", "argumentDescription": null }],
                    });
                    self.create("workflow-entities", "workflow_entity", body, as_alice)
                        .await;
                }
            },
            11 => match self.pick("workflows") {
                Some(workflow) if self.rng.gen_bool(0.7) => {
                    self.update(
                        &workflow,
                        json!({ "description": format!("workflow {n}") }),
                        as_alice,
                    )
                    .await;
                }
                Some(workflow) => self.delete(&workflow, as_alice).await,
                None => {
                    let body = json!({
                        "organizationId": organization, "environmentId": environment, "name": format!("Workflow {n}"),
                        "description": null,
                        "workflowData": { "root": { "name": "Start", "entityId": null, "entityType": "event",
                                                    "presentation": { "type": "circle" }, "children": [] } },
                    });
                    self.create("workflows", "workflow", body, as_alice).await;
                }
            },
            _ => {
                let bob = self.bob.clone();
                let role = self
                    .resources
                    .get(&format!("member:{bob}"))
                    .and_then(|r| r.fields.clone());
                match role {
                    None => {
                        self.member_change(Method::POST, &bob, Some("user"), as_alice)
                            .await
                    }
                    Some(_) if self.rng.gen_bool(0.3) => {
                        self.member_change(Method::DELETE, &bob, None, as_alice)
                            .await
                    }
                    Some(fields) => {
                        let next = if fields["role"] == "user" {
                            "guest"
                        } else {
                            "user"
                        };
                        self.member_change(Method::PUT, &bob, Some(next), as_alice)
                            .await;
                    }
                }
            }
        }
    }
}

fn write_only(path: &str) -> &'static [(&'static str, &'static str)] {
    match path {
        "variables" => &[("value", "hasValue")],
        "models" | "system-models" => &[
            ("token", "hasToken"),
            ("clientKey", "hasClientKey"),
            ("secretKey", "hasSecretKey"),
        ],
        _ => &[],
    }
}

fn at(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Every row of `/api/audit-events?<query>`, page by page.
async fn all_audit_rows(app: &TestApp, query: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for page in 1.. {
        let (status, body) = app
            .get(&format!("/api/audit-events?{query}&limit=100&page={page}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap().clone();
        let total = body["pagination"]["total"].as_u64().unwrap() as usize;
        rows.extend(data);
        if rows.len() >= total {
            break;
        }
    }
    rows
}

#[tokio::test]
async fn a_scripted_history_reads_back_as_the_model_says_through_versions_as_of_and_the_audit_trail(
) {
    let mut script = Script::new(6).await;
    let started = Utc::now();
    script.rows.clear();
    for step in 0..300 {
        script.step().await;
        if step % 12 == 0 {
            script.sample();
        }
    }
    script.sample();
    let app = &script.app;

    // Every version of every live prompt template.
    let mut versions_checked = 0;
    for (id, expected) in &script.versions {
        if script.resources[id].fields.is_none() {
            let (status, _) = app
                .get(&format!("/api/prompt-templates/{id}/versions"))
                .await;
            assert_eq!(status, 404, "a deleted template has no versions to show");
            continue;
        }
        let (status, list) = app
            .get(&format!("/api/prompt-templates/{id}/versions?limit=100"))
            .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["pagination"]["total"], json!(expected.len()));
        for (n, version) in expected.iter().enumerate() {
            let number = n + 1;
            let (status, got) = app
                .get(&format!("/api/prompt-templates/{id}/versions/{number}"))
                .await;
            assert_eq!(status, 200, "{got}");
            assert_eq!(got["version"], json!(number));
            for (field, value) in &version.fields {
                assert_eq!(
                    &got[field], value,
                    "template {id} version {number} field {field}"
                );
            }
            assert_eq!(got["changedBy"]["id"], json!(version.actor));
            let changed: BTreeSet<String> = got["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(changed, version.changed, "template {id} version {number}");
            assert_eq!(
                list["data"][expected.len() - number]["version"],
                json!(number),
                "newest first"
            );
            versions_checked += 1;
        }
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &script.rows {
        *kinds.entry(row.resource_type).or_default() += 1;
    }
    assert!(
        versions_checked >= 20,
        "the script made only {versions_checked} template versions; changes: {kinds:?}"
    );

    // Every resource, as of every sampled moment.
    let mut as_of_checked = 0;
    for (moment, resources) in &script.samples {
        let organization_name =
            resources[&script.organization].fields.as_ref().unwrap()["name"].clone();
        for (id, then) in &script.resources {
            if then.path == "members" {
                continue;
            }
            let (status, got) = app
                .get(&format!("/api/{}/{id}?asOf={}", then.path, at(*moment)))
                .await;
            match resources.get(id) {
                None => assert_eq!(
                    status, 404,
                    "{} {id} did not exist at {moment}: {got}",
                    then.path
                ),
                Some(Resource { fields: None, .. }) => {
                    assert_eq!(
                        status, 410,
                        "{} {id} was deleted by {moment}: {got}",
                        then.path
                    );
                    assert!(got["details"].as_str().unwrap().contains("was deleted at"));
                }
                Some(Resource {
                    fields: Some(fields),
                    version,
                    path,
                    ..
                }) => {
                    assert_eq!(status, 200, "{path} {id} at {moment}: {got}");
                    for (field, value) in fields {
                        assert_eq!(&got[field], value, "{path} {id} field {field} at {moment}");
                    }
                    if *path == "prompt-templates" {
                        assert_eq!(got["version"], json!(version));
                    }
                    if got.get("organization").is_some_and(|o| !o.is_null()) {
                        assert_eq!(
                            got["organization"]["name"], organization_name,
                            "names nest as they were then"
                        );
                    }
                }
            }
            as_of_checked += 1;
        }
        let bob = &script.bob;
        let (status, got) = app
            .get(&format!(
                "/api/organizations/{}/members/{bob}?asOf={}",
                script.organization,
                at(*moment)
            ))
            .await;
        match resources
            .get(&format!("member:{bob}"))
            .and_then(|r| r.fields.clone())
        {
            Some(fields) => {
                assert_eq!(status, 200, "{got}");
                assert_eq!(got["role"], fields["role"]);
            }
            None => assert_eq!(status, 404, "{got}"),
        }
    }
    assert!(as_of_checked >= 500, "only {as_of_checked} asOf reads");

    // Every audit row of the script, newest first, as the model says.
    let query = format!("from={}", at(started));
    let rows = all_audit_rows(app, &query).await;
    assert_eq!(rows.len(), script.rows.len(), "one audit row per change");
    for (got, expected) in rows.iter().zip(script.rows.iter().rev()) {
        let what = format!("{} ({})", expected.event_type, expected.request_id);
        assert_eq!(got["type"], json!(expected.event_type), "{what}");
        assert_eq!(got["resourceType"], json!(expected.resource_type), "{what}");
        assert_eq!(got["resourceId"], json!(expected.resource_id), "{what}");
        assert_eq!(
            got["organizationId"],
            json!(expected.organization_id),
            "{what}"
        );
        assert_eq!(
            got["actor"],
            json!({ "id": expected.actor.0, "role": expected.actor.1 }),
            "{what}"
        );
        assert_eq!(got["requestId"], json!(expected.request_id), "{what}");
        assert_eq!(got["ip"], json!("127.0.0.1"), "{what}");
        assert_eq!(got["userAgent"], json!(USER_AGENT), "{what}");
        assert_eq!(
            got["changes"],
            Value::Object(expected.changes.clone()),
            "{what}"
        );
    }
    let positions: Vec<i64> = rows
        .iter()
        .map(|r| r["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "newest first");

    // The export streams the same rows.
    let response = app
        .admin(Method::GET, &format!("/api/audit-events?{query}"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let exported: Vec<Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(exported, rows);
}
