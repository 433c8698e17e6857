//! Where a request came from, as the events it causes record it: both APIs read it the same way.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use domain::{Channel, RequestContext};

/// The request's context from its headers (`RequestContext::from_headers`), the peer's address, and
/// the channel it came through. The channel is a request extension, which only a service that
/// forwards requests into an API in-process (the MCP server) sets; no client can.
pub fn request_context(parts: &Parts) -> RequestContext {
    let peer_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let mut context = RequestContext::from_headers(
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
        peer_ip,
    );
    context.channel = parts.extensions.get::<Channel>().copied();
    context
}
