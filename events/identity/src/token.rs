//! Token verification: RS256 JWTs from the configured issuer (bearer access tokens, and the ID tokens
//! of browser sign-in), keys from its JWKS.
//!
//! Keys are cached by `kid`. A token naming an unknown `kid` triggers a refetch (the issuer may have
//! rotated its keys), at most once per `refetch_interval`, so a flood of made-up `kid`s cannot turn
//! into a flood of requests to the issuer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    pub refetch_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// `true` when the provider has verified that the user owns `email`; absent says nothing.
    pub email_verified: Option<bool>,
    /// Present in ID tokens: the value the sign-in that asked for the token sent.
    pub nonce: Option<String>,
}

impl Claims {
    /// Who the token is about. An email the provider does not say it has verified (`email_verified`
    /// false or absent) is left out: members are added by email, and an unverified one could be
    /// anybody's.
    pub fn identity(&self) -> domain::user::Identity {
        domain::user::Identity {
            subject: self.sub.clone(),
            email: self
                .email
                .clone()
                .filter(|_| self.email_verified == Some(true)),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm {0:?}: only RS256 is accepted")]
    Algorithm(Algorithm),
    #[error("the token names no key the issuer publishes")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the issuer's keys could not be fetched")]
    KeysUnavailable(#[source] reqwest::Error),
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

pub struct TokenVerifier {
    config: TokenConfig,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the keys were last fetched; also serialises fetches.
    fetched_at: Mutex<Option<Instant>>,
}

impl TokenVerifier {
    pub fn new(config: TokenConfig) -> Self {
        TokenVerifier {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a default HTTP client builds"),
            keys: RwLock::new(HashMap::new()),
            fetched_at: Mutex::new(None),
        }
    }

    /// Verifies an access token (a bearer token for this API).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_for(token, &self.config.audience).await
    }

    /// Verifies an ID token issued to the browser sign-in's OAuth client. The caller checks the nonce.
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<Claims, TokenError> {
        self.verify_for(token, client_id).await
    }

    async fn verify_for(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        // decode_header refuses `alg: none` and any name it does not know.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = match self.key(&kid).await {
            Some(key) => key,
            None => {
                self.refetch().await?;
                self.key(&kid).await.ok_or(TokenError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().await.get(kid).cloned()
    }

    async fn refetch(&self) -> Result<(), TokenError> {
        let mut fetched_at = self.fetched_at.lock().await;
        if fetched_at.is_some_and(|at| at.elapsed() < self.config.refetch_interval) {
            return Ok(());
        }
        let set: JwkSet = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(TokenError::KeysUnavailable)?
            .json()
            .await
            .map_err(TokenError::KeysUnavailable)?;
        *fetched_at = Some(Instant::now());
        let keys = set
            .keys
            .into_iter()
            .filter(|k| k.kty == "RSA")
            .filter(|k| k.alg.as_deref().is_none_or(|alg| alg == "RS256"))
            .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|k| {
                let key =
                    DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
                Some((k.kid?, key))
            })
            .collect();
        *self.keys.write().await = keys;
        Ok(())
    }
}
