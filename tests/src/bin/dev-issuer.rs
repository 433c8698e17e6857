//! The local development identity provider: a complete OpenID Connect provider (discovery, JWKS, the
//! authorization-code flow with PKCE behind a sign-in page that accepts any user name, logout), so the
//! local stack, browser sign-in included, runs without an Auth0 tenant.
//!
//! `dev-issuer serve` listens on `DEV_ISSUER_ADDR`; `dev-issuer token --sub <subject>` prints a bearer
//! token for the API. The browser sign-in's client is `AUTH_CLIENT_ID`, confidential when
//! `AUTH_CLIENT_SECRET` is set and public (PKCE only) otherwise. The key lives in
//! `DEV_ISSUER_KEY_FILE` and is generated on first use. Never point a deployed API at this issuer:
//! anyone who reaches it signs in as anyone, and anyone with the key file can sign any token.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};
use tests::issuer::{Issuer, SigningKey, CLIENT_ID};

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
    /// The OAuth client the browser sign-in uses.
    #[arg(long, env = "AUTH_CLIENT_ID", default_value = CLIENT_ID)]
    client_id: String,
    /// The client's secret; without one the client is public and relies on PKCE alone.
    #[arg(long, env = "AUTH_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the provider: discovery, JWKS, sign-in page, token endpoint, logout.
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
    // An empty `AUTH_CLIENT_SECRET=` line in .env means "no secret", not an empty one.
    let secret = cli.client_secret.clone().filter(|s| !s.is_empty());
    let issuer =
        Issuer::new(url, cli.audience.clone(), key).with_client(cli.client_id.clone(), secret);
    match cli.command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cli.addr)
                .await
                .with_context(|| format!("binding {}", cli.addr))?;
            let kind = match issuer.client_secret() {
                Some(_) => "confidential",
                None => "public",
            };
            println!(
                "dev issuer {} serving on http://{} for the {kind} client {}",
                issuer.url,
                cli.addr,
                issuer.client_id()
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
