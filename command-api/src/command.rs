//! Running a command from a write request: the request's caller and idempotency key go to the
//! command executor (`commands::executor`), which runs the command, retries it after a lost race and
//! commits what it decided; its answer becomes the HTTP response (status, `ETag`, `Location`,
//! `X-Consistency-Token`, `Idempotent-Replayed`).
//!
//! With `If-Match`, the command's own check ([`crate::extract::Write::check_if_match`]) answers `412`
//! when the resource itself moved; a dependency that moved (its organization, say) is retried like
//! any lost race, since the client pinned only the resource.

use std::future::Future;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::{Answer, Outcome};
use http_layer::ApiError;

use crate::extract::Write;
use crate::AppState;

/// Runs `command` for the write request and renders its answer.
pub async fn execute<F, Fut>(
    state: &AppState,
    write: &Write,
    command: F,
) -> Result<Response, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Outcome, ApiError>>,
{
    let answer = state.executor.run(write.caller(), command).await?;
    Ok(render(answer))
}

fn render(answer: Answer) -> Response {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            map.insert(name, value);
        }
    }
    if answer.replayed {
        map.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, map, answer.body).into_response()
}
