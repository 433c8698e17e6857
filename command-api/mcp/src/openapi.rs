//! The REST operations the tools mirror, read from the API's own description
//! (`schemas/openapi.yaml`, built into the binary): each operation's method and path, its path and
//! query parameters, its request body and its JSON answer, with every schema turned into the plain
//! JSON Schema MCP carries (references as `$defs`, OpenAPI 3.0's `nullable` spelled as a `null` type).

use anyhow::{anyhow, bail, Context};
use axum::http::Method;
use serde_json::{json, Map, Value};

/// The API description, parsed once.
pub struct Document {
    root: Value,
}

/// One REST operation, as a tool needs it.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    /// The path as the description writes it, `{name}` for each path parameter.
    pub path: String,
    pub summary: String,
    pub description: String,
    pub path_parameters: Vec<Parameter>,
    pub query_parameters: Vec<Parameter>,
    /// The JSON body's schema (an object), when the operation takes one.
    pub body: Option<Value>,
    /// The component schemas the parameters and the body refer to (`#/$defs/<name>`).
    pub input_defs: Map<String, Value>,
    /// The schema of the JSON answer on success, with its `$defs`.
    pub answer: Value,
}

#[derive(Debug, Clone)]
pub struct Parameter {
    pub name: String,
    pub required: bool,
    /// The parameter's schema, with its description.
    pub schema: Value,
}

impl Document {
    pub fn load() -> anyhow::Result<Self> {
        let root: Value = serde_yaml::from_str(include_str!("../../../schemas/openapi.yaml"))
            .context("schemas/openapi.yaml")?;
        Ok(Document { root })
    }

    /// The operation whose `operationId` is `id`.
    pub fn operation(&self, id: &str) -> anyhow::Result<Operation> {
        let paths = self.root["paths"]
            .as_object()
            .ok_or_else(|| anyhow!("no paths"))?;
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete"] {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                if operation["operationId"] != id {
                    continue;
                }
                return self
                    .describe(method, path, item, operation)
                    .with_context(|| format!("operation {id}"));
            }
        }
        bail!("no operation {id} in schemas/openapi.yaml")
    }

    fn describe(
        &self,
        method: &str,
        path: &str,
        item: &Value,
        operation: &Value,
    ) -> anyhow::Result<Operation> {
        let mut input = self.converter();
        let mut path_parameters = Vec::new();
        let mut query_parameters = Vec::new();
        let declared = item["parameters"]
            .as_array()
            .into_iter()
            .chain(operation["parameters"].as_array())
            .flatten();
        for parameter in declared {
            let parameter = self.resolve(parameter)?;
            let name = text(&parameter["name"])?;
            let mut schema = input.root(&parameter["schema"])?;
            if let (Some(description), Some(fields)) =
                (parameter["description"].as_str(), schema.as_object_mut())
            {
                fields.insert("description".into(), json!(description));
            }
            let location = parameter["in"].as_str();
            let parameter = Parameter {
                name: name.to_owned(),
                required: parameter["required"] == true,
                schema,
            };
            match location {
                Some("path") => path_parameters.push(parameter),
                Some("query") => query_parameters.push(parameter),
                // Headers (If-Match, Idempotency-Key, consistency) are the transport's business.
                _ => {}
            }
        }
        let body = match operation["requestBody"]["content"]["application/json"]["schema"] {
            Value::Null => None,
            ref schema => Some(input.root(schema)?),
        };
        let input_defs = input.defs()?;
        let responses = &operation["responses"];
        let success = ["200", "201"]
            .iter()
            .find_map(|status| responses.get(*status))
            .ok_or_else(|| anyhow!("no 200 or 201 answer"))?;
        let mut output = self.converter();
        let mut answer =
            output.root(&self.resolve(success)?["content"]["application/json"]["schema"])?;
        // A tool's structured result is an object, and its schema must say so at the root (an
        // answer made of `allOf` parts says it only in its parts).
        match answer.get("type") {
            None => answer["type"] = json!("object"),
            Some(kind) if kind == "object" => {}
            Some(_) => bail!("its answer is not a JSON object, which a tool's result must be"),
        }
        let answer = with_defs(answer, output.defs()?);
        Ok(Operation {
            method: method.to_uppercase().parse()?,
            path: path.to_owned(),
            summary: operation["summary"].as_str().unwrap_or_default().to_owned(),
            description: operation["description"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            path_parameters,
            query_parameters,
            body,
            input_defs,
            answer,
        })
    }

    /// `value`, or what its `$ref` points to.
    fn resolve(&self, value: &Value) -> anyhow::Result<Value> {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => self.lookup(reference).cloned(),
            None => Ok(value.clone()),
        }
    }

    fn lookup(&self, reference: &str) -> anyhow::Result<&Value> {
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| anyhow!("{reference}: only local references are followed"))?;
        self.root
            .pointer(pointer)
            .ok_or_else(|| anyhow!("{reference} does not exist"))
    }

    /// A converter of this document's schemas to JSON Schema.
    fn converter(&self) -> Converter<'_> {
        Converter {
            document: self,
            defs: Map::new(),
            pending: Vec::new(),
        }
    }
}

/// Turns schemas of the document into JSON Schema (2020-12): `nullable: true` as a `null` type (and
/// a `null` in an `enum`), OpenAPI's own keywords (`example`, `discriminator`, `x-…`) left out. A
/// reference to a component schema becomes `#/$defs/<name>` (schemas may be recursive: a workflow's
/// nodes hold nodes), and the components referred to are gathered for the `$defs` of the schema
/// they are used in; only a schema's root is inlined, so that it is an object one can read.
struct Converter<'a> {
    document: &'a Document,
    defs: Map<String, Value>,
    pending: Vec<String>,
}

const COMPONENT: &str = "#/components/schemas/";

impl Converter<'_> {
    /// `schema`, its root inlined when it is a reference.
    fn root(&mut self, schema: &Value) -> anyhow::Result<Value> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let target = self.document.lookup(reference)?;
                self.convert(target)
            }
            None => self.convert(schema),
        }
    }

    /// The component schemas the converted schemas refer to, converted in turn.
    fn defs(mut self) -> anyhow::Result<Map<String, Value>> {
        while let Some(name) = self.pending.pop() {
            if self.defs.contains_key(&name) {
                continue;
            }
            self.defs.insert(name.clone(), Value::Null);
            let target = self.document.lookup(&format!("{COMPONENT}{name}"))?;
            let converted = self.convert(target)?;
            self.defs.insert(name, converted);
        }
        Ok(self.defs)
    }

    fn convert(&mut self, schema: &Value) -> anyhow::Result<Value> {
        let Value::Object(fields) = schema else {
            return Ok(schema.clone());
        };
        if let Some(reference) = fields.get("$ref").and_then(Value::as_str) {
            // OpenAPI 3.0 ignores a reference's siblings.
            let name = reference
                .strip_prefix(COMPONENT)
                .ok_or_else(|| anyhow!("{reference}: schemas refer only to component schemas"))?;
            self.pending.push(name.to_owned());
            return Ok(json!({"$ref": format!("#/$defs/{name}")}));
        }
        let mut out = Map::new();
        for (key, value) in fields {
            let converted = match key.as_str() {
                "example" | "discriminator" | "xml" | "externalDocs" | "nullable" => continue,
                key if key.starts_with("x-") => continue,
                "properties" => {
                    let mut properties = Map::new();
                    for (name, schema) in value.as_object().into_iter().flatten() {
                        properties.insert(name.clone(), self.convert(schema)?);
                    }
                    Value::Object(properties)
                }
                "items" | "not" => self.convert(value)?,
                "additionalProperties" if value.is_object() => self.convert(value)?,
                "allOf" | "anyOf" | "oneOf" => Value::Array(
                    value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|schema| self.convert(schema))
                        .collect::<anyhow::Result<_>>()?,
                ),
                _ => value.clone(),
            };
            out.insert(key.clone(), converted);
        }
        if fields.get("nullable") != Some(&Value::Bool(true)) {
            return Ok(Value::Object(out));
        }
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            if !values.contains(&Value::Null) {
                values.push(Value::Null);
            }
        }
        match out.get("type").cloned() {
            Some(Value::String(kind)) => {
                out.insert("type".into(), json!([kind, "null"]));
                Ok(Value::Object(out))
            }
            _ => Ok(json!({"anyOf": [Value::Object(out), {"type": "null"}]})),
        }
    }
}

/// `schema` with `defs` as its `$defs`, when there are any.
pub fn with_defs(mut schema: Value, defs: Map<String, Value>) -> Value {
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    schema
}

fn text(value: &Value) -> anyhow::Result<&str> {
    value
        .as_str()
        .ok_or_else(|| anyhow!("expected a string, found {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_types_take_null() {
        let document = Document { root: json!({}) };
        let schema = document
            .converter()
            .root(&json!({"type": "string", "nullable": true, "enum": ["mcp"], "example": "x"}))
            .unwrap();
        assert_eq!(
            schema,
            json!({"type": ["string", "null"], "enum": ["mcp", null]})
        );
        let untyped = document
            .converter()
            .root(&json!({"allOf": [{"type": "string"}], "nullable": true}))
            .unwrap();
        assert_eq!(
            untyped,
            json!({"anyOf": [{"allOf": [{"type": "string"}]}, {"type": "null"}]})
        );
    }

    #[test]
    fn every_operation_a_tool_mirrors_reads() {
        let document = Document::load().unwrap();
        let operation = document.operation("listPromptTemplates").unwrap();
        assert_eq!(operation.method, Method::GET);
        assert_eq!(operation.path, "/api/prompt-templates");
        let names: Vec<_> = operation
            .query_parameters
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["page", "limit", "search", "organizationId", "environmentId"]
        );
        assert!(operation.query_parameters[3].required);
        assert_eq!(operation.answer["properties"]["data"]["type"], "array");
        // Recursive schemas (a workflow's nodes hold nodes) refer to themselves through `$defs`.
        let workflows = document.operation("listWorkflows").unwrap();
        let node = &workflows.answer["$defs"]["WorkflowNode"];
        assert_eq!(
            node["properties"]["children"]["items"],
            json!({"$ref": "#/$defs/WorkflowNode"})
        );
        let get = document.operation("getPromptTemplate").unwrap();
        assert_eq!(get.path_parameters[0].name, "id");
        assert!(get.path_parameters[0].required);
    }
}
