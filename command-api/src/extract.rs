//! Extractors for write requests: the caller and request context ([`Write`]) and a JSON body parsed
//! into a request type ([`Body`]), with the API's answers for bad input (400, 413, 415).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use events::{Actor, EventMetadata, Role};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// Everything about a write request except its body.
pub struct Write {
    pub actor: Actor,
    pub request_id: String,
    pub correlation_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The stream version the client requires (`If-Match`).
    pub if_match: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Identifies the request for idempotency: method, path and (once [`Write::with_body`]) body.
    pub fingerprint: String,
}

impl Write {
    pub fn with_body(mut self, body_digest: &str) -> Self {
        self.fingerprint = hex(Sha256::digest(format!(
            "{}\n{body_digest}",
            self.fingerprint
        )));
        self
    }

    pub fn metadata(&self, role: Role, organization_id: Option<Uuid>) -> EventMetadata {
        EventMetadata {
            actor: self.actor.as_ref_with(role),
            organization_id,
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: None,
            client_ip: self.client_ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    /// Refuses with `412` when the client pinned a version the resource is no longer at.
    pub fn check_if_match(&self, version: i64) -> Result<(), ApiError> {
        match self.if_match {
            Some(expected) if expected != version => Err(ApiError::PreconditionFailed {
                details: format!("If-Match: the resource is at version {version}, not {expected}"),
            }),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Write {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let actor = state
            .auth
            .authenticate(header(headers, AUTHORIZATION.as_str()))
            .await?;
        let request_id = header(headers, "x-request-id")
            .map(str::to_owned)
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let if_match = header(headers, "if-match")
            .map(parse_if_match)
            .transpose()?;
        let idempotency_key = header(headers, "idempotency-key")
            .map(|key| {
                if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX {
                    Err(ApiError::invalid(
                        "Idempotency-Key",
                        format!("must be 1 to {IDEMPOTENCY_KEY_MAX} characters"),
                    ))
                } else {
                    Ok(key.to_owned())
                }
            })
            .transpose()?;
        let client_ip = header(headers, "x-real-ip")
            .or_else(|| {
                header(headers, "x-forwarded-for")
                    .and_then(|v| v.split(',').next())
                    .map(str::trim)
            })
            .map(str::to_owned)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
            });
        Ok(Write {
            actor,
            correlation_id: header(headers, "x-correlation-id")
                .map(str::to_owned)
                .unwrap_or_else(|| request_id.clone()),
            request_id,
            client_ip,
            user_agent: header(headers, USER_AGENT.as_str()).map(str::to_owned),
            if_match,
            idempotency_key,
            fingerprint: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Accepts `"3"`, `W/"3"` and `3`.
fn parse_if_match(value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map_err(|_| {
            ApiError::invalid(
                "If-Match",
                "must be an ETag returned by this API, such as \"3\"",
            )
        })
}

/// A JSON request body, checked for media type and size. It is parsed with [`Body::parse`] once the
/// caller is known to be allowed to make the request, so that a forbidden caller gets `403`, not a
/// verdict on its input.
pub struct Body {
    bytes: axum::body::Bytes,
    /// A digest of the bytes, for idempotency.
    pub digest: String,
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let is_json = header(request.headers(), CONTENT_TYPE.as_str())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let declared = header(request.headers(), CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|length| length > BODY_LIMIT) {
            return Err(ApiError::PayloadTooLarge);
        }
        // A body without a Content-Length (chunked) is cut off at the limit as it streams in.
        let bytes = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        Ok(Body {
            digest: hex(Sha256::digest(&bytes)),
            bytes,
        })
    }
}

impl Body {
    /// Parses the body into a request type; `400` names the offending field.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let invalid = |details: String| ApiError::BadRequest {
            error: "Invalid request body".into(),
            details,
        };
        // Serde would also accept an array for a struct (field by position); the API takes objects only.
        if self.bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(invalid("the body must be a JSON object".into()));
        }
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&self.bytes))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                invalid(if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                })
            })
    }
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a path id, answering `400` for anything that is not a UUID.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a valid UUID")))
}
