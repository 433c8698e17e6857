//! Extractors for reads: the authenticated caller and the list query parameters.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use http_layer::context::request_context;
use http_layer::ApiError;
use identity::auth::{Authenticated, Credentials};
use uuid::Uuid;

use crate::consistency::ReadStart;
use crate::AppState;

/// The authenticated caller of a read, by bearer token or session cookie.
pub struct Caller(pub Authenticated);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        // The first request of a new user records it, and that event records where it came from.
        let context = request_context(parts);
        let credentials = Credentials::from_headers(header("authorization"), header("cookie"));
        let authenticated = state.auth.authenticate(credentials, &context).await?;
        http_layer::security::note_caller(&parts.extensions, authenticated.actor.user_id);
        if let Some(head) = authenticated.read_at {
            parts.extensions.insert(ReadStart(head));
        }
        Ok(Caller(authenticated))
    }
}

/// `from` (inclusive) and `to` (exclusive).
pub type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The query string as named parameters; each endpoint parses the ones it takes.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid("query", e.body_text()))?;
        Ok(Params(params))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|raw| {
                raw.parse()
                    .map_err(|_| ApiError::invalid(name, format!("{raw:?} is not a valid UUID")))
            })
            .transpose()
    }

    /// An RFC 3339 time, if given.
    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name)
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::invalid(name, format!("{raw:?} is not an RFC 3339 time"))
                    })
            })
            .transpose()
    }

    /// `from` (inclusive) and `to` (exclusive), RFC 3339 times, if given; `from` not after `to`.
    pub fn time_range(&self) -> Result<TimeRange, ApiError> {
        let (from, to) = (self.time("from")?, self.time("to")?);
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(ApiError::invalid("from", "must not be after to"));
            }
        }
        Ok((from, to))
    }

    /// The parameter `name` as `parse` reads it, if given; `400` listing `names` (what it accepts) when
    /// `parse` reads nothing.
    pub fn one_of<T>(
        &self,
        name: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|raw| {
                parse(raw).ok_or_else(|| {
                    ApiError::invalid(name, format!("must be one of {}", names.join(", ")))
                })
            })
            .transpose()
    }

    /// The parameter `name`, if given, which must be one of `names`.
    pub fn named(
        &self,
        name: &str,
        names: &[&'static str],
    ) -> Result<Option<&'static str>, ApiError> {
        self.one_of(name, names, |raw| names.iter().copied().find(|n| *n == raw))
    }

    /// The `search` term, if any; an empty one means no filter.
    pub fn search(&self) -> Result<Option<&str>, ApiError> {
        match self.get("search") {
            Some(s) if s.chars().count() > domain::values::NAME_MAX_CHARS => {
                Err(ApiError::invalid(
                    "search",
                    format!(
                        "must be at most {} characters",
                        domain::values::NAME_MAX_CHARS
                    ),
                ))
            }
            Some("") | None => Ok(None),
            Some(s) => Ok(Some(s)),
        }
    }
}

/// Parses a path id, answering `400` for anything that is not a UUID.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a valid UUID")))
}
