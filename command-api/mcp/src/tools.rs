//! The tools: which REST operations agents may call, each named and annotated here once, with its
//! description and its input and output schemas taken from the operation itself
//! ([`crate::openapi`]), and how a call's arguments become that operation's request.
//!
//! A tool's arguments are the operation's path parameters, its query parameters and its JSON body's
//! fields, side by side in one object. Headers are not arguments: reads wait for the caller's own
//! writes by default (the API's read-your-writes), and idempotency keys and `If-Match` are for
//! clients that retry by themselves.

use std::sync::Arc;

use anyhow::{bail, Context};
use axum::http::Method;
use http_layer::ApiError;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Map, Value};
use url::Url;

use crate::openapi::{with_defs, Document, Operation};

/// What a tool does to the platform, which its annotations state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Changes nothing; the same call answers the same.
    Reads,
    /// Adds a new resource; calling again adds another.
    Creates,
    /// Overwrites fields of a resource; the same call again changes nothing more.
    Updates,
    /// Moves a workflow item (feedback, a notification) to another state.
    Moves,
    /// Runs a model (an outside service) and records the execution; calling again runs it again.
    RunsModel,
    /// Replaces a template's sentiment analyses, by a lexicon or by running its model.
    Analyses,
}

impl Effect {
    fn annotations(self, title: &str) -> ToolAnnotations {
        // (read-only, destructive, idempotent, open world)
        let (read_only, destructive, idempotent, open_world) = match self {
            Effect::Reads => (true, false, true, false),
            Effect::Creates => (false, false, false, false),
            Effect::Updates => (false, true, true, false),
            Effect::Moves => (false, true, false, false),
            Effect::RunsModel => (false, false, false, true),
            Effect::Analyses => (false, true, false, true),
        };
        ToolAnnotations::with_title(title)
            .read_only(read_only)
            .destructive(destructive)
            .idempotent(idempotent)
            .open_world(open_world)
    }
}

/// Every tool: its name, the operation it mirrors (`operationId` in `schemas/openapi.yaml`) and
/// what it does. Variables are listed without their values and models without their credentials
/// because the REST API never answers with them.
const TOOLS: &[(&str, &str, Effect)] = &[
    ("list_organizations", "listOrganizations", Effect::Reads),
    ("get_organization", "getOrganization", Effect::Reads),
    ("list_environments", "listEnvironments", Effect::Reads),
    ("get_environment", "getEnvironment", Effect::Reads),
    ("list_variables", "listVariables", Effect::Reads),
    ("get_variable", "getVariable", Effect::Reads),
    ("list_models", "listModels", Effect::Reads),
    ("get_model", "getModel", Effect::Reads),
    (
        "list_visible_system_models",
        "listVisibleSystemModels",
        Effect::Reads,
    ),
    ("list_workflows", "listWorkflows", Effect::Reads),
    ("get_workflow", "getWorkflow", Effect::Reads),
    (
        "list_workflow_entities",
        "listWorkflowEntities",
        Effect::Reads,
    ),
    ("get_workflow_entity", "getWorkflowEntity", Effect::Reads),
    (
        "list_prompt_templates",
        "listPromptTemplates",
        Effect::Reads,
    ),
    ("get_prompt_template", "getPromptTemplate", Effect::Reads),
    (
        "list_prompt_template_versions",
        "listPromptTemplateVersions",
        Effect::Reads,
    ),
    (
        "get_prompt_template_version",
        "getPromptTemplateVersion",
        Effect::Reads,
    ),
    (
        "list_prompt_template_executions",
        "listPromptTemplateExecutions",
        Effect::Reads,
    ),
    ("get_execution", "getExecution", Effect::Reads),
    ("list_prompts", "listPrompts", Effect::Reads),
    ("get_prompt", "getPrompt", Effect::Reads),
    (
        "list_processed_messages",
        "listProcessedMessages",
        Effect::Reads,
    ),
    (
        "count_processed_messages",
        "countProcessedMessages",
        Effect::Reads,
    ),
    (
        "get_processed_message",
        "getProcessedMessage",
        Effect::Reads,
    ),
    ("list_audit_events", "listAuditEvents", Effect::Reads),
    (
        "create_prompt_template",
        "createPromptTemplate",
        Effect::Creates,
    ),
    (
        "update_prompt_template",
        "updatePromptTemplate",
        Effect::Updates,
    ),
    ("create_prompt", "createPrompt", Effect::Creates),
    ("update_prompt", "updatePrompt", Effect::Updates),
    (
        "execute_prompt_template",
        "executePromptTemplate",
        Effect::RunsModel,
    ),
    (
        "analyze_prompt_template_sentiment",
        "analyzePromptTemplateSentiment",
        Effect::Analyses,
    ),
    // The operator's triage: System users only, as in the REST API.
    ("list_feedback", "listFeedback", Effect::Reads),
    ("list_feedback_groups", "listFeedbackGroups", Effect::Reads),
    ("get_feedback", "getFeedback", Effect::Reads),
    ("move_feedback", "moveFeedback", Effect::Moves),
    ("list_notifications", "listNotifications", Effect::Reads),
    (
        "count_unread_notifications",
        "countUnreadNotifications",
        Effect::Reads,
    ),
    (
        "acknowledge_notification",
        "acknowledgeNotification",
        Effect::Moves,
    ),
    ("resolve_notification", "resolveNotification", Effect::Moves),
];

/// The tool that runs a prompt template, which streams its output as progress when asked to.
pub const EXECUTE: &str = "execute_prompt_template";

/// One tool: what clients see of it, and the operation it calls.
pub struct ToolDefinition {
    pub tool: Tool,
    pub operation: Operation,
    /// Whether only System users may call it, as for every operation under `/api/v1/admin/`: the
    /// tool is listed to them alone (a call by anyone else gets the REST API's `403`).
    pub system_only: bool,
}

/// The tools this server offers, in the order they are listed.
pub struct Tools {
    definitions: Vec<ToolDefinition>,
}

/// A tool call as the REST request it makes.
#[derive(Debug)]
pub struct RestCall {
    pub method: Method,
    pub path_and_query: String,
    pub body: Option<Map<String, Value>>,
}

impl Tools {
    /// Every tool, or only those that change nothing when `read_only`.
    pub fn new(document: &Document, read_only: bool) -> anyhow::Result<Self> {
        let mut definitions = Vec::new();
        for &(name, operation_id, effect) in TOOLS {
            if read_only && effect != Effect::Reads {
                continue;
            }
            let operation = document.operation(operation_id)?;
            let tool = Tool::new(
                name,
                description(name, &operation),
                Arc::new(input_schema(&operation).with_context(|| format!("tool {name}"))?),
            )
            .with_title(operation.summary.clone())
            .with_raw_output_schema(Arc::new(object(&operation.answer)?))
            .with_annotations(effect.annotations(&operation.summary));
            definitions.push(ToolDefinition {
                tool,
                system_only: operation.path.starts_with("/api/v1/admin/"),
                operation,
            });
        }
        Ok(Tools { definitions })
    }

    /// The tools a caller sees: all of them for a System user, the others' without the operator's.
    pub fn list(&self, system_user: bool) -> Vec<Tool> {
        self.definitions
            .iter()
            .filter(|definition| system_user || !definition.system_only)
            .map(|definition| definition.tool.clone())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&ToolDefinition> {
        self.definitions
            .iter()
            .find(|definition| definition.tool.name == name)
    }
}

impl ToolDefinition {
    /// The REST request for a call with `arguments`, or the REST API's `400` naming what is wrong
    /// with them.
    pub fn request(&self, arguments: &Map<String, Value>) -> Result<RestCall, ApiError> {
        let operation = &self.operation;
        let mut url = Url::parse("http://rest/").expect("a valid base");
        {
            let mut segments = url.path_segments_mut().expect("a base URL has a path");
            segments.clear();
            for part in operation.path.trim_start_matches('/').split('/') {
                let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
                    segments.push(part);
                    continue;
                };
                let value = arguments
                    .get(name)
                    .and_then(scalar)
                    .ok_or_else(|| ApiError::invalid(name, "required"))?;
                // A processed message's key holds slashes, and stays one path.
                segments.extend(value.split('/'));
            }
        }
        {
            let mut query = url.query_pairs_mut();
            for parameter in &operation.query_parameters {
                match arguments.get(&parameter.name) {
                    None | Some(Value::Null) if parameter.required => {
                        return Err(ApiError::invalid(&parameter.name, "required"))
                    }
                    None | Some(Value::Null) => {}
                    Some(value) => {
                        let value = scalar(value).ok_or_else(|| {
                            ApiError::invalid(
                                &parameter.name,
                                "must be a string, a number or a boolean",
                            )
                        })?;
                        query.append_pair(&parameter.name, &value);
                    }
                }
            }
        }
        let in_path_or_query = |name: &str| {
            operation.path_parameters.iter().any(|p| p.name == name)
                || operation.query_parameters.iter().any(|p| p.name == name)
        };
        let rest: Map<String, Value> = arguments
            .iter()
            .filter(|(name, _)| !in_path_or_query(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let body = match (&operation.body, rest.keys().next()) {
            (Some(_), _) => Some(rest),
            (None, Some(unknown)) => {
                return Err(ApiError::invalid(unknown, "unknown argument"));
            }
            (None, None) => None,
        };
        let mut path_and_query = url.path().to_owned();
        if let Some(query) = url.query().filter(|q| !q.is_empty()) {
            path_and_query = format!("{path_and_query}?{query}");
        }
        Ok(RestCall {
            method: operation.method.clone(),
            path_and_query,
            body,
        })
    }
}

/// A path or query value as text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn description(name: &str, operation: &Operation) -> String {
    let mut description = operation.summary.clone();
    if !operation.description.is_empty() {
        description = format!("{description}.\n\n{}", operation.description);
    }
    if name == EXECUTE {
        description.push_str(
            "\n\nOver MCP, the output streams as progress notifications (each message the new \
             text) when the call carries a progressToken; `stream` is set accordingly.",
        );
    }
    description
}

/// The arguments' schema: path and query parameters and the body's fields in one object.
fn input_schema(operation: &Operation) -> anyhow::Result<JsonObject> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for parameter in operation
        .path_parameters
        .iter()
        .chain(&operation.query_parameters)
    {
        properties.insert(parameter.name.clone(), parameter.schema.clone());
        if parameter.required {
            required.push(json!(parameter.name));
        }
    }
    let mut closed = true;
    if let Some(body) = &operation.body {
        let Some(fields) = body["properties"].as_object() else {
            bail!("its body is not an object with properties");
        };
        for (name, schema) in fields {
            if properties.insert(name.clone(), schema.clone()).is_some() {
                bail!("the body's field {name} is also a parameter");
            }
        }
        required.extend(body["required"].as_array().into_iter().flatten().cloned());
        closed = body["additionalProperties"] == false;
    }
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    object(&with_defs(schema, operation.input_defs.clone()))
}

fn object(schema: &Value) -> anyhow::Result<JsonObject> {
    match schema {
        Value::Object(fields) => Ok(fields.clone()),
        _ => bail!("a schema that is not an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refused call's `400` says.
    fn details(refused: Result<RestCall, ApiError>) -> String {
        match refused {
            Err(ApiError::BadRequest { error, details }) if error == "Invalid request" => details,
            other => panic!("not a 400: {other:?}"),
        }
    }

    fn tools() -> Tools {
        Tools::new(&Document::load().unwrap(), false).unwrap()
    }

    #[test]
    fn arguments_become_the_path_the_query_and_the_body() {
        let tools = tools();
        let update = tools.get("update_prompt_template").unwrap();
        let call = update
            .request(
                json!({"id": "0193a5c2-7b1e-7c3d-9f2a-4b5c6d7e8f90", "name": "a b"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(call.method, Method::PUT);
        assert_eq!(
            call.path_and_query,
            "/api/prompt-templates/0193a5c2-7b1e-7c3d-9f2a-4b5c6d7e8f90"
        );
        assert_eq!(
            call.body,
            Some(json!({"name": "a b"}).as_object().unwrap().clone())
        );

        let list = tools.get("list_prompt_templates").unwrap();
        let call = list
            .request(
                json!({"organizationId": "o", "limit": 5, "search": "a&b"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            call.path_and_query,
            "/api/prompt-templates?limit=5&search=a%26b&organizationId=o"
        );
        assert_eq!(call.body, None);
    }

    #[test]
    fn bad_arguments_are_named() {
        let tools = tools();
        let list = tools.get("list_prompt_templates").unwrap();
        assert_eq!(
            details(list.request(&Map::new())),
            "organizationId: required"
        );
        assert_eq!(
            details(
                list.request(
                    json!({"organizationId": "o", "force": true})
                        .as_object()
                        .unwrap()
                )
            ),
            "force: unknown argument"
        );
        assert_eq!(
            details(list.request(json!({"organizationId": {"a": 1}}).as_object().unwrap())),
            "organizationId: must be a string, a number or a boolean"
        );
        let get = tools.get("get_prompt_template").unwrap();
        assert_eq!(details(get.request(&Map::new())), "id: required");
    }

    #[test]
    fn a_processed_message_key_keeps_its_slashes_and_escapes_the_rest() {
        let tools = tools();
        let get = tools.get("get_processed_message").unwrap();
        let call = get
            .request(
                json!({"key": "org/env/success/a b?.json", "organizationId": "org"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            call.path_and_query,
            "/api/processed-queue/org/env/success/a%20b%3F.json?organizationId=org"
        );
    }

    #[test]
    fn annotations_are_honest_and_read_only_mode_keeps_only_reads() {
        let all = tools();
        let execute = all.get(EXECUTE).unwrap().tool.annotations.clone().unwrap();
        assert_eq!(execute.read_only_hint, Some(false));
        assert_eq!(execute.open_world_hint, Some(true));
        let list = all
            .get("list_variables")
            .unwrap()
            .tool
            .annotations
            .clone()
            .unwrap();
        assert_eq!(list.read_only_hint, Some(true));
        let read_only = Tools::new(&Document::load().unwrap(), true).unwrap();
        assert!(read_only.get(EXECUTE).is_none());
        assert!(read_only.get("create_prompt").is_none());
        assert!(read_only.get("list_variables").is_some());
        let operators: Vec<_> = all.list(true).into_iter().map(|t| t.name).collect();
        let members: Vec<_> = all.list(false).into_iter().map(|t| t.name).collect();
        assert!(operators.iter().any(|name| name == "move_feedback"));
        assert!(!members
            .iter()
            .any(|name| name.contains("feedback") || name.contains("notification")));
        assert_eq!(operators.len() - members.len(), 8);
        assert!(read_only.list(true).iter().all(|tool| tool
            .annotations
            .as_ref()
            .unwrap()
            .read_only_hint
            == Some(true)));
    }
}
