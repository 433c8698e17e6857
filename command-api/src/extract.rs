//! The extractor of write requests ([`Write`]): the caller and request context, `If-Match`, the
//! idempotency key with the request's fingerprint (method, path with query and body, so no handler
//! has to remember it), and the body, parsed into a request type on demand, with the API's answers for bad
//! input (400, 413, 415).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use commands::{Caller, Idempotency};
use domain::{Actor, EventMetadata, RequestContext, Role};
use http_layer::context::request_context;
use http_layer::ApiError;
use identity::auth::{Authenticated, Credentials};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// A write request: who sends it, in which context, under which preconditions, and its body.
#[derive(Clone)]
pub struct Write {
    pub actor: Actor,
    pub context: RequestContext,
    /// The stream version the client requires (`If-Match`).
    pub if_match: Option<i64>,
    /// The idempotency key, with the fingerprint of this request (method, path with query, and body).
    pub idempotency: Option<Idempotency>,
    /// Whether the body was declared as JSON (`Content-Type`).
    json: bool,
    body: Bytes,
}

impl Write {
    /// Who runs the command, for the executor.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            actor: &self.actor,
            idempotency: self.idempotency.as_ref(),
        }
    }

    pub fn metadata(&self, role: Role, organization_id: Option<Uuid>) -> EventMetadata {
        self.context
            .metadata(self.actor.as_ref_with(role), organization_id)
    }

    /// This write without its `If-Match`, for the streams a command writes besides the resource the
    /// client pinned.
    pub fn without_if_match(&self) -> Write {
        Write {
            if_match: None,
            ..self.clone()
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

impl FromRequest<AppState> for Write {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let (caller, context) = authenticate(&parts, state).await?;
        if caller.session.is_some() {
            check_same_origin(&parts.headers, state.sign_in.public_origin())?;
        }
        let headers = &parts.headers;
        let if_match = header(headers, "if-match")
            .map(parse_if_match)
            .transpose()?;
        let key = header(headers, "idempotency-key")
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
        let json = header(headers, CONTENT_TYPE.as_str())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        let declared =
            header(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|length| length > BODY_LIMIT) {
            return Err(ApiError::PayloadTooLarge {
                limit_bytes: BODY_LIMIT,
            });
        }
        // A body without a Content-Length (chunked) is cut off at the limit as it streams in.
        let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
            ApiError::PayloadTooLarge {
                limit_bytes: BODY_LIMIT,
            }
        })?;
        let idempotency = key.map(|key| Idempotency {
            key,
            fingerprint: hex(Sha256::digest(format!(
                "{} {}\n{}",
                parts.method,
                parts
                    .uri
                    .path_and_query()
                    .map_or(parts.uri.path(), |p| p.as_str()),
                hex(Sha256::digest(&body))
            ))),
        });
        Ok(Write {
            actor: caller.actor,
            context,
            if_match,
            idempotency,
            json,
            body,
        })
    }
}

/// The request's context, and its caller from the bearer token or the session cookie.
pub async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<(Authenticated, RequestContext), ApiError> {
    let context = request_context(parts);
    let headers = &parts.headers;
    let credentials =
        Credentials::from_headers(header(headers, "authorization"), header(headers, "cookie"));
    let caller = state.auth.authenticate(credentials, &context).await?;
    http_layer::security::note_caller(&parts.extensions, caller.actor.user_id);
    Ok((caller, context))
}

/// The request's context alone, for handlers that authenticate differently (browser sign-in).
pub struct Context(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Context(request_context(parts)))
    }
}

/// The CSRF defence for cookie-authenticated writes (contract §2, `events/docs/contract.md`): browsers
/// send `Origin` with every cross-origin request and with same-origin writes, and a page cannot forge
/// it, so a write whose `Origin` is not the API's own did not come from the API's own pages.
pub fn check_same_origin(headers: &HeaderMap, public_origin: &str) -> Result<(), ApiError> {
    match header(headers, "origin") {
        Some(origin) if origin.eq_ignore_ascii_case(public_origin) => Ok(()),
        sent => Err(ApiError::CrossSite {
            details: format!(
                "a write authenticated by the session cookie must come from {public_origin} (Origin: {})",
                sent.unwrap_or("missing")
            ),
        }),
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

impl Write {
    /// Parses the body into a request type; `400` names the offending field.
    /// It is called once the caller is known to be allowed to make the request, so that a forbidden
    /// caller gets `403`, not a verdict on its input.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        self.parse_body()
    }

    /// As [`Write::parse`], for requests whose every field is optional: an empty body is `T::default()`.
    pub fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.trim_ascii().is_empty() {
            return Ok(T::default());
        }
        self.parse_body()
    }

    fn parse_body<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let invalid = |details: String| ApiError::BadRequest {
            error: "Invalid request body".into(),
            details,
        };
        // Serde would also accept an array for a struct (field by position); the API takes objects only.
        if self.body.trim_ascii_start().first() != Some(&b'{') {
            return Err(invalid("the body must be a JSON object".into()));
        }
        // Nesting and NUL characters are checked on the raw text first (see `domain::json`), so
        // nothing the log's readers could not read gets further, and parsing is bounded.
        domain::json::check(&self.body).map_err(|error| match error {
            domain::DomainError::Invalid { field, message } => {
                invalid(format!("{field}: {message}"))
            }
            other => ApiError::from(other),
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
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
