//! Serving a service's HTTP surface, the same in every process: bind, answer until shutdown is
//! requested (SIGTERM or SIGINT, see [`http_layer::shutdown`]), then stop accepting and let the requests
//! in flight finish within the grace period.

use std::net::SocketAddr;

use crate::shutdown::Shutdown;
use anyhow::Context;
use axum::Router;

/// Serves `app` on `addr` until `shutdown` is requested and the requests in flight are answered, or
/// the grace period after the signal has passed. `name` names the service in the log.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    app: Router,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "{name} listening");
    // The peer's address is what requests record as their client IP when no gateway names one.
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown({
        let shutdown = shutdown.clone();
        async move { shutdown.requested().await }
    });
    if let Some(served) = shutdown.within_grace(server).await {
        served?;
    }
    Ok(())
}
