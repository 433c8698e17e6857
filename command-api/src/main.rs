//! The command-api process: [`http_layer::process::run`] with command-api's configuration (contract §1,
//! `events/docs/contract.md`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http_layer::process::run::<command_api::Config>().await
}
