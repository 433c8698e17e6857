//! The one error type of both APIs: every failure becomes a status code and an `{error, details}`
//! body here and nowhere else (contract §4 and §5, `events/docs/contract.md`).

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use commands::{CommandError, Refused, StoreError};
use domain::{AccessError, DomainError};
use identity::auth::AuthError;
use identity::token::TokenError;
use serde_json::json;

use crate::security::{Kind, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{error}")]
    BadRequest { error: String, details: String },
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A write authenticated by the session cookie that did not come from the API's own origin.
    #[error("cross-site request")]
    CrossSite { details: String },
    #[error("{error}")]
    NotFound { error: String, details: String },
    /// Another tenant's resource: answered exactly as [`ApiError::NotFound`], and recorded as a
    /// cross-tenant probe (`crate::security`).
    #[error("{error}")]
    OtherTenant { error: String, details: String },
    /// Existed once, and was deleted (a point-in-time read after the deletion).
    #[error("{error}")]
    Gone { error: String, details: String },
    #[error("{error}")]
    Conflict { error: String, details: String },
    /// The stream moved between load and append; retried unless the client pinned a version.
    #[error("concurrent write")]
    VersionConflict,
    #[error("precondition failed")]
    PreconditionFailed { details: String },
    /// A request body over the limit of that many bytes.
    #[error("payload too large")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Over a cap; the client may try again after that many seconds (`429`).
    #[error("too many requests")]
    TooManyRequests {
        details: String,
        retry_after_seconds: u64,
    },
    /// The organization's budget is spent and stops executions until the next month (`402`).
    #[error("budget exhausted: {details}")]
    BudgetExhausted { details: String },
    /// An upstream service (a model provider) answered with something unusable (`502`).
    #[error("{error}")]
    BadGateway { error: String, details: String },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Too many requests are waiting already; the client may retry after that many seconds (`503`).
    #[error("busy: {details}")]
    Busy {
        details: String,
        retry_after_seconds: u64,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::BadRequest {
            error: "Invalid request".into(),
            details: format!("{field}: {message}"),
        }
    }

    pub fn not_found(resource: &str, id: impl std::fmt::Display) -> Self {
        let (error, details) = missing(resource, id);
        ApiError::NotFound { error, details }
    }

    /// Maps a refusal of access to `resource` `id`: `403`, or for another tenant's resource exactly
    /// the `404` a missing one gets.
    pub fn denied(
        resource: &'static str,
        id: impl std::fmt::Display,
    ) -> impl FnOnce(AccessError) -> Self {
        move |error| match error {
            AccessError::Forbidden { .. } => ApiError::Forbidden(error.to_string()),
            AccessError::Hidden => {
                let (error, details) = missing(resource, id);
                ApiError::OtherTenant { error, details }
            }
        }
    }
}

/// The `404` answer's error and details for `resource` `id`.
fn missing(resource: &str, id: impl std::fmt::Display) -> (String, String) {
    (
        format!("{resource} not found"),
        format!("no {} with id {id}", resource.to_lowercase()),
    )
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Invalid { field, message } => ApiError::invalid(&field, message),
            // Decided against freshly loaded state; the handlers name the resource in their own 404s.
            DomainError::NotFound => ApiError::NotFound {
                error: "Not found".into(),
                details: String::new(),
            },
            DomainError::AlreadyExists => ApiError::Conflict {
                error: "Already exists".into(),
                details: String::new(),
            },
            DomainError::Conflict { error, details } => ApiError::Conflict {
                error: error.into(),
                details,
            },
        }
    }
}

/// For checks that cannot hide anything (platform-wide ones, lists, and the early check before a
/// request's organization is known), which only ever forbid.
impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Forbidden { .. } => ApiError::Forbidden(error.to_string()),
            AccessError::Hidden => ApiError::OtherTenant {
                error: "Not found".into(),
                details: String::new(),
            },
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Token(TokenError::KeysUnavailable(source)) => {
                tracing::error!(error = %source, "cannot fetch the issuer's signing keys");
                ApiError::Unavailable(
                    "the identity provider's signing keys could not be fetched".into(),
                )
            }
            AuthError::Store(error) => {
                ApiError::Internal(anyhow::Error::new(error).context("authenticating"))
            }
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. } | StoreError::IdempotencyKeyUsed => {
                ApiError::VersionConflict
            }
            StoreError::NameTaken { claimant, .. } => ApiError::Conflict {
                error: format!("{} name already exists", claimant.resource),
                details: format!(
                    "name: {} named {:?} already exists{}",
                    article(&claimant.resource),
                    claimant.name,
                    claimant.within
                ),
            },
            StoreError::Referenced { sources } => ApiError::Conflict {
                error: "Still referenced".into(),
                details: format!("still referenced by {}", describe_streams(&sources)),
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::KeyReused => ApiError::Conflict {
                error: "Idempotency key reused".into(),
                details: "Idempotency-Key: this key was already used for a different request"
                    .into(),
            },
            Refused::Denied { permission, error } => match permission.organization {
                Some(organization) => ApiError::denied("Organization", organization)(error),
                None => error.into(),
            },
        }
    }
}

impl CommandError for ApiError {
    fn lost_race(&self) -> bool {
        matches!(self, ApiError::VersionConflict)
    }
}

/// "an environment", "a workflow".
fn article(resource: &str) -> String {
    let lower = resource.to_lowercase();
    if lower.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {lower}")
    } else {
        format!("a {lower}")
    }
}

/// Stream ids (`<aggregate>-<uuid>`) grouped for people: "environments: id, id; workflows: id".
fn describe_streams(streams: &[String]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for stream in streams {
        let (kind, id) = stream
            .split_once('-')
            .unwrap_or(("resource", stream.as_str()));
        let kind = format!("{kind}s");
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((kind, vec![id])),
        }
    }
    let listed: Vec<String> = groups
        .iter()
        .map(|(kind, ids)| format!("{kind}: {}", ids.join(", ")))
        .collect();
    listed.join("; ")
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests {
                retry_after_seconds,
                ..
            }
            | ApiError::Busy {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        };
        let kind = match &self {
            ApiError::Unauthorized(_) => Some(Kind::TokenRefused),
            ApiError::Forbidden(_) | ApiError::CrossSite { .. } => Some(Kind::PermissionDenied),
            ApiError::OtherTenant { .. } => Some(Kind::CrossTenant),
            ApiError::TooManyRequests { .. } => Some(Kind::RateLimited),
            _ => None,
        };
        let (status, error, details) = match self {
            ApiError::BadRequest { error, details } => (StatusCode::BAD_REQUEST, error, details),
            ApiError::Unauthorized(details) => {
                (StatusCode::UNAUTHORIZED, "Unauthorized".into(), details)
            }
            ApiError::Forbidden(error) => (StatusCode::FORBIDDEN, error, String::new()),
            ApiError::CrossSite { details } => (
                StatusCode::FORBIDDEN,
                "Forbidden: cross-site request refused".into(),
                details,
            ),
            ApiError::NotFound { error, details } | ApiError::OtherTenant { error, details } => {
                (StatusCode::NOT_FOUND, error, details)
            }
            ApiError::Gone { error, details } => (StatusCode::GONE, error, details),
            ApiError::Conflict { error, details } => (StatusCode::CONFLICT, error, details),
            ApiError::VersionConflict => (
                StatusCode::CONFLICT,
                "Conflict".into(),
                "the resource is being changed by other requests; retry".into(),
            ),
            ApiError::PreconditionFailed { details } => (
                StatusCode::PRECONDITION_FAILED,
                "Precondition Failed".into(),
                details,
            ),
            ApiError::PayloadTooLarge { limit_bytes } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large".into(),
                format!("request bodies are limited to {limit_bytes} bytes"),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type".into(),
                "Content-Type must be application/json".into(),
            ),
            ApiError::TooManyRequests { details, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests".into(),
                details,
            ),
            ApiError::BudgetExhausted { details } => (
                StatusCode::PAYMENT_REQUIRED,
                "Budget exhausted".into(),
                details,
            ),
            ApiError::BadGateway { error, details } => (StatusCode::BAD_GATEWAY, error, details),
            ApiError::Unavailable(details) | ApiError::Busy { details, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable".into(),
                details,
            ),
            ApiError::Internal(error) if statement_timed_out(&error) => {
                tracing::warn!(error = format!("{error:#}"), "statement timed out");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable".into(),
                    "the database did not answer in time; retry later".into(),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error".into(),
                    String::new(),
                )
            }
        };
        let refusal = status.is_client_error().then(|| Refusal {
            kind,
            reason: if details.is_empty() {
                error.clone()
            } else {
                details.clone()
            },
        });
        let body = if details.is_empty() {
            json!({ "error": error })
        } else {
            json!({ "error": error, "details": details })
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(refusal) = refusal {
            response.extensions_mut().insert(refusal);
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A statement the server cancelled (SQLSTATE 57014), as `STATEMENT_TIMEOUT_SECS` does: the database
/// was too busy to answer in time, which a retry may overcome.
fn statement_timed_out(error: &anyhow::Error) -> bool {
    // sqlx reports a database's error as the boxed `DatabaseError` under its own, and the store's
    // errors pass that on as their source.
    error.chain().any(|cause| {
        cause
            .downcast_ref::<Box<dyn sqlx::error::DatabaseError>>()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "57014")
    })
}
