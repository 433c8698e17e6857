//! Calls into the REST API in-process: every tool, resource and prompt is answered by sending a
//! request through command-api's router (writes) or query-api's (reads), as the gateway routes them,
//! so the same handlers parse, authenticate, authorise and run it through the same command executor
//! or read models. The request carries the MCP request's credentials and origin headers, and the
//! [`Channel::Mcp`] extension that has its events record where they came from.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use domain::Channel;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The headers of the MCP request that the REST request carries: who is calling, and from where.
const FORWARDED: [&str; 6] = [
    "authorization",
    "user-agent",
    "x-request-id",
    "x-correlation-id",
    "x-real-ip",
    "x-forwarded-for",
];

/// The largest JSON answer read back (a page of 100 rows is far below it).
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct Rest {
    command: Router,
    query: Router,
}

/// A REST answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The JSON body (`Null` when empty, a string when it is not JSON).
    pub body: Value,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The REST error with its status: `{status, error, details}`.
    pub fn error(&self) -> Value {
        let mut error = match &self.body {
            Value::Object(fields) => Value::Object(fields.clone()),
            other => json!({"error": self.status.canonical_reason(), "details": other}),
        };
        error["status"] = json!(self.status.as_u16());
        error
    }
}

impl Rest {
    pub fn new(command: Router, query: Router) -> Self {
        Rest { command, query }
    }

    /// Sends `method path_and_query` with `body` on behalf of the MCP request `from`; `accept` is the
    /// media type asked for.
    pub async fn send(
        &self,
        from: &Parts,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        accept: &'static str,
    ) -> Response<Body> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(header::ACCEPT, accept);
        for name in FORWARDED {
            if let Some(value) = from.headers.get(name) {
                request = request.header(name, value);
            }
        }
        let body = match body {
            Some(body) => {
                request = request.header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).expect("a request from checked parts");
        request.extensions_mut().insert(Channel::Mcp);
        if let Some(peer) = from.extensions.get::<ConnectInfo<SocketAddr>>() {
            request.extensions_mut().insert(*peer);
        }
        // The gateway's rule: reads to query-api, every other method to command-api.
        let router = if method == Method::GET {
            &self.query
        } else {
            &self.command
        };
        match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// [`Rest::send`] asking for JSON, the answer read whole.
    pub async fn call(
        &self,
        from: &Parts,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Answer {
        let response = self
            .send(from, method, path_and_query, body, "application/json")
            .await;
        read(response).await
    }
}

/// A response read whole as JSON.
pub async fn read(response: Response<Body>) -> Answer {
    let status = response.status();
    let body = match axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES).await {
        Ok(bytes) => parse(&bytes),
        Err(error) => {
            return Answer {
                status: StatusCode::BAD_GATEWAY,
                body: json!({"error": "The answer could not be read", "details": error.to_string()}),
            }
        }
    };
    Answer { status, body }
}

fn parse(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
