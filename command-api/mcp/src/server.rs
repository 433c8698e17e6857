//! The MCP server: tools that call the REST operations ([`crate::tools`]), prompt templates and their
//! versions as resources, and prompts as MCP prompts whose arguments are their `{{placeholders}}`.
//! Everything is answered through the REST API in-process ([`crate::rest`]), with the credentials
//! of the HTTP request that carried the MCP message, so it is authorised exactly as REST is.
//!
//! A REST error becomes a tool result with `isError` and the REST error as its text; for resources
//! and prompts, which have no such result, it becomes a JSON-RPC error whose `data` is the REST
//! error.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use command_api::sse::{SseBuffer, SseEvent};
use domain::execution::render;
use futures::StreamExt;
use http_layer::ApiError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, Prompt, PromptArgument, PromptMessage,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::rest::{self, Answer, Rest};
use crate::tools::{Tools, EXECUTE};

/// Resource URIs: `admin-platform://prompt-templates/{id}` and
/// `admin-platform://prompt-templates/{id}/versions/{version}`.
const TEMPLATE_URI: &str = "admin-platform://prompt-templates/";

/// Rows per REST page when listing resources and prompts.
const PAGE: usize = 100;

#[derive(Clone)]
pub struct McpServer {
    inner: Arc<Inner>,
}

struct Inner {
    rest: Rest,
    tools: Tools,
}

impl McpServer {
    pub fn new(rest: Rest, tools: Tools) -> Self {
        McpServer {
            inner: Arc::new(Inner { rest, tools }),
        }
    }

    async fn get(&self, from: &Parts, path_and_query: &str) -> Answer {
        self.inner
            .rest
            .call(from, Method::GET, path_and_query, None)
            .await
    }
}

/// The HTTP request that carried the MCP message, which the transport puts in the extensions.
fn http_request(context: &RequestContext<RoleServer>) -> Result<&Parts, McpError> {
    context
        .extensions
        .get::<Parts>()
        .ok_or_else(|| McpError::internal_error("the HTTP request is not available", None))
}

/// A REST error for requests that have no error result (resources, prompts).
fn rpc_error(answer: &Answer) -> McpError {
    let code = match answer.status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ErrorCode::RESOURCE_NOT_FOUND,
        StatusCode::BAD_REQUEST => ErrorCode::INVALID_PARAMS,
        status if status.is_server_error() => ErrorCode::INTERNAL_ERROR,
        _ => ErrorCode::INVALID_REQUEST,
    };
    let message = answer.body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| answer.status.to_string());
    McpError::new(code, message, Some(answer.error()))
}

fn tool_result(answer: Answer) -> CallToolResult {
    if answer.is_success() {
        CallToolResult::structured(answer.body)
    } else {
        CallToolResult::error(vec![ContentBlock::text(answer.error().to_string())])
    }
}

/// A refusal made here (bad arguments, a broken stream), answered as the REST API answers it.
async fn refused(error: ApiError) -> CallToolResult {
    tool_result(rest::read(error.into_response()).await)
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("admin-platform", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The admin platform's REST API as tools: organizations, environments, variables (never \
             their values), models (never their credentials), workflows and their entities, prompt \
             templates and their versions, prompts, the processed queue and the audit trail; writes \
             of prompt templates and prompts; running a template against its model and analysing \
             its sentiment; and, for System users, feedback triage and notifications. Lists take \
             `page` and `limit` and answer with `pagination`. Errors are the REST API's, as \
             `{status, error, details}`. Prompt templates are also resources \
             (admin-platform://prompt-templates/{id}), and prompts are prompts.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    /// Every tool the caller may call: the operator's only to System users (as the caller's session
    /// says).
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let session = self.get(http_request(&context)?, "/api/auth/session").await;
        if !session.is_success() {
            return Err(rpc_error(&session));
        }
        let system_user = session.body["systemRole"] == true;
        Ok(ListToolsResult::with_all_items(
            self.inner.tools.list(system_user),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.inner.tools.get(name).map(|tool| tool.tool.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(tool) = self.inner.tools.get(&request.name) else {
            return Err(McpError::invalid_params(
                format!("no tool named {:?}", request.name),
                None,
            ));
        };
        let from = http_request(&context)?;
        let arguments = request.arguments.unwrap_or_default();
        let call = match tool.request(&arguments) {
            Ok(call) => call,
            Err(error) => return Ok(refused(error).await.into()),
        };
        let progress = request
            .meta
            .as_ref()
            .and_then(|meta| meta.get_progress_token())
            .or_else(|| context.meta.get_progress_token());
        let mut body = call.body;
        if request.name == EXECUTE {
            // An execution streams exactly when the call asks for progress.
            let fields = body.get_or_insert_with(Map::new);
            fields.insert("stream".into(), json!(progress.is_some()));
        }
        if let (EXECUTE, Some(token)) = (request.name.as_ref(), progress) {
            let response = self
                .inner
                .rest
                .send(
                    from,
                    call.method,
                    &call.path_and_query,
                    body.map(Value::Object).as_ref(),
                    "text/event-stream",
                )
                .await;
            return Ok(stream_execution(response, token, &context).await.into());
        }
        let body = body.map(Value::Object);
        let answer = self
            .inner
            .rest
            .call(from, call.method, &call.path_and_query, body.as_ref())
            .await;
        Ok(tool_result(answer).into())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{TEMPLATE_URI}{{id}}"), "prompt-template")
                .with_title("Prompt template")
                .with_description("A prompt template as it is now: its text, variables and model.")
                .with_mime_type("application/json"),
            ResourceTemplate::new(
                format!("{TEMPLATE_URI}{{id}}/versions/{{version}}"),
                "prompt-template-version",
            )
            .with_title("Prompt template version")
            .with_description("A prompt template as it was after its Nth change.")
            .with_mime_type("application/json"),
        ]))
    }

    /// The prompt templates of the caller's organizations, one REST page of one organization per
    /// page; the cursor says which (`<organization page>.<organization>.<template page>`).
    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let from = http_request(&context)?;
        let cursor = match request.and_then(|r| r.cursor) {
            Some(cursor) => TemplateCursor::parse(&cursor)
                .ok_or_else(|| McpError::invalid_params("not a cursor this server gave", None))?,
            None => TemplateCursor::default(),
        };
        let organizations = self
            .get(
                from,
                &format!(
                    "/api/organizations?page={}&limit={PAGE}",
                    cursor.organization_page
                ),
            )
            .await;
        if !organizations.is_success() {
            return Err(rpc_error(&organizations));
        }
        let ids: Vec<&str> = rows(&organizations)
            .iter()
            .filter_map(|org| org["id"].as_str())
            .collect();
        let Some(organization) = ids.get(cursor.organization) else {
            return Ok(ListResourcesResult::default());
        };
        let templates = self
            .get(
                from,
                &format!(
                    "/api/prompt-templates?organizationId={organization}&page={}&limit={PAGE}",
                    cursor.template_page
                ),
            )
            .await;
        if !templates.is_success() {
            return Err(rpc_error(&templates));
        }
        let resources = rows(&templates)
            .iter()
            .map(|template| {
                Resource::new(
                    format!(
                        "{TEMPLATE_URI}{}",
                        template["id"].as_str().unwrap_or_default()
                    ),
                    template["name"].as_str().unwrap_or_default(),
                )
                .with_description(format!(
                    "Prompt template (version {}) of {}",
                    template["version"],
                    template["organization"]["name"]
                        .as_str()
                        .unwrap_or_default()
                ))
                .with_mime_type("application/json")
            })
            .collect();
        let next = if more_pages(&templates) {
            Some(TemplateCursor {
                template_page: cursor.template_page + 1,
                ..cursor
            })
        } else if cursor.organization + 1 < ids.len() {
            Some(TemplateCursor {
                organization: cursor.organization + 1,
                template_page: 1,
                ..cursor
            })
        } else if more_pages(&organizations) {
            Some(TemplateCursor {
                organization_page: cursor.organization_page + 1,
                organization: 0,
                template_page: 1,
            })
        } else {
            None
        };
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = next.map(|cursor| cursor.to_string());
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let from = http_request(&context)?;
        let path = request
            .uri
            .strip_prefix(TEMPLATE_URI)
            .filter(|rest| {
                let parts: Vec<&str> = rest.split('/').collect();
                matches!(parts.as_slice(), [id] | [id, "versions", _] if !id.is_empty())
            })
            .ok_or_else(|| {
                McpError::resource_not_found(
                    format!(
                        "no resource {}: resources are {TEMPLATE_URI}{{id}}[/versions/{{version}}]",
                        request.uri
                    ),
                    None,
                )
            })?;
        let answer = self
            .get(from, &format!("/api/prompt-templates/{path}"))
            .await;
        if !answer.is_success() {
            return Err(rpc_error(&answer));
        }
        let contents = ResourceContents::text(answer.body.to_string(), request.uri)
            .with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    /// The prompts of the caller's organizations, one REST page per page (the cursor is its number).
    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let from = http_request(&context)?;
        let page = match request.and_then(|r| r.cursor) {
            Some(cursor) => cursor
                .parse::<u64>()
                .ok()
                .filter(|page| *page > 1)
                .ok_or_else(|| McpError::invalid_params("not a cursor this server gave", None))?,
            None => 1,
        };
        let answer = self
            .get(from, &format!("/api/prompts?page={page}&limit={PAGE}"))
            .await;
        if !answer.is_success() {
            return Err(rpc_error(&answer));
        }
        let prompts = rows(&answer).iter().map(mcp_prompt).collect();
        let mut result = ListPromptsResult::with_all_items(prompts);
        result.next_cursor = more_pages(&answer).then(|| (page + 1).to_string());
        Ok(result)
    }

    /// A prompt's text with its placeholders filled from the arguments, as one user message.
    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let from = http_request(&context)?;
        if uuid::Uuid::parse_str(&request.name).is_err() {
            return Err(McpError::invalid_params(
                format!(
                    "no prompt named {:?}: prompts are named by their id",
                    request.name
                ),
                None,
            ));
        }
        let answer = self
            .get(from, &format!("/api/prompts/{}", request.name))
            .await;
        if !answer.is_success() {
            return Err(rpc_error(&answer));
        }
        let arguments: Map<String, Value> = request.arguments.unwrap_or_default();
        let content = answer.body["content"].as_str().unwrap_or_default();
        let text = render(content, &arguments).map_err(|missing| {
            McpError::invalid_params(format!("arguments missing: {}", missing.join(", ")), None)
        })?;
        let description = answer.body["title"].as_str().unwrap_or_default();
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description(description)
                .into(),
        )
    }
}

/// A prompt as MCP lists it: named by its id, its placeholders as required arguments.
fn mcp_prompt(prompt: &Value) -> Prompt {
    let content = prompt["content"].as_str().unwrap_or_default();
    let arguments = placeholders(content)
        .into_iter()
        .map(|name| PromptArgument::new(name).with_required(true))
        .collect::<Vec<_>>();
    let mut listed = Prompt::new(
        prompt["id"].as_str().unwrap_or_default(),
        Some(format!(
            "{} (output: {})",
            prompt["title"].as_str().unwrap_or_default(),
            prompt["outputFormat"].as_str().unwrap_or("text")
        )),
        (!arguments.is_empty()).then_some(arguments),
    );
    listed.title = prompt["title"].as_str().map(str::to_owned);
    listed
}

/// The `{{names}}` of `text`, sorted: what rendering it without values finds missing.
fn placeholders(text: &str) -> Vec<String> {
    render(text, &Map::new()).err().unwrap_or_default()
}

/// A REST page's rows.
fn rows(page: &Answer) -> &[Value] {
    page.body["data"].as_array().map_or(&[], Vec::as_slice)
}

/// Whether a REST page has pages after it.
fn more_pages(page: &Answer) -> bool {
    let pagination = &page.body["pagination"];
    match (
        pagination["page"].as_u64(),
        pagination["totalPages"].as_u64(),
    ) {
        (Some(page), Some(pages)) => page < pages,
        _ => false,
    }
}

/// Where a listing of templates goes on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TemplateCursor {
    organization_page: u64,
    organization: usize,
    template_page: u64,
}

impl Default for TemplateCursor {
    fn default() -> Self {
        TemplateCursor {
            organization_page: 1,
            organization: 0,
            template_page: 1,
        }
    }
}

impl TemplateCursor {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let cursor = TemplateCursor {
            organization_page: parts.next()?.parse().ok().filter(|p| *p >= 1)?,
            organization: parts.next()?.parse().ok().filter(|o| *o < PAGE)?,
            template_page: parts.next()?.parse().ok().filter(|p| *p >= 1)?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

impl std::fmt::Display for TemplateCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.organization_page, self.organization, self.template_page
        )
    }
}

/// Runs a streamed execution: each piece of output the REST stream sends as a `delta` is sent on as
/// a progress notification (its text as the message), and the stream's `done` or `error` event is
/// the result. An error before the stream starts comes back as JSON, and is the result as it is.
async fn stream_execution(
    response: axum::http::Response<axum::body::Body>,
    token: ProgressToken,
    context: &RequestContext<RoleServer>,
) -> CallToolResult {
    let streams = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streams {
        return tool_result(rest::read(response).await);
    }
    let mut body = response.into_body().into_data_stream();
    let mut events = SseBuffer::default();
    let mut pieces = 0u32;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return refused(stream_broke(error.to_string())).await,
        };
        for SseEvent { name, data } in events.push(&chunk) {
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            match name.as_deref() {
                Some("delta") => {
                    pieces += 1;
                    let mut progress = ProgressNotificationParam::new(token.clone(), pieces.into());
                    progress.message = data["text"].as_str().map(str::to_owned);
                    // A client that no longer listens still gets the result.
                    let _ = context.peer.notify_progress(progress).await;
                }
                Some("done") => return CallToolResult::structured(data),
                Some("error") => {
                    return CallToolResult::error(vec![ContentBlock::text(data.to_string())])
                }
                _ => {}
            }
        }
    }
    refused(stream_broke("the stream ended without a result".into())).await
}

/// A streamed execution whose stream broke off before its result.
fn stream_broke(details: String) -> ApiError {
    ApiError::BadGateway {
        error: "The execution's stream broke off".into(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nonsense_is_refused() {
        let cursor = TemplateCursor {
            organization_page: 2,
            organization: 7,
            template_page: 3,
        };
        assert_eq!(TemplateCursor::parse(&cursor.to_string()), Some(cursor));
        for bad in ["", "1.2", "0.0.1", "1.100.1", "1.0.0", "a.b.c", "1.0.1.1"] {
            assert_eq!(TemplateCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_prompts_placeholders_are_its_arguments() {
        assert_eq!(
            placeholders("Hi {{ name }}, about {{order}} and {{name}}; {{7*7}}"),
            ["name", "order"]
        );
    }
}
