//! The query-api process: [`http_layer::process::run`] with query-api's configuration (contract §1,
//! `events/docs/contract.md`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http_layer::process::run::<query_api::Config>().await
}
