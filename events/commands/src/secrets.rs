//! Write-only values (variable values, model credentials) are sealed here before they enter an event,
//! so that the log, the read models, Kafka and the audit trail only ever hold ciphertext.
//!
//! Envelope encryption: every owner (an organization; the nil id for platform-wide resources) has its
//! own random data key, stored in `data_keys` wrapped by the master key (`SECRETS_KEY`). Values are
//! sealed with AES-256-GCM under the owner's data key, bound to where they belong (the stream and the
//! field) as associated data, so a ciphertext copied into another resource does not open. Destroying an
//! owner's data key makes all of its values unreadable at once: deleting an organization does, in the
//! transaction that records the deletion (`crate::lookups`).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sqlx::PgPool;
use uuid::Uuid;

const NONCE_LEN: usize = 12;
/// Marks the format of a sealed value, so that a later scheme can be told apart.
const SEALED_PREFIX: &str = "v1.";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("SECRETS_KEY must be the base64 of exactly 32 bytes")]
    BadMasterKey,
    #[error("a sealed value or data key does not open with this key (wrong key, or tampered)")]
    Undecryptable,
    #[error("no data key for owner {0}: its values were destroyed")]
    Destroyed(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The master key, and the owners' data keys wrapped by it.
#[derive(Clone)]
pub struct Secrets {
    master: Aes256Gcm,
}

/// Never prints key material.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// The master key from `SECRETS_KEY`: the base64 of 32 random bytes.
    pub fn from_base64(raw: &str) -> Result<Self, SecretsError> {
        let bytes = STANDARD
            .decode(raw.trim())
            .map_err(|_| SecretsError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(SecretsError::BadMasterKey);
        }
        Ok(Secrets {
            master: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// A fresh random master key, base64-encoded (for tests and first-run setup).
    pub fn generate_key() -> String {
        STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// Seals `plaintext` for `owner`, bound to `context` (for example `model-<id>/token`).
    pub async fn seal(
        &self,
        pool: &PgPool,
        owner: Uuid,
        context: &str,
        plaintext: &str,
    ) -> Result<String, SecretsError> {
        let key = self.data_key(pool, owner).await?;
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let ciphertext = key
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed)))
    }

    /// Opens a value sealed by [`Secrets::seal`] with the same owner and context.
    pub async fn open(
        &self,
        pool: &PgPool,
        owner: Uuid,
        context: &str,
        sealed: &str,
    ) -> Result<String, SecretsError> {
        let key = self
            .existing_data_key(pool, owner)
            .await?
            .ok_or(SecretsError::Destroyed(owner))?;
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|bytes| bytes.len() > NONCE_LEN)
            .ok_or(SecretsError::Undecryptable)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = key
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        String::from_utf8(plaintext).map_err(|_| SecretsError::Undecryptable)
    }

    /// The owner's data key, created on first use. Two writers creating it at once keep the first one
    /// stored; both then read that one back.
    async fn data_key(&self, pool: &PgPool, owner: Uuid) -> Result<Aes256Gcm, SecretsError> {
        if let Some(key) = self.existing_data_key(pool, owner).await? {
            return Ok(key);
        }
        let fresh = Aes256Gcm::generate_key(OsRng);
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let wrapped = self
            .master
            .encrypt(
                &nonce,
                Payload {
                    msg: fresh.as_slice(),
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&wrapped);
        sqlx::query(
            "INSERT INTO data_keys (owner, wrapped) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(owner)
        .bind(stored)
        .execute(pool)
        .await?;
        self.existing_data_key(pool, owner)
            .await?
            .ok_or(SecretsError::Destroyed(owner))
    }

    async fn existing_data_key(
        &self,
        pool: &PgPool,
        owner: Uuid,
    ) -> Result<Option<Aes256Gcm>, SecretsError> {
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE owner = $1")
                .bind(owner)
                .fetch_optional(pool)
                .await?;
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        if wrapped.len() <= NONCE_LEN {
            return Err(SecretsError::Undecryptable);
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let key = self
            .master
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        Ok(Some(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert!(Secrets::from_base64(&Secrets::generate_key()).is_ok());
        assert!(Secrets::from_base64("c2hvcnQ=").is_err());
        assert!(Secrets::from_base64("not base64!").is_err());
        assert_eq!(
            format!(
                "{:?}",
                Secrets::from_base64(&Secrets::generate_key()).unwrap()
            ),
            "Secrets(..)"
        );
    }
}
