//! Personal data in the log: a user's token subject, email and name are sealed under a key of that
//! user's own before they enter an event, so that erasing the user is destroying one key. Every copy
//! in the log, and in whatever is folded or published from it afterwards, then reads as [`ERASED`],
//! while the log stays append-only and its hash chain intact.
//!
//! Keys live in `personal_data_keys` (migration `0013`), one per user stream; the write side creates
//! them (`commands::store`). Every read of the log selects a user event's key with its row
//! ([`crate::COLUMNS`]), and decoding the row opens the values
//! in place ([`open`]), so aggregates, projections, the audit trail, point-in-time reads and the
//! publisher see plaintext or [`ERASED`] and never handle ciphertext. A value sealed under a key that
//! is no longer its stream's (destroyed, or replaced when an erased subject signed in again) reads as
//! [`ERASED`]; values recorded before sealing existed are plaintext and pass through.
//!
//! The keys are not wrapped by a master key, unlike write-only values' (`commands::secrets`): the read
//! models serve current personal data in plaintext anyway, so a wrap would hide nothing that a copy of
//! the database does not already show, and every service reading the log can open these values
//! without holding a secret. What erasure relies on is that the key row is gone.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use uuid::Uuid;

pub use domain::personal::{ERASED, FIELDS, SEALED_EVENT_TYPES};

/// Marks a sealed personal value: `p1.<key id>.<base64 of nonce and ciphertext>`.
const PREFIX: &str = "p1.";
const NONCE_LEN: usize = 12;
const KEY_ID_LEN: usize = 16;

/// One user stream's key.
pub struct PersonalKey {
    id: Uuid,
    cipher: Aes256Gcm,
}

impl PersonalKey {
    /// A key from its stored parts: its id and its 32 bytes (`None` for any other length).
    pub fn new(id: Uuid, key: &[u8]) -> Option<Self> {
        (key.len() == 32).then(|| PersonalKey {
            id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        })
    }

    /// A fresh random key's 32 bytes.
    pub fn generate() -> Vec<u8> {
        Aes256Gcm::generate_key(OsRng).to_vec()
    }

    /// A key as [`crate::COLUMNS`] selects it: the key id's 16 bytes, then the key's 32.
    fn from_column(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_ID_LEN + 32 {
            return None;
        }
        let (id, key) = bytes.split_at(KEY_ID_LEN);
        PersonalKey::new(Uuid::from_slice(id).ok()?, key)
    }

    /// Seals the personal fields of a user event's `data` in place, each bound to its stream and field.
    pub fn seal(&self, stream_id: &str, data: &mut Value) {
        for field in FIELDS {
            if let Some(Value::String(plaintext)) = data.get_mut(field) {
                let nonce = Aes256Gcm::generate_nonce(OsRng);
                let aad = context(stream_id, field);
                let ciphertext = self
                    .cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: plaintext.as_bytes(),
                            aad: aad.as_bytes(),
                        },
                    )
                    .expect("AES-GCM seals any value this size");
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&ciphertext);
                *plaintext = format!("{PREFIX}{}.{}", self.id.simple(), STANDARD.encode(sealed));
            }
        }
    }

    fn open_one(&self, aad: &str, sealed: &str) -> Option<String> {
        let (key_id, b64) = sealed.strip_prefix(PREFIX)?.split_once('.')?;
        if Uuid::parse_str(key_id).ok()? != self.id {
            return None;
        }
        let bytes = STANDARD.decode(b64).ok().filter(|b| b.len() > NONCE_LEN)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plaintext).ok()
    }
}

/// Opens the personal fields of an event's `data` in place, if its type carries any, with the key its
/// row was read with (`None`: the stream has none any more). A sealed value that does not open reads
/// as [`ERASED`].
pub fn open(event_type: &str, stream_id: &str, data: &mut Value, key_column: Option<&[u8]>) {
    if !SEALED_EVENT_TYPES.contains(&event_type) {
        return;
    }
    let key = key_column.and_then(PersonalKey::from_column);
    for field in FIELDS {
        if let Some(Value::String(value)) = data.get_mut(field) {
            if value.starts_with(PREFIX) {
                *value = key
                    .as_ref()
                    .and_then(|key| key.open_one(&context(stream_id, field), value))
                    .unwrap_or_else(|| ERASED.to_owned());
            }
        }
    }
}

/// What a sealed value is bound to: its stream and field, so that it opens nowhere else.
fn context(stream_id: &str, field: &str) -> String {
    format!("{stream_id}/{field}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fresh_key() -> (PersonalKey, Vec<u8>) {
        let id = Uuid::new_v4();
        let bytes = Aes256Gcm::generate_key(OsRng);
        let mut column = id.as_bytes().to_vec();
        column.extend_from_slice(&bytes);
        (PersonalKey::from_column(&column).unwrap(), column)
    }

    #[test]
    fn sealed_fields_open_with_their_key_and_nowhere_else() {
        let (key, column) = fresh_key();
        let plain =
            json!({ "id": "u", "subject": "idp|alice", "email": "a@example.test", "name": null });
        let mut data = plain.clone();
        key.seal("user-1", &mut data);
        for field in ["subject", "email"] {
            let sealed = data[field].as_str().unwrap();
            assert!(sealed.starts_with(PREFIX) && !sealed.contains("alice"));
        }
        assert_eq!(data["name"], Value::Null);
        assert_eq!(data["id"], "u");

        let mut opened = data.clone();
        open("user.registered", "user-1", &mut opened, Some(&column));
        assert_eq!(opened, plain);

        let mut elsewhere = data.clone();
        open("user.registered", "user-2", &mut elsewhere, Some(&column));
        assert_eq!(elsewhere["email"], ERASED);

        let (_, other_column) = fresh_key();
        let mut wrong_key = data.clone();
        open(
            "user.registered",
            "user-1",
            &mut wrong_key,
            Some(&other_column),
        );
        let mut no_key = data;
        open("user.registered", "user-1", &mut no_key, None);
        for erased in [wrong_key, no_key] {
            assert_eq!(erased["subject"], ERASED);
            assert_eq!(erased["email"], ERASED);
        }
    }

    #[test]
    fn plaintext_from_before_sealing_passes_through() {
        let plain = json!({ "subject": "idp|bob", "email": "b@example.test" });
        let mut data = plain.clone();
        open("user.registered", "user-1", &mut data, None);
        assert_eq!(data, plain);
    }

    #[test]
    fn every_read_of_the_log_selects_keys_for_the_sealed_event_types() {
        let selected = crate::COLUMNS;
        for event_type in SEALED_EVENT_TYPES {
            assert!(
                selected.contains(&format!("'{event_type}'")),
                "{event_type}"
            );
        }
        assert!(selected.contains("AS personal_key"));
    }

    #[test]
    fn other_event_types_are_left_alone() {
        let named = json!({ "name": "p1.looks-sealed" });
        let mut data = named.clone();
        open("prompt.created", "prompt-1", &mut data, None);
        assert_eq!(data, named);
    }
}
