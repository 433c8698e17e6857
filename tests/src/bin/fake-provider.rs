//! The local fake AI model provider: serves [`tests::fake_provider`] (OpenAI-compatible Chat
//! Completions at `/{scenario}/v1/chat/completions`, Anthropic Messages at `/{scenario}/v1/messages`,
//! the recorded requests at `/_requests`) on `FAKE_PROVIDER_ADDR`, so the local stack calls a model
//! without a provider account. It answers with an echo of the last user message; the scenario in the
//! path makes it refuse, fail, stall or garble on purpose. Any credential is accepted, and echoed back
//! by the `echo-credential` scenario: never give it a real one.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tests::fake_provider::{serve, ProviderState};

#[derive(Parser)]
#[command(about = "Local fake AI model provider (OpenAI and Anthropic wire formats)")]
struct Cli {
    #[arg(long, env = "FAKE_PROVIDER_ADDR", default_value = "127.0.0.1:8093")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.addr)
        .await
        .with_context(|| format!("binding {}", cli.addr))?;
    println!(
        "fake provider serving on http://{addr}/ (e.g. http://{addr}/ok/v1/chat/completions and \
         http://{addr}/ok/v1/messages)",
        addr = cli.addr
    );
    serve(listener, ProviderState::default()).await?;
    Ok(())
}
