//! Graceful shutdown, the same in every process: the first SIGTERM or SIGINT requests it; servers
//! stop accepting and finish the requests in flight, workers stop at their next safe point (between
//! batches), and whatever is still running [`GRACE`] after the signal is abandoned. Abandoning is
//! safe: every write is one transaction, which PostgreSQL rolls back when its connection closes.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How long in-flight work may go on after the signal.
pub const GRACE: Duration = Duration::from_secs(30);

/// Whether shutdown has been requested; every task that must stop at a safe point holds a clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Default for Shutdown {
    /// Never requested: for tasks whose owner stops them by dropping them (tests, operator commands).
    fn default() -> Self {
        Shutdown(watch::channel(false).1)
    }
}

impl Shutdown {
    /// Requested by the first SIGTERM or SIGINT. The handlers are installed before this returns, so
    /// a signal that arrives during start-up is not lost.
    pub fn on_signal() -> std::io::Result<Self> {
        let (requested, shutdown) = watch::channel(false);
        let signals = shutdown_signal()?;
        tokio::spawn(async move {
            signals.await;
            tracing::info!("shutting down: finishing the work in flight");
            let _ = requested.send(true);
        });
        Ok(Shutdown(shutdown))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (never for [`Shutdown::default`]).
    pub async fn requested(&self) {
        let mut flag = self.0.clone();
        if flag.wait_for(|requested| *requested).await.is_err() {
            // The sender is gone without requesting: nothing can request it any more.
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` to its end, or until [`GRACE`] after shutdown was requested; `None` when cut short.
    pub async fn within_grace<F: IntoFuture>(&self, work: F) -> Option<F::Output> {
        let work = work.into_future();
        tokio::pin!(work);
        tokio::select! {
            output = &mut work => return Some(output),
            _ = self.requested() => {}
        }
        let output = tokio::time::timeout(GRACE, work).await.ok();
        if output.is_none() {
            tracing::warn!("work still in flight {GRACE:?} after the signal: exiting without it");
        }
        output
    }
}

/// The process's one signal future: resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
