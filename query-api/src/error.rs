//! The one error type of query-api: every failure becomes a status code and an `{error, details}`
//! body here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use events::auth::AuthError;
use events::token::TokenError;
use events::AccessError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{error}")]
    BadRequest { error: String, details: String },
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{error}")]
    NotFound { error: String, details: String },
    /// Existed once, and was deleted (a point-in-time read after the deletion).
    #[error("{error}")]
    Gone { error: String, details: String },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Too many requests are waiting already; the client may retry after the given seconds.
    #[error("busy: {details}")]
    Busy { retry_after: u64, details: String },
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
        ApiError::NotFound {
            error: format!("{resource} not found"),
            details: format!("no {} with id {id}", resource.to_lowercase()),
        }
    }
}

impl ApiError {
    /// Maps a refusal of access to `resource` `id`: `403`, or for another tenant's resource exactly
    /// the `404` a missing one gets.
    pub fn denied(
        resource: &'static str,
        id: impl std::fmt::Display,
    ) -> impl FnOnce(AccessError) -> Self {
        move |error| match error {
            AccessError::Forbidden { .. } => ApiError::Forbidden(error.to_string()),
            AccessError::Hidden => ApiError::not_found(resource, id),
        }
    }
}

/// For checks that cannot hide anything (platform-wide ones, and lists), which only ever forbid.
impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Forbidden { .. } => ApiError::Forbidden(error.to_string()),
            AccessError::Hidden => ApiError::NotFound {
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

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, error, details) = match self {
            ApiError::BadRequest { error, details } => (StatusCode::BAD_REQUEST, error, details),
            ApiError::Unauthorized(details) => {
                (StatusCode::UNAUTHORIZED, "Unauthorized".into(), details)
            }
            ApiError::Forbidden(error) => (StatusCode::FORBIDDEN, error, String::new()),
            ApiError::NotFound { error, details } => (StatusCode::NOT_FOUND, error, details),
            ApiError::Gone { error, details } => (StatusCode::GONE, error, details),
            ApiError::Unavailable(details) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable".into(),
                details,
            ),
            ApiError::Busy {
                retry_after: seconds,
                details,
            } => {
                retry_after = Some(seconds);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable".into(),
                    details,
                )
            }
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
        let body = if details.is_empty() {
            json!({ "error": error })
        } else {
            json!({ "error": error, "details": details })
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
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
