//! NDJSON exports: a list asked for with `Accept: application/x-ndjson` ([`wanted`]) streams every
//! matching row, one JSON object per line, a batch at a time ([`ndjson`]), so that an export of any
//! size holds one batch in memory. A failure part-way ends the body with an error, which the client
//! sees as a broken transfer rather than a short, complete-looking file.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, Stream, StreamExt};
use http_layer::ApiError;
use serde::Serialize;

pub const NDJSON: &str = "application/x-ndjson";

/// Whether the request asks for an NDJSON export.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON))
}

/// Streams `batches` (of `what`, for the log) as NDJSON until one is empty or the client goes away.
pub fn ndjson<S, T>(what: &'static str, batches: S) -> Response
where
    S: Stream<Item = Result<Vec<T>, ApiError>> + Send + 'static,
    T: Serialize + Send,
{
    let (mut lines, body) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut batches = std::pin::pin!(batches);
        let result: Result<(), ApiError> = async {
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                if batch.is_empty() {
                    return Ok(());
                }
                let mut chunk = Vec::new();
                for row in batch {
                    serde_json::to_writer(&mut chunk, &row).map_err(anyhow::Error::from)?;
                    chunk.push(b'\n');
                }
                if lines.send(Ok(Bytes::from(chunk))).await.is_err() {
                    // The client went away.
                    return Ok(());
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::error!(error = %error, export = what, "export failed part-way");
            let _ = lines
                .send(Err(std::io::Error::other("the export failed part-way")))
                .await;
        }
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(body),
    )
        .into_response()
}
