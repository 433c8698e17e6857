//! Turning a request's credentials into an [`Actor`]: verify the bearer token, then resolve the
//! subject's platform role. Both APIs authenticate through this.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::access::Actor;
use crate::token::{TokenConfig, TokenError, TokenVerifier};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token: TokenConfig,
    /// Subjects that hold the System role.
    pub system_admins: HashSet<String>,
}

impl AuthConfig {
    /// Reads `AUTH_ISSUER`, `AUTH_AUDIENCE`, `AUTH_JWKS_URL` and `SYSTEM_ADMINS` (API.md §1).
    pub fn from_env() -> anyhow::Result<Self> {
        let issuer =
            std::env::var("AUTH_ISSUER").map_err(|_| anyhow::anyhow!("AUTH_ISSUER is not set"))?;
        let audience = std::env::var("AUTH_AUDIENCE")
            .map_err(|_| anyhow::anyhow!("AUTH_AUDIENCE is not set"))?;
        let jwks_url = std::env::var("AUTH_JWKS_URL")
            .unwrap_or_else(|_| format!("{issuer}.well-known/jwks.json"));
        let system_admins = std::env::var("SYSTEM_ADMINS").unwrap_or_default();
        Ok(AuthConfig {
            token: TokenConfig {
                issuer,
                audience,
                jwks_url,
                refetch_interval: Duration::from_secs(10),
            },
            system_admins: parse_subjects(&system_admins),
        })
    }
}

pub fn parse_subjects(list: &str) -> HashSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error(transparent)]
    Token(#[from] TokenError),
}

pub struct Authenticator {
    verifier: TokenVerifier,
    system_admins: HashSet<String>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Authenticator {
            verifier: TokenVerifier::new(config.token),
            system_admins: config.system_admins,
        }
    }

    /// Authenticates from an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Actor, AuthError> {
        let token = authorization
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let claims = self.verifier.verify(token).await?;
        Ok(Actor {
            system: self.system_admins.contains(&claims.sub),
            id: claims.sub,
            memberships: HashMap::new(),
        })
    }
}
