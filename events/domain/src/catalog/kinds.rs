//! The catalog's kinds: each one's fields as the API names them (contract §8, `events/docs/contract.md`),
//! and the rules those fields obey.

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{fields_schema, Kind, KindInfo, NameScope, Reference, Scope, WriteOnly};
use crate::access::Resource;
use crate::aggregate::DomainError;
use crate::values::{Description, Name};

/// Prompt text, prompt content and entity scripts.
pub const TEXT_MAX_CHARS: usize = 100_000;
pub const WORKFLOW_MAX_NODES: usize = 10_000;
/// How deep workflow nodes may nest: as deep as a request body may (`crate::json::MAX_DEPTH`) with
/// every node drawn as the API's examples draw them (contract §8). A node at depth d is an object at
/// level 2d + 1 of the body (body, `workflowData`, `root`, then `children` and a node per level), and
/// its `children` array and `presentation` (with a `position` inside) reach two levels further.
pub const WORKFLOW_MAX_DEPTH: usize = (crate::json::MAX_DEPTH - 3) / 2;
pub const CONDITION_MAX_DEPTH: usize = 32;
pub const CONDITION_MAX_NODES: usize = 1_000;
pub const URL_MAX_CHARS: usize = 2_000;
pub const PROVIDER_MODEL_MAX_CHARS: usize = 200;

const ORGANIZATION: &str = "organization";
const ENVIRONMENT: &str = "environment";

fn name(field: &'static str, value: &mut String) -> Result<(), DomainError> {
    *value = Name::parse(field, value)?.as_str().to_owned();
    Ok(())
}

fn description(value: &Option<String>) -> Result<(), DomainError> {
    if let Some(text) = value {
        Description::parse("description", text)?;
    }
    Ok(())
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.chars().count() > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

fn required_text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    bounded(field, value, max)
}

/// An absolute http(s) URL with a host.
fn model_url(value: &str) -> Result<(), DomainError> {
    bounded("modelUrl", value, URL_MAX_CHARS)?;
    let url = url::Url::parse(value)
        .map_err(|e| DomainError::invalid("modelUrl", format!("not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(DomainError::invalid(
            "modelUrl",
            "must be an http or https URL with a host",
        ));
    }
    Ok(())
}

/// The wire format a model is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI-compatible Chat Completions (`Authorization: Bearer`): OpenAI, and what most gateways
    /// and local model servers speak.
    Openai,
    /// Anthropic Messages (`x-api-key`, `anthropic-version`).
    Anthropic,
}

impl Provider {
    /// The provider a model URL implies when none is given: Anthropic for its API's host
    /// (`anthropic.com` and its subdomains), OpenAI-compatible for every other.
    pub fn inferred_from(model_url: &str) -> Provider {
        let host = url::Url::parse(model_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase));
        match host {
            Some(host) if host == "anthropic.com" || host.ends_with(".anthropic.com") => {
                Provider::Anthropic
            }
            _ => Provider::Openai,
        }
    }
}

/// The highest price per million tokens a model may state (in its currency).
pub const PRICE_MAX: f64 = 1_000_000.0;

/// How a model (or system model) is called and what a call costs: its URL, its provider (inferred
/// from the URL when not given), optional prices per million input and output tokens, and the ISO 4217
/// code of their currency, which prices require.
fn calling(
    url: &str,
    provider: &mut Option<Provider>,
    [input, output]: [Option<f64>; 2],
    currency: &Option<String>,
) -> Result<(), DomainError> {
    model_url(url)?;
    provider.get_or_insert_with(|| Provider::inferred_from(url));
    for (field, price) in [
        ("inputPricePerMillionTokens", input),
        ("outputPricePerMillionTokens", output),
    ] {
        if let Some(price) = price {
            if !price.is_finite() || !(0.0..=PRICE_MAX).contains(&price) {
                return Err(DomainError::invalid(
                    field,
                    format!("must be a number from 0 to {PRICE_MAX}"),
                ));
            }
        }
    }
    match currency {
        Some(code) if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) => Err(
            DomainError::invalid("currency", "must be an ISO 4217 code such as USD or EUR"),
        ),
        None if input.is_some() || output.is_some() => Err(DomainError::invalid(
            "currency",
            "is required with inputPricePerMillionTokens or outputPricePerMillionTokens",
        )),
        _ => Ok(()),
    }
}

fn organization(id: Uuid) -> Reference {
    Reference::new("organizationId", ORGANIZATION, id)
}

fn environment(id: Uuid) -> Reference {
    Reference::new("environmentId", ENVIRONMENT, id)
}

const CREDENTIALS: &[WriteOnly] = &[
    WriteOnly {
        field: "token",
        flag: "hasToken",
        required: false,
    },
    WriteOnly {
        field: "clientKey",
        flag: "hasClientKey",
        required: false,
    },
    WriteOnly {
        field: "secretKey",
        flag: "hasSecretKey",
        required: false,
    },
];

// ---------------------------------------------------------------------------------------------------
// Variables

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variable;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VariableFields {
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

impl Kind for Variable {
    const INFO: KindInfo = KindInfo {
        type_name: "variable",
        fields_schema: fields_schema::<VariableFields>,
        label: "Variable",
        path: "variables",
        resource: Resource::Variables,
        scope: Scope::Organization,
        write_only: &[WriteOnly {
            field: "value",
            flag: "hasValue",
            required: true,
        }],
        immutable: &["organizationId", "environmentId"],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = VariableFields;

    fn check(f: &mut VariableFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)
    }

    fn references(f: &VariableFields) -> Vec<Reference> {
        vec![
            organization(f.organization_id),
            environment(f.environment_id),
        ]
    }

    fn name_scope(f: &VariableFields) -> Option<NameScope> {
        Some(NameScope::new(
            format!("variable:{}", f.environment_id),
            " in this environment",
        ))
    }
}

// ---------------------------------------------------------------------------------------------------
// Models and system models

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelFields {
    pub organization_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub model_url: String,
    /// The wire format it is called with; inferred from `modelUrl` when not given.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// The model identifier sent to the provider (`gpt-4o`, `claude-sonnet-4-5`); `name` when not
    /// given.
    #[serde(default)]
    pub provider_model: Option<String>,
    #[serde(default)]
    pub input_price_per_million_tokens: Option<f64>,
    #[serde(default)]
    pub output_price_per_million_tokens: Option<f64>,
    /// The ISO 4217 code of the prices' currency.
    #[serde(default)]
    pub currency: Option<String>,
}

impl Kind for Model {
    const INFO: KindInfo = KindInfo {
        type_name: "model",
        fields_schema: fields_schema::<ModelFields>,
        label: "Model",
        path: "models",
        resource: Resource::Entities,
        scope: Scope::Organization,
        write_only: CREDENTIALS,
        immutable: &["organizationId"],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: true,
    };
    type Fields = ModelFields;

    fn check(f: &mut ModelFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)?;
        if let Some(model) = &f.provider_model {
            required_text("providerModel", model, PROVIDER_MODEL_MAX_CHARS)?;
        }
        calling(
            &f.model_url,
            &mut f.provider,
            [
                f.input_price_per_million_tokens,
                f.output_price_per_million_tokens,
            ],
            &f.currency,
        )
    }

    fn references(f: &ModelFields) -> Vec<Reference> {
        vec![organization(f.organization_id)]
    }

    fn name_scope(f: &ModelFields) -> Option<NameScope> {
        Some(NameScope::new(
            format!("model:{}", f.organization_id),
            " in this organization",
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemModel;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SystemModelFields {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub model_url: String,
    /// Whether every signed-in user sees it (`GET /api/system-models/visible`).
    #[serde(default)]
    pub visible: bool,
    /// The wire format it is called with; inferred from `modelUrl` when not given.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// The model identifier sent to the provider (`gpt-4o`, `claude-sonnet-4-5`); `name` when not
    /// given.
    #[serde(default)]
    pub provider_model: Option<String>,
    #[serde(default)]
    pub input_price_per_million_tokens: Option<f64>,
    #[serde(default)]
    pub output_price_per_million_tokens: Option<f64>,
    /// The ISO 4217 code of the prices' currency.
    #[serde(default)]
    pub currency: Option<String>,
}

impl Kind for SystemModel {
    const INFO: KindInfo = KindInfo {
        type_name: "system_model",
        fields_schema: fields_schema::<SystemModelFields>,
        label: "System model",
        path: "system-models",
        resource: Resource::SystemModels,
        scope: Scope::Platform,
        write_only: CREDENTIALS,
        immutable: &[],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = SystemModelFields;

    fn check(f: &mut SystemModelFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)?;
        if let Some(model) = &f.provider_model {
            required_text("providerModel", model, PROVIDER_MODEL_MAX_CHARS)?;
        }
        calling(
            &f.model_url,
            &mut f.provider,
            [
                f.input_price_per_million_tokens,
                f.output_price_per_million_tokens,
            ],
            &f.currency,
        )
    }

    fn references(_: &SystemModelFields) -> Vec<Reference> {
        vec![]
    }

    fn name_scope(_: &SystemModelFields) -> Option<NameScope> {
        Some(NameScope::new("system_model".into(), ""))
    }
}

// ---------------------------------------------------------------------------------------------------
// Workflows

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workflow;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowFields {
    pub organization_id: Uuid,
    #[serde(default)]
    pub environment_id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub workflow_data: WorkflowData,
}

/// The canvas: a tree of nodes under `root` (none for an empty workflow).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowData {
    #[serde(default)]
    pub root: Option<Node>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// Optional client-side id; ids must not repeat, which is how a graph with cycles would show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub entity_id: Option<Uuid>,
    pub entity_type: String,
    /// How the canvas draws the node (shape, position): free-form, but an object.
    #[serde(default)]
    pub presentation: Option<Map<String, Value>>,
    #[serde(default)]
    pub children: Vec<Node>,
}

impl WorkflowData {
    /// Every node with the path it is found at (`workflowData.root.children[0]`), depth first.
    fn nodes(&self) -> Vec<(String, usize, &Node)> {
        let mut found = Vec::new();
        let mut stack: Vec<(String, usize, &Node)> = self
            .root
            .iter()
            .map(|root| ("workflowData.root".to_owned(), 1, root))
            .collect();
        while let Some((path, depth, node)) = stack.pop() {
            for (i, child) in node.children.iter().enumerate().rev() {
                stack.push((format!("{path}.children[{i}]"), depth + 1, child));
            }
            found.push((path, depth, node));
        }
        found
    }

    pub fn entity_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .nodes()
            .iter()
            .filter_map(|(_, _, n)| n.entity_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

impl Kind for Workflow {
    const INFO: KindInfo = KindInfo {
        type_name: "workflow",
        fields_schema: fields_schema::<WorkflowFields>,
        label: "Workflow",
        path: "workflows",
        resource: Resource::Workflows,
        scope: Scope::Organization,
        write_only: &[],
        immutable: &["organizationId", "environmentId"],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = WorkflowFields;

    fn check(f: &mut WorkflowFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)?;
        let nodes = f.workflow_data.nodes();
        if nodes.len() > WORKFLOW_MAX_NODES {
            return Err(DomainError::invalid(
                "workflowData",
                format!(
                    "has {} nodes; at most {WORKFLOW_MAX_NODES} are allowed",
                    nodes.len()
                ),
            ));
        }
        let mut ids = HashSet::new();
        for (path, depth, node) in &nodes {
            if *depth > WORKFLOW_MAX_DEPTH {
                return Err(DomainError::invalid(
                    path.clone(),
                    format!("nodes may be nested at most {WORKFLOW_MAX_DEPTH} deep"),
                ));
            }
            Name::parse("name", &node.name).map_err(|e| prefixed(path, e))?;
            Name::parse("entityType", &node.entity_type).map_err(|e| prefixed(path, e))?;
            if let Some(id) = &node.id {
                if !ids.insert(id.as_str()) {
                    return Err(DomainError::invalid(
                        format!("{path}.id"),
                        format!(
                            "{id:?} is used by another node: a workflow is a tree, not a graph"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn references(f: &WorkflowFields) -> Vec<Reference> {
        let mut references = vec![organization(f.organization_id)];
        references.extend(f.environment_id.map(environment));
        references.extend(
            f.workflow_data
                .entity_ids()
                .into_iter()
                .map(|id| Reference::new("workflowData", WorkflowEntity::INFO.type_name, id)),
        );
        references
    }
}

/// Names a nested field in an error found by a check of the field alone.
fn prefixed(path: &str, error: DomainError) -> DomainError {
    match error {
        DomainError::Invalid { field, message } => {
            DomainError::invalid(format!("{path}.{field}"), message)
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------------
// Workflow entities and their types

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowEntity;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowEntityFields {
    pub organization_id: Uuid,
    #[serde(default)]
    pub environment_id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub workflow_entity_type_id: Uuid,
    #[serde(default)]
    pub condition: Option<Condition>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub tf_condition: Option<String>,
    #[serde(default)]
    pub arguments: Vec<Argument>,
}

/// A condition tree: groups combine conditions with `AND`/`OR`, rules compare a message field.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Condition {
    Group {
        operator: Operator,
        conditions: Vec<Condition>,
    },
    Rule {
        field: String,
        comparison: Comparison,
        #[serde(default)]
        value: Value,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    #[serde(rename = "AND")]
    And,
    #[serde(rename = "OR")]
    Or,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Comparison {
    Equals,
    NotEquals,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
    In,
    NotIn,
    Exists,
    NotExists,
    Matches,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Argument {
    pub argument_name: String,
    pub argument_value: String,
    #[serde(default)]
    pub argument_description: Option<String>,
}

impl Condition {
    fn check(&self, path: &str, depth: usize, count: &mut usize) -> Result<(), DomainError> {
        *count += 1;
        if depth > CONDITION_MAX_DEPTH || *count > CONDITION_MAX_NODES {
            return Err(DomainError::invalid(
                path,
                format!(
                    "conditions may be nested at most {CONDITION_MAX_DEPTH} deep, with at most {CONDITION_MAX_NODES} in all"
                ),
            ));
        }
        match self {
            Condition::Group { conditions, .. } => {
                for (i, condition) in conditions.iter().enumerate() {
                    condition.check(&format!("{path}.conditions[{i}]"), depth + 1, count)?;
                }
                Ok(())
            }
            Condition::Rule { field, .. } => Name::parse("field", field)
                .map(drop)
                .map_err(|e| prefixed(path, e)),
        }
    }
}

impl Kind for WorkflowEntity {
    const INFO: KindInfo = KindInfo {
        type_name: "workflow_entity",
        fields_schema: fields_schema::<WorkflowEntityFields>,
        label: "Workflow entity",
        path: "workflow-entities",
        resource: Resource::Entities,
        scope: Scope::Organization,
        write_only: &[],
        immutable: &["organizationId", "environmentId"],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = WorkflowEntityFields;

    fn check(f: &mut WorkflowEntityFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)?;
        if let Some(condition) = &f.condition {
            condition.check("condition", 1, &mut 0)?;
        }
        if let Some(script) = &f.script {
            bounded("script", script, TEXT_MAX_CHARS)?;
        }
        if let Some(tf_condition) = &f.tf_condition {
            bounded(
                "tfCondition",
                tf_condition,
                crate::values::DESCRIPTION_MAX_CHARS,
            )?;
        }
        let mut names = HashSet::new();
        for (i, argument) in f.arguments.iter_mut().enumerate() {
            let path = format!("arguments[{i}]");
            name("argumentName", &mut argument.argument_name).map_err(|e| prefixed(&path, e))?;
            bounded(
                &format!("{path}.argumentValue"),
                &argument.argument_value,
                TEXT_MAX_CHARS,
            )?;
            if let Some(text) = &argument.argument_description {
                Description::parse("argumentDescription", text).map_err(|e| prefixed(&path, e))?;
            }
            if !names.insert(argument.argument_name.clone()) {
                return Err(DomainError::invalid(
                    format!("{path}.argumentName"),
                    format!("{:?} is declared twice", argument.argument_name),
                ));
            }
        }
        Ok(())
    }

    fn references(f: &WorkflowEntityFields) -> Vec<Reference> {
        let mut references = vec![organization(f.organization_id)];
        references.extend(f.environment_id.map(environment));
        references.push(Reference::new(
            "workflowEntityTypeId",
            WorkflowEntityType::INFO.type_name,
            f.workflow_entity_type_id,
        ));
        references
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowEntityType;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowEntityTypeFields {
    /// `null` for the platform's own types, which every organization uses.
    #[serde(default)]
    pub organization_id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The built-in types (contract §8), present from the start (created by migration `0006`,
/// platform-wide).
pub const BUILT_IN_ENTITY_TYPES: [(Uuid, &str); 4] = [
    (
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0101),
        "Event",
    ),
    (
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0102),
        "Prompt",
    ),
    (
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0103),
        "Action",
    ),
    (
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0104),
        "Result",
    ),
];

impl Kind for WorkflowEntityType {
    const INFO: KindInfo = KindInfo {
        type_name: "workflow_entity_type",
        fields_schema: fields_schema::<WorkflowEntityTypeFields>,
        label: "Workflow entity type",
        path: "workflow-entity-types",
        resource: Resource::Entities,
        scope: Scope::Either,
        write_only: &[],
        immutable: &["organizationId"],
        name_field: "name",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = WorkflowEntityTypeFields;

    fn check(f: &mut WorkflowEntityTypeFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)
    }

    fn references(f: &WorkflowEntityTypeFields) -> Vec<Reference> {
        f.organization_id.map(organization).into_iter().collect()
    }

    fn name_scope(f: &WorkflowEntityTypeFields) -> Option<NameScope> {
        Some(match f.organization_id {
            Some(id) => NameScope::new(
                format!("workflow_entity_type:{id}"),
                " in this organization",
            ),
            None => NameScope::new(
                "workflow_entity_type:platform".into(),
                " among the platform's types",
            ),
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Prompt templates and prompts

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptTemplate;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromptTemplateFields {
    pub organization_id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub prompt_text: String,
    #[serde(default)]
    pub model_id: Option<Uuid>,
    /// Declared variables and their types: `{"userName": "string"}`.
    #[serde(default)]
    pub variables: Map<String, Value>,
    #[serde(default)]
    pub variable_sets: Vec<VariableSet>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableSet {
    pub name: String,
    #[serde(default)]
    pub values: Map<String, Value>,
}

pub const VARIABLE_TYPES: [&str; 5] = ["string", "number", "boolean", "object", "array"];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 100
}

impl Kind for PromptTemplate {
    const INFO: KindInfo = KindInfo {
        type_name: "prompt_template",
        fields_schema: fields_schema::<PromptTemplateFields>,
        label: "Prompt template",
        path: "prompt-templates",
        resource: Resource::Entities,
        scope: Scope::Organization,
        write_only: &[],
        immutable: &["organizationId", "environmentId"],
        name_field: "name",
        versioned: true,
        read_only_nulls: &["rawSentimentAnalysis", "resultSentimentAnalysis"],
        list_requires_organization: true,
    };
    type Fields = PromptTemplateFields;

    fn check(f: &mut PromptTemplateFields) -> Result<(), DomainError> {
        name("name", &mut f.name)?;
        description(&f.description)?;
        required_text("promptText", &f.prompt_text, TEXT_MAX_CHARS)?;
        for (variable, kind) in &f.variables {
            if !is_identifier(variable) {
                return Err(DomainError::invalid(
                    format!("variables.{variable}"),
                    "variable names are letters, digits and _, not starting with a digit, at most 100",
                ));
            }
            if !kind.as_str().is_some_and(|k| VARIABLE_TYPES.contains(&k)) {
                return Err(DomainError::invalid(
                    format!("variables.{variable}"),
                    format!(
                        "{kind} is not a type; use one of {}",
                        VARIABLE_TYPES.join(", ")
                    ),
                ));
            }
        }
        for (i, set) in f.variable_sets.iter_mut().enumerate() {
            let path = format!("variableSets[{i}]");
            name("name", &mut set.name).map_err(|e| prefixed(&path, e))?;
            if let Some(unknown) = set.values.keys().find(|v| !f.variables.contains_key(*v)) {
                return Err(DomainError::invalid(
                    format!("{path}.values.{unknown}"),
                    format!("{unknown:?} is not a declared variable"),
                ));
            }
        }
        Ok(())
    }

    fn references(f: &PromptTemplateFields) -> Vec<Reference> {
        let mut references = vec![
            organization(f.organization_id),
            environment(f.environment_id),
        ];
        references.extend(
            f.model_id
                .map(|id| Reference::new("modelId", Model::INFO.type_name, id)),
        );
        references
    }

    fn name_scope(f: &PromptTemplateFields) -> Option<NameScope> {
        Some(NameScope::new(
            format!("prompt_template:{}:{}", f.organization_id, f.environment_id),
            " in this organization and environment",
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromptFields {
    pub organization_id: Uuid,
    #[serde(default)]
    pub model_id: Option<Uuid>,
    pub title: String,
    pub content: String,
    #[serde(default)]
    pub output_format: OutputFormat,
    /// With `json`, a JSON document whose string values may hold `{{placeholders}}`.
    #[serde(default)]
    pub output_template: Option<String>,
}

impl Kind for Prompt {
    const INFO: KindInfo = KindInfo {
        type_name: "prompt",
        fields_schema: fields_schema::<PromptFields>,
        label: "Prompt",
        path: "prompts",
        resource: Resource::Entities,
        scope: Scope::Organization,
        write_only: &[],
        immutable: &["organizationId"],
        name_field: "title",
        versioned: false,
        read_only_nulls: &[],
        list_requires_organization: false,
    };
    type Fields = PromptFields;

    fn check(f: &mut PromptFields) -> Result<(), DomainError> {
        name("title", &mut f.title)?;
        required_text("content", &f.content, TEXT_MAX_CHARS)?;
        if let Some(template) = &f.output_template {
            bounded("outputTemplate", template, TEXT_MAX_CHARS)?;
            if f.output_format == OutputFormat::Json {
                serde_json::from_str::<Value>(template).map_err(|e| {
                    DomainError::invalid(
                        "outputTemplate",
                        format!("must be valid JSON when outputFormat is json ({e})"),
                    )
                })?;
            }
        }
        Ok(())
    }

    fn references(f: &PromptFields) -> Vec<Reference> {
        let mut references = vec![organization(f.organization_id)];
        references.extend(
            f.model_id
                .map(|id| Reference::new("modelId", Model::INFO.type_name, id)),
        );
        references
    }
}

/// Every kind's description, for code that handles them all (the projector, query-api).
pub const ALL: [KindInfo; 8] = [
    Variable::INFO,
    Model::INFO,
    SystemModel::INFO,
    Workflow::INFO,
    WorkflowEntity::INFO,
    WorkflowEntityType::INFO,
    PromptTemplate::INFO,
    Prompt::INFO,
];

/// The kind whose streams are named `<type_name>-<id>`.
pub fn by_type_name(type_name: &str) -> Option<&'static KindInfo> {
    ALL.iter().find(|info| info.type_name == type_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse_fields;
    use serde_json::json;

    fn parse<K: Kind>(value: Value) -> Result<super::super::Fields, DomainError> {
        parse_fields::<K>(value.as_object().unwrap().clone()).map(|(_, fields)| fields)
    }

    fn invalid_field<K: Kind>(value: Value) -> String {
        match parse::<K>(value) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_models_provider_is_inferred_from_its_url_unless_given() {
        let org = Uuid::now_v7();
        let provider = |body: Value| parse::<Model>(body).unwrap()["provider"].clone();
        for (url, expected) in [
            ("https://api.anthropic.com/v1/messages", "anthropic"),
            ("https://api.openai.com/v1/chat/completions", "openai"),
            ("http://localhost:8000/v1/chat/completions", "openai"),
            ("https://anthropic.com.example/v1", "openai"),
        ] {
            assert_eq!(
                provider(json!({"organizationId": org, "name": "m", "modelUrl": url})),
                expected,
                "{url}"
            );
        }
        assert_eq!(
            provider(json!({"organizationId": org, "name": "m",
                "modelUrl": "https://gateway.example/v1/messages", "provider": "anthropic"})),
            "anthropic"
        );
        assert_eq!(
            invalid_field::<SystemModel>(
                json!({"name": "m", "modelUrl": "https://m.example", "provider": "cohere"})
            ),
            "provider"
        );
    }

    #[test]
    fn prices_are_bounded_and_need_a_currency() {
        let model = |extra: Value| {
            let mut body = json!({"name": "m", "modelUrl": "https://m.example"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let priced = parse::<SystemModel>(model(json!({
            "inputPricePerMillionTokens": 2.5, "outputPricePerMillionTokens": 10, "currency": "USD"
        })))
        .unwrap();
        assert_eq!(priced["inputPricePerMillionTokens"], 2.5);
        assert_eq!(priced["outputPricePerMillionTokens"], 10.0);
        assert_eq!(priced["currency"], "USD");
        let unpriced = parse::<SystemModel>(model(json!({}))).unwrap();
        assert_eq!(unpriced["inputPricePerMillionTokens"], Value::Null);
        for (bad, field) in [
            (
                json!({"inputPricePerMillionTokens": -1, "currency": "USD"}),
                "inputPricePerMillionTokens",
            ),
            (
                json!({"outputPricePerMillionTokens": 1e7, "currency": "USD"}),
                "outputPricePerMillionTokens",
            ),
            (json!({"inputPricePerMillionTokens": 1}), "currency"),
            (json!({"currency": "usd"}), "currency"),
            (json!({"currency": "EURO"}), "currency"),
            (
                json!({"inputPricePerMillionTokens": "1", "currency": "USD"}),
                "inputPricePerMillionTokens",
            ),
        ] {
            assert_eq!(
                invalid_field::<SystemModel>(model(bad.clone())),
                field,
                "{bad}"
            );
        }
    }

    #[test]
    fn model_urls_must_be_absolute_http() {
        let org = Uuid::now_v7();
        for bad in ["/v1/chat", "ftp://host/x", "not a url", "https://"] {
            assert_eq!(
                invalid_field::<Model>(
                    json!({"organizationId": org, "name": "m", "modelUrl": bad})
                ),
                "modelUrl",
                "{bad}"
            );
        }
        assert!(parse::<Model>(
            json!({"organizationId": org, "name": "m", "modelUrl": "http://localhost:8080/v1"})
        )
        .is_ok());
    }

    fn chain(depth: usize) -> Value {
        let mut node = json!({"name": "leaf", "entityType": "event"});
        for _ in 1..depth {
            node = json!({"name": "n", "entityType": "event", "children": [node]});
        }
        node
    }

    #[test]
    fn workflow_trees_are_bounded_in_depth_and_size_and_ids_do_not_repeat() {
        let org = Uuid::now_v7();
        let workflow = |root: Value| json!({"organizationId": org, "name": "w", "workflowData": {"root": root}});
        assert!(parse::<Workflow>(workflow(chain(WORKFLOW_MAX_DEPTH))).is_ok());
        // The deepest tree fits the body limit with the examples' presentation on every node.
        let mut drawn = json!({"name": "leaf", "entityType": "event", "children": [],
            "presentation": {"type": "circle", "position": {"x": 1, "y": 2}}});
        for _ in 1..WORKFLOW_MAX_DEPTH {
            drawn = json!({"name": "n", "entityType": "event", "children": [drawn],
                "presentation": {"type": "circle", "position": {"x": 1, "y": 2}}});
        }
        let body = serde_json::to_vec(&workflow(drawn)).unwrap();
        assert!(crate::json::depth(&body) <= crate::json::MAX_DEPTH);
        assert!(crate::json::check(&body).is_ok());
        assert!(
            invalid_field::<Workflow>(workflow(chain(WORKFLOW_MAX_DEPTH + 1)))
                .starts_with("workflowData.root.children[0]")
        );
        let wide: Vec<Value> = (0..WORKFLOW_MAX_NODES)
            .map(|_| json!({"name": "n", "entityType": "action"}))
            .collect();
        assert_eq!(
            invalid_field::<Workflow>(workflow(
                json!({"name": "r", "entityType": "event", "children": wide})
            )),
            "workflowData"
        );
        let repeated = json!({"id": "a", "name": "r", "entityType": "event",
            "children": [{"id": "b", "name": "x", "entityType": "event", "children": [{"id": "a", "name": "y", "entityType": "event"}]}]});
        assert_eq!(
            invalid_field::<Workflow>(workflow(repeated)),
            "workflowData.root.children[0].children[0].id"
        );
    }

    #[test]
    fn the_seed_entity_condition_parses_and_unknown_comparisons_do_not() {
        let org = Uuid::now_v7();
        let entity = |condition: Value| {
            json!({"organizationId": org, "name": "Check User Type", "workflowEntityTypeId": Uuid::now_v7(),
                   "condition": condition, "script": "// Optional post-condition script", "tfCondition": "True/False",
                   "arguments": [{"argumentName": "userId", "argumentValue": "{{message.user.id}}", "argumentDescription": "id"}]})
        };
        let seed = json!({"type": "group", "operator": "AND", "conditions": [
            {"type": "rule", "field": "message.type", "comparison": "equals", "value": "user.signup"},
            {"type": "group", "operator": "OR", "conditions": []}]});
        assert!(parse::<WorkflowEntity>(entity(seed)).is_ok());
        let bad = json!({"type": "group", "operator": "AND", "conditions": [
            {"type": "rule", "field": "x", "comparison": "resembles", "value": 1}]});
        assert!(invalid_field::<WorkflowEntity>(entity(bad)).starts_with("condition"));
        let xor = json!({"type": "group", "operator": "XOR", "conditions": []});
        assert!(invalid_field::<WorkflowEntity>(entity(xor)).starts_with("condition"));
    }

    #[test]
    fn variable_sets_may_only_use_declared_variables() {
        let template = |sets: Value| {
            json!({"organizationId": Uuid::now_v7(), "environmentId": Uuid::now_v7(), "name": "t",
                   "promptText": "Hi {{userName}}", "variables": {"userName": "string"}, "variableSets": sets})
        };
        assert!(parse::<PromptTemplate>(template(
            json!([{"name": "ok", "values": {"userName": "Sarah"}}])
        ))
        .is_ok());
        assert_eq!(
            invalid_field::<PromptTemplate>(template(
                json!([{"name": "bad", "values": {"productName": "Pulse"}}])
            )),
            "variableSets[0].values.productName"
        );
    }

    #[test]
    fn json_prompts_need_a_template_that_parses() {
        let prompt = |format: &str, template: &str| {
            json!({"organizationId": Uuid::now_v7(), "title": "t", "content": "c",
                   "outputFormat": format, "outputTemplate": template})
        };
        let seed = "{ \"response\": \"{{response}}\", \"sentiment\": \"{{sentiment}}\" }";
        assert!(parse::<Prompt>(prompt("json", seed)).is_ok());
        assert_eq!(
            invalid_field::<Prompt>(prompt("json", "{ nope")),
            "outputTemplate"
        );
        assert!(parse::<Prompt>(prompt("text", "{ fine as text")).is_ok());
        assert_eq!(invalid_field::<Prompt>(prompt("yaml", "")), "outputFormat");
    }
}
