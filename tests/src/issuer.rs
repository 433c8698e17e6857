//! A local OpenID Connect issuer speaking the real wire format (discovery document, JWKS, RS256
//! tokens). Tests verify tokens against it; the local stack runs it as `dev-issuer` so that a newcomer
//! can mint tokens without an Auth0 tenant.

use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

/// One RSA signing key and the JWK that publishes it.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn from_pem(kid: &str, pem: &str) -> anyhow::Result<Self> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::pkcs1::DecodeRsaPrivateKey::from_pkcs1_pem(pem))
            .context("parsing the RSA private key")?;
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        });
        Ok(SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes())?,
            jwk,
        })
    }

    /// Signs arbitrary claims with this key (RS256, this key's `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        // Claims are plain JSON and the key is a valid RSA key: signing cannot fail.
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with a valid RSA key")
    }
}

#[derive(Clone)]
pub struct Issuer {
    /// The issuer URL, with a trailing slash (as Auth0 writes it).
    pub url: String,
    pub audience: String,
    /// Keys published in the JWKS; the first one signs new tokens.
    keys: Arc<RwLock<Vec<SigningKey>>>,
}

impl Issuer {
    pub fn new(url: String, audience: String, key: SigningKey) -> Self {
        Issuer {
            url,
            audience,
            keys: Arc::new(RwLock::new(vec![key])),
        }
    }

    pub fn signing_key(&self) -> SigningKey {
        self.keys.read().expect("issuer keys lock")[0].clone()
    }

    /// Replaces the published keys (a rotation); the first signs from now on.
    pub fn publish(&self, keys: Vec<SigningKey>) {
        *self.keys.write().expect("issuer keys lock") = keys;
    }

    /// Standard claims for `sub`, valid for an hour.
    pub fn claims(&self, sub: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.url,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "email": format!("{sub}@example.test"),
            "name": sub,
        })
    }

    pub fn token(&self, sub: &str) -> String {
        self.signing_key().sign(&self.claims(sub))
    }

    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().expect("issuer keys lock");
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Serves `/.well-known/openid-configuration` and `/.well-known/jwks.json`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(issuer): State<Issuer>| async move { Json(issuer.jwks()) }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(|State(issuer): State<Issuer>| async move {
                    Json(json!({
                        "issuer": issuer.url,
                        "jwks_uri": format!("{}.well-known/jwks.json", issuer.url),
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "subject_types_supported": ["public"],
                        "response_types_supported": ["code"],
                    }))
                }),
            )
            .with_state(self.clone())
    }
}
