//! The command executor: the one way anything is appended to the log.
//!
//! A command is an async function that loads what it needs through the executor, decides with its
//! aggregates, and returns an [`Outcome`]: the answer, and the [`WriteSet`] to commit (none when the
//! command changed nothing). [`Executor::run`] then does what every command needs:
//! - runs the command again when another writer got to a stream first (the resource itself, or a
//!   stream the write only depends on, such as its organization): the next run loads the new state;
//! - keeps the answer under the request's idempotency key in the same statement as the events, and
//!   answers a repeated key with the kept answer instead of running the command, as long as the caller
//!   still holds the permission the write was made with;
//! - commits, and answers with the log position of the write (or the log head when nothing was
//!   appended), so the client can read its own write.
//!
//! Callers authenticate and authorise first, at their edge; the executor trusts the [`Caller`] it is
//! given.
//!
//! Two caches spare a command its round trips to the database, each safe by construction:
//! - the access lookups ([`crate::access`]), for authentication; the executor drops what a write
//!   changed as soon as it commits, and other processes learn of it by notification;
//! - the folded state of streams a command only depends on ([`Executor::load_pinned`]): the write
//!   requires the version it was folded to, so a state that is no longer current cannot commit. The
//!   write fails as a lost race, the executor drops the stream, and the command runs again on a fresh
//!   load. A commit to a stream drops it too.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use domain::{AccessError, Actor, Aggregate, Loaded, LogPosition, Permission};
use event_log::personal::PersonalKey;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{AccessCache, AccessRecord};
use crate::store::{
    retry_backoff, stream_heads, Store, StoreError, StoredResponse, StreamHead, WriteSet,
};

/// How often a command is run again after losing a race for a stream.
const ATTEMPTS: u32 = 50;

/// Streams whose folded state [`Executor::load_pinned`] keeps at most; it starts again empty beyond.
const PINNED_CAPACITY: usize = 10_000;

/// The header that carries a write's log position (contract §5, `events/docs/contract.md`).
pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";

/// Who runs a command, and the idempotency key it came with.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub actor: &'a Actor,
    pub idempotency: Option<&'a Idempotency>,
}

/// An idempotency key and the fingerprint of the request that used it: a repeated key with another
/// fingerprint is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// What the executor refuses on its own, before any command runs.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    /// The caller no longer holds the permission a kept answer was made with.
    #[error("{error}")]
    Denied {
        permission: Permission,
        #[source]
        error: AccessError,
    },
}

/// The error type of commands: it carries the store's errors and the executor's refusals, and says
/// when a command lost a race and may run again.
pub trait CommandError: From<StoreError> + From<Refused> {
    fn lost_race(&self) -> bool;
}

/// What a command decided: its answer, and what to commit.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    /// The resource's stream version after the command: the `ETag`.
    pub version: i64,
    pub location: Option<String>,
    /// Writes committed one by one before this outcome's own, each in its own transaction.
    before: Vec<WriteSet>,
    write: Option<(WriteSet, Option<Permission>)>,
}

impl Outcome {
    pub fn new(status: u16, body: impl Serialize, version: i64) -> Self {
        Outcome {
            status,
            // Serialising our own view types cannot fail.
            body: serde_json::to_value(body).expect("views serialise to JSON"),
            version,
            location: None,
            before: Vec::new(),
            write: None,
        }
    }

    /// The API's delete answer (contract §4): `{"success": true, "id": ...}`.
    pub fn deleted(id: impl Serialize, version: i64) -> Self {
        Outcome::new(
            200,
            serde_json::json!({ "success": true, "id": id }),
            version,
        )
    }

    pub fn located(mut self, location: String) -> Self {
        self.location = Some(location);
        self
    }

    /// Commits `write` with this answer; `permission` is the one the command was authorised by, which
    /// a repeated request must still hold to get the kept answer (`None`: a user acting on its own
    /// account, which needs none).
    pub fn appending(mut self, write: WriteSet, permission: impl Into<Option<Permission>>) -> Self {
        self.write = Some((write, permission.into()));
        self
    }

    /// Commits `writes` first, one by one, each on its own: for a command that must change other
    /// streams before its own (erasing a user removes its memberships first). All of them were
    /// decided before any commits; if one loses a race, the command runs again and decides anew.
    pub fn preceded_by(mut self, writes: Vec<WriteSet>) -> Self {
        self.before = writes;
        self
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![("etag".to_owned(), format!("\"{}\"", self.version))];
        if let Some(location) = &self.location {
            headers.push(("location".to_owned(), location.clone()));
        }
        headers
    }
}

/// The answer to a command: its status, headers (`ETag`, `Location`, the consistency token) and
/// JSON body, kept or fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether this is the kept answer to an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// Runs commands against the log (module docs).
#[derive(Clone)]
pub struct Executor {
    store: Store,
    /// The access lookups' cache, when this executor keeps one.
    access: Option<Arc<AccessCache>>,
    /// Folded states by stream id, each with its version (a `Loaded<A>` behind `Any`).
    pinned: Arc<Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>>,
}

impl Executor {
    /// The executor of the log in `pool`; it spawns the store's committer and notifier tasks on the
    /// current runtime. It reads the access lookups from the database on every request.
    pub fn new(pool: PgPool) -> Self {
        Executor {
            store: Store::new(pool),
            access: None,
            pinned: Arc::default(),
        }
    }

    /// As [`Executor::new`], keeping the access lookups in a cache ([`crate::access`]) whose listener
    /// it spawns.
    pub fn with_access_cache(pool: PgPool) -> Self {
        let access = AccessCache::listening(&pool);
        Executor {
            access: Some(access),
            ..Executor::new(pool)
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The access lookups of user `id`, from the cache when there is one.
    pub async fn access(&self, id: Uuid) -> Result<Option<AccessRecord>, StoreError> {
        Ok(match &self.access {
            Some(cache) => cache.get(self.pool(), id).await?,
            None => AccessRecord::fetch(self.pool(), id).await?,
        })
    }

    /// Folds an aggregate from its latest snapshot and the events after it.
    pub async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, StoreError> {
        self.store.load(id).await
    }

    /// As [`Executor::load`], possibly from a state folded earlier, for a stream the command only
    /// depends on: its write must require the version returned (`WriteSet::require_version`), which
    /// is what makes an outdated state harmless (module docs). Streams of aggregates that keep no
    /// snapshots (users, whose state holds opened personal data) are always read.
    pub async fn load_pinned<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, StoreError> {
        if !A::SNAPSHOTS {
            return self.load(id).await;
        }
        let stream = A::stream_id(id);
        let kept = self.pinned_states().get(&stream).cloned();
        if let Some(loaded) = kept.and_then(|kept| kept.downcast_ref::<Loaded<A>>().cloned()) {
            return Ok(loaded);
        }
        let loaded = self.load::<A>(id).await?;
        if loaded.version == 0 {
            // Nothing to keep of a stream that does not exist (yet).
            return Ok(loaded);
        }
        let mut pinned = self.pinned_states();
        if pinned.len() >= PINNED_CAPACITY {
            pinned.clear();
        }
        pinned.insert(stream, Arc::new(loaded.clone()));
        Ok(loaded)
    }

    fn pinned_states(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Any + Send + Sync>>> {
        self.pinned
            .lock()
            .expect("the pinned states' lock is never poisoned")
    }

    /// Commits `write`, then drops what the caches hold of what it changed; a write that lost the
    /// race for a stream drops that stream's folded state, so the next attempt reads it.
    async fn commit_one(&self, write: WriteSet) -> Result<crate::Appended, StoreError> {
        let stream = write.stream().to_owned();
        let access = write.access_changes();
        let committed = self.store.commit(write).await;
        match &committed {
            Ok(_) => {
                self.pinned_states().remove(&stream);
                if let Some(cache) = &self.access {
                    cache.forget(&access);
                }
            }
            Err(StoreError::Conflict { stream }) => {
                self.pinned_states().remove(stream);
            }
            Err(_) => {}
        }
        committed
    }

    /// The heads of the `streams` that exist, read in one snapshot without folding them.
    pub async fn stream_heads(&self, streams: &[String]) -> Result<Vec<StreamHead>, StoreError> {
        stream_heads(self.store.pool(), streams).await
    }

    /// The key that seals a user stream's personal data (`WriteSet::seal_personal_data`).
    pub async fn personal_key(&self, stream_id: &str) -> Result<PersonalKey, StoreError> {
        self.store.personal_key(stream_id).await
    }

    /// Runs `command` for `caller` until it commits, fails, or has lost [`ATTEMPTS`] races.
    pub async fn run<E, F, Fut>(&self, caller: Caller<'_>, command: F) -> Result<Answer, E>
    where
        E: CommandError,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Outcome, E>>,
    {
        if let Some(kept) = self.kept_answer::<E>(&caller).await? {
            return Ok(kept);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match command().await {
                Ok(outcome) => self.commit(&caller, outcome).await.map_err(E::from),
                Err(error) => Err(error),
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(error) if error.lost_race() && attempt < ATTEMPTS => {
                    // The same idempotency key may just have committed; if so, that is our answer.
                    if let Some(kept) = self.kept_answer::<E>(&caller).await? {
                        return Ok(kept);
                    }
                    tokio::time::sleep(retry_backoff(attempt)).await;
                }
                Err(error) if caller.idempotency.is_some() => {
                    // A concurrent request with the same key may have won the race that made this
                    // one fail (the same name claimed, the resource already deleted): answer as it did.
                    return match self.kept_answer::<E>(&caller).await? {
                        Some(kept) => Ok(kept),
                        None => Err(error),
                    };
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn commit(&self, caller: &Caller<'_>, outcome: Outcome) -> Result<Answer, StoreError> {
        let mut headers = outcome.headers();
        for write in outcome.before {
            self.commit_one(write).await?;
        }
        let position = match outcome.write {
            Some((write, permission)) => {
                let write = match caller.idempotency {
                    Some(idempotency) => write.remember_response(StoredResponse {
                        caller: caller.actor.user_id.to_string(),
                        key: idempotency.key.clone(),
                        request_hash: idempotency.fingerprint.clone(),
                        status: outcome.status as i16,
                        headers: serde_json::to_value(&headers).expect("header pairs serialise"),
                        body: outcome.body.to_string(),
                        permission,
                    }),
                    None => write,
                };
                self.commit_one(write).await?.position
            }
            // Nothing was appended (an update that changed nothing): reading at the log head still
            // guarantees the client sees at least the state it was just shown.
            None => event_log::log_head(self.store.pool()).await?,
        };
        headers.push((CONSISTENCY_TOKEN.to_owned(), position.to_string()));
        Ok(Answer {
            status: outcome.status,
            headers,
            body: outcome.body.to_string(),
            replayed: false,
        })
    }

    /// The kept answer for a repeated idempotency key, or [`Refused::KeyReused`] when the key was used
    /// for another request. A caller who no longer holds the permission the write was made with gets
    /// what a fresh request would get ([`Refused::Denied`]), not the answer.
    async fn kept_answer<E: CommandError>(&self, caller: &Caller<'_>) -> Result<Option<Answer>, E> {
        let Some(idempotency) = caller.idempotency else {
            return Ok(None);
        };
        let kept = sqlx::query_as::<_, KeptAnswer>(
            "SELECT request_hash, status, headers, body, permission, transaction_id, global_position \
             FROM idempotency_keys \
             WHERE caller = $1 AND key = $2 AND created_at > now() - interval '24 hours'",
        )
        .bind(caller.actor.user_id.to_string())
        .bind(&idempotency.key)
        .fetch_optional(self.store.pool())
        .await
        .map_err(StoreError::from)?;
        let Some(kept) = kept else {
            return Ok(None);
        };
        if kept.request_hash != idempotency.fingerprint {
            return Err(Refused::KeyReused.into());
        }
        if let Some(sqlx::types::Json(permission)) = kept.permission {
            caller
                .actor
                .authorize(&permission)
                .map_err(|error| Refused::Denied { permission, error })?;
        }
        let position = LogPosition {
            transaction_id: kept.transaction_id,
            global_position: kept.global_position,
        };
        let mut headers = kept.headers.0;
        headers.push((CONSISTENCY_TOKEN.to_owned(), position.to_string()));
        Ok(Some(Answer {
            status: kept.status as u16,
            headers,
            body: kept.body,
            replayed: true,
        }))
    }
}

/// An answer kept under an idempotency key, with the log position of the write that made it.
#[derive(sqlx::FromRow)]
struct KeptAnswer {
    request_hash: String,
    status: i16,
    headers: sqlx::types::Json<Vec<(String, String)>>,
    body: String,
    /// `None` for answers kept before permissions were recorded with them.
    permission: Option<sqlx::types::Json<Permission>>,
    transaction_id: i64,
    global_position: i64,
}
