//! The access lookups as authentication reads them ([`AccessRecord`]: a user, its System role and its
//! memberships), and a cache of them ([`AccessCache`]) so that a request of a known user costs no round
//! trip to be authorised.
//!
//! The lookups change only through appends (`crate::lookups`, applied by `apply_lookups`), and every
//! change invalidates the cache twice over:
//! - in this process, at once: the executor drops the users a write's lookups touched as soon as the
//!   write commits, before it answers;
//! - in every process: `apply_lookups` sends `NOTIFY access_changed` with the user's id (or `*` when
//!   an organization is deleted) in the appending transaction, so it is delivered exactly when the
//!   change commits, and each cache's listener drops the user.
//!
//! A cache is used only while its listener is connected: when the connection is lost (and so
//! notifications may have been missed), the cache is emptied, and while it cannot listen it serves
//! nothing. A lookup read from the database is kept only if no invalidation happened while it was
//! being read (the generation below), so a change that commits during a read cannot be overwritten by
//! the older row. Entries also expire after [`TTL`], as a bound on what a silently dead connection
//! could leave behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{LogPosition, Role};
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::lookups::AccessChanges;

/// The channel `apply_lookups` notifies (migration `0016`): a user's id, or `*` for everyone.
pub const ACCESS_CHANNEL: &str = "access_changed";

/// How long an entry is served at most.
pub const TTL: Duration = Duration::from_secs(30);

/// Entries kept at most; the cache starts again empty beyond it.
const CAPACITY: usize = 10_000;

/// A user as the access lookups know it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessRecord {
    pub user_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub system_role: bool,
    pub memberships: Json<HashMap<Uuid, Role>>,
    /// The log's head (transaction id, global position) when the record was read from the database,
    /// in the same statement: every write answered before then is at or below it. `None` for an
    /// empty log, and for a record served from the cache.
    pub log_head: Option<Vec<i64>>,
}

impl AccessRecord {
    /// The log's head when this record was read ([`AccessRecord::log_head`]).
    pub fn read_at(&self) -> Option<LogPosition> {
        match self.log_head.as_deref() {
            Some(&[transaction_id, global_position]) => Some(LogPosition {
                transaction_id,
                global_position,
            }),
            _ => None,
        }
    }
}

/// The columns of an [`AccessRecord`], selected from `access_users u`.
pub const ACCESS_COLUMNS: &str = "u.user_id, u.subject, u.email, u.name, u.system_role, \
     COALESCE((SELECT jsonb_object_agg(m.organization_id, m.role) FROM access_memberships m \
               WHERE m.user_id = u.user_id), '{}'::jsonb) AS memberships, \
     (SELECT ARRAY[h.transaction_id, h.global_position] FROM events h \
      ORDER BY h.transaction_id DESC, h.global_position DESC LIMIT 1) AS log_head";

impl AccessRecord {
    /// The lookups of user `id`, read from the database.
    pub async fn fetch(pool: &PgPool, id: Uuid) -> Result<Option<AccessRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ACCESS_COLUMNS} FROM access_users u WHERE u.user_id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await
    }
}

/// The cache (module docs).
#[derive(Default)]
pub struct AccessCache {
    state: Mutex<State>,
    /// Whether the listener is connected; nothing is served or kept otherwise.
    listening: AtomicBool,
}

#[derive(Default)]
struct State {
    entries: HashMap<Uuid, (AccessRecord, Instant)>,
    /// Counts invalidations: a row read before one must not be kept.
    generation: u64,
}

impl AccessCache {
    /// A cache kept current by a listener on `pool`, spawned on the current runtime.
    pub fn listening(pool: &PgPool) -> Arc<AccessCache> {
        let cache = Arc::new(AccessCache::default());
        tokio::spawn(listen(pool.clone(), Arc::downgrade(&cache)));
        cache
    }

    /// The lookups of user `id`: from the cache, or read and kept.
    pub async fn get(&self, pool: &PgPool, id: Uuid) -> Result<Option<AccessRecord>, sqlx::Error> {
        let generation = {
            let state = self
                .state
                .lock()
                .expect("the access cache's lock is never poisoned");
            if self.listening.load(Ordering::Acquire) {
                if let Some((record, at)) = state.entries.get(&id) {
                    if at.elapsed() < TTL {
                        return Ok(Some(record.clone()));
                    }
                }
            }
            state.generation
        };
        let record = AccessRecord::fetch(pool, id).await?;
        if let Some(record) = &record {
            let mut state = self
                .state
                .lock()
                .expect("the access cache's lock is never poisoned");
            if state.generation == generation && self.listening.load(Ordering::Acquire) {
                if state.entries.len() >= CAPACITY {
                    state.entries.clear();
                }
                let kept = AccessRecord {
                    log_head: None,
                    ..record.clone()
                };
                state.entries.insert(id, (kept, Instant::now()));
            }
        }
        Ok(record)
    }

    /// Drops what a committed write changed.
    pub fn forget(&self, changes: &AccessChanges) {
        match changes {
            AccessChanges::None => {}
            AccessChanges::Users(users) => self.invalidate(users),
            AccessChanges::Everyone => self.clear(),
        }
    }

    /// Drops what is kept of `users`.
    fn invalidate(&self, users: &[Uuid]) {
        let mut state = self
            .state
            .lock()
            .expect("the access cache's lock is never poisoned");
        state.generation += 1;
        for user in users {
            state.entries.remove(user);
        }
    }

    /// Drops everything kept.
    pub fn clear(&self) {
        let mut state = self
            .state
            .lock()
            .expect("the access cache's lock is never poisoned");
        state.generation += 1;
        state.entries.clear();
    }

    fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
        self.clear();
    }

    fn notified(&self, payload: &str) {
        match payload.parse::<Uuid>() {
            Ok(user) => self.invalidate(&[user]),
            Err(_) => self.clear(),
        }
    }
}

/// Listens on [`ACCESS_CHANNEL`] for as long as the cache lives, reconnecting after a second when
/// the connection cannot be made or kept.
async fn listen(pool: PgPool, cache: std::sync::Weak<AccessCache>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(ACCESS_CHANNEL).await {
                Ok(()) => {
                    let Some(live) = cache.upgrade() else { return };
                    live.set_listening(true);
                    drop(live);
                    loop {
                        let received = listener.try_recv().await;
                        let Some(live) = cache.upgrade() else { return };
                        match received {
                            Ok(Some(notification)) => live.notified(notification.payload()),
                            // The connection was lost and made again: what was sent meanwhile is lost.
                            Ok(None) => live.clear(),
                            Err(error) => {
                                tracing::warn!(%error, "the access cache stopped listening");
                                live.set_listening(false);
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "the access cache could not listen"),
            },
            Err(error) => tracing::warn!(%error, "the access cache could not connect"),
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
