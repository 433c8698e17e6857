//! Projection workers and the operator commands around them.
//!
//! Each projection reads the event log from its checkpoint and keeps its read-model tables; see
//! [`projection`] for the contract, [`worker`] for how one runs live, [`rebuild`] for rebuilding
//! without downtime, [`verify`] for checking the read models and the log, [`replay`] for read models
//! as of a past point, [`publisher`] for the Kafka publisher, [`indexer`] for the processed queue's
//! index of its S3 bucket, [`housekeeping`] for purging what has expired beside the log.

pub mod access;
pub mod audit;
pub mod catalog;
pub mod executions;
pub mod export;
pub mod feedback;
pub mod housekeeping;
pub mod indexer;
pub mod job_runner;
pub mod jobs;
pub mod notifications;
pub mod ops;
pub mod projection;
pub mod publisher;
pub mod rebuild;
pub mod replay;
pub mod scratch;
pub mod security;
pub mod tail;
pub mod tenants;
pub mod verify;
pub mod worker;
pub mod writes;

use std::sync::Arc;

pub use projection::Projection;

/// Every projection the system runs.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(tenants::Tenants),
        Arc::new(access::Access),
        Arc::new(catalog::Catalog),
        Arc::new(executions::Executions),
        Arc::new(feedback::FeedbackTriage {
            burst: feedback::BurstRule::from_env(),
        }),
        Arc::new(security::Security),
        Arc::new(notifications::Notifications),
        Arc::new(jobs::Jobs),
        Arc::new(audit::Audit),
    ]
}

/// The connections a projector process's pool needs: each live projection holds one for as long as it
/// runs (its LISTEN for appends); the publisher, the indexer, housekeeping and the health routes share
/// the rest.
pub fn pool_size() -> u32 {
    projections().len() as u32 + 4
}

/// Spawns a live runner for each projection on the current runtime.
pub fn spawn_workers(
    pool: &sqlx::PgPool,
    config: worker::WorkerConfig,
) -> Vec<tokio::task::JoinHandle<()>> {
    projections()
        .into_iter()
        .map(|projection| tokio::spawn(worker::run(pool.clone(), projection, config.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_projections_jobs_may_name_are_the_projections_that_run() {
        let running: Vec<&str> = super::projections().iter().map(|p| p.name()).collect();
        assert_eq!(running, contracts::read_models::PROJECTIONS);
    }
}
