//! The local development identity provider: serves an OpenID discovery document and a JWKS, and mints
//! bearer tokens signed with the same key, so the local stack runs without an Auth0 tenant.
//!
//! `dev-issuer serve` listens on `DEV_ISSUER_ADDR`; `dev-issuer token --sub <subject>` prints a token.
//! The key lives in `DEV_ISSUER_KEY_FILE` and is generated on first use. Never point a deployed API at
//! this issuer: anyone with the key file can sign in as anyone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};
use tests::issuer::{Issuer, SigningKey};

#[derive(Parser)]
#[command(about = "Local development identity provider")]
struct Cli {
    #[arg(long, env = "DEV_ISSUER_ADDR", default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    #[arg(
        long,
        env = "DEV_ISSUER_KEY_FILE",
        default_value = "deploy/.run/dev-issuer-key.pem"
    )]
    key_file: PathBuf,
    /// The issuer URL the APIs expect (`AUTH_ISSUER`); defaults to this server's address.
    #[arg(long, env = "AUTH_ISSUER")]
    issuer: Option<String>,
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "admin-platform")]
    audience: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the discovery document and the JWKS.
    Serve,
    /// Print a bearer token for a subject.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long, default_value_t = 12 * 3600)]
        ttl_seconds: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let key = load_or_generate(&cli.key_file)?;
    let url = cli
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{}/", cli.addr));
    let issuer = Issuer::new(url, cli.audience.clone(), key);
    match cli.command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.addr)
                .await
                .with_context(|| format!("binding {}", cli.addr))?;
            println!(
                "dev issuer {} serving its keys on http://{}",
                issuer.url, cli.addr
            );
            axum::serve(listener, issuer.router()).await?;
        }
        Command::Token { sub, ttl_seconds } => {
            let mut claims = issuer.claims(&sub);
            claims["exp"] = serde_json::json!(chrono::Utc::now().timestamp() + ttl_seconds);
            println!("{}", issuer.signing_key().sign(&claims));
        }
    }
    Ok(())
}

fn load_or_generate(path: &PathBuf) -> anyhow::Result<SigningKey> {
    if !path.exists() {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .context("generating an RSA key")?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding the key")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, pem.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The key id names the key, so a regenerated key is refetched rather than mistaken for the old one.
    let kid: String = Sha256::digest(pem.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    SigningKey::from_pem(&kid, &pem)
}
