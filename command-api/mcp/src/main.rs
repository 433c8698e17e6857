//! The mcp-api process: [`http_layer::process::run`] with mcp-api's configuration (contract §1,
//! `events/docs/contract.md`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http_layer::process::run::<mcp_api::Config>().await
}
