//! Browser sessions, kept server-side: the cookie carries a random token, the `sessions` table its
//! SHA-256 and the user it signs in. Both APIs authenticate cookies through here; command-api creates
//! and ends sessions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`, so no
/// other host (a sibling subdomain, a plain-HTTP page) can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-session";

/// How long a started browser sign-in may take to come back; older attempts are expired.
pub const SIGN_IN_SECONDS: i64 = 600;

/// A live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The session's public id, as recorded in sign-in and sign-out events.
    pub id: Uuid,
    pub user_id: Uuid,
}

/// A session just created: its cookie token exists only here and in the response that sets it.
pub struct NewSession {
    pub session: Session,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// 32 random bytes from the operating system, base64url: for session tokens, `state`, nonces and PKCE
/// verifiers.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

pub async fn create(
    pool: &PgPool,
    user_id: Uuid,
    ttl: chrono::Duration,
) -> sqlx::Result<NewSession> {
    let token = random_token();
    let session = Session {
        id: Uuid::now_v7(),
        user_id,
    };
    let expires_at = Utc::now() + ttl;
    // Expired sessions are deleted by the projector's housekeeping.
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(session.id)
    .bind(token_hash(&token))
    .bind(user_id)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(NewSession {
        session,
        token,
        expires_at,
    })
}

/// Ends the session a cookie token names, wherever else the cookie is used; `None` if it had ended.
pub async fn end(pool: &PgPool, token: &str) -> sqlx::Result<Option<Session>> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "DELETE FROM sessions WHERE token_hash = $1 AND expires_at > now() RETURNING id, user_id",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, user_id)| Session { id, user_id }))
}
