//! Turning a request's credentials into an [`Actor`]: a bearer token or a session cookie names a user;
//! the user's System role and memberships come from the access lookups, which every append keeps in
//! its transaction (`commands::lookups`). Both APIs authenticate through here.
//!
//! The first request of a new subject registers the user, and a request whose token reports a changed
//! email or name records the change, both as a command run by the command executor (so a first `GET`
//! to query-api appends `user.registered`); every other request costs one indexed query, or none when
//! the executor keeps the lookups in its cache (`commands::access`; command-api does).

use std::collections::HashSet;

use commands::access::{AccessRecord, ACCESS_COLUMNS};
use commands::{Caller, CommandError, Executor, Outcome, Refused, StoreError, WriteSet};
use domain::user::{user_id, Identity, User};
use domain::{Actor, Aggregate, LogPosition, RequestContext};
use sqlx::PgPool;
use uuid::Uuid;

use crate::sessions::{token_hash, Session};
use crate::token::{TokenConfig, TokenError, TokenVerifier};

/// How callers are authenticated; the APIs read it from `AUTH_ISSUER`, `AUTH_AUDIENCE`,
/// `AUTH_JWKS_URL` and `SYSTEM_ADMINS` (contract §1, `events/docs/contract.md`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token: TokenConfig,
    /// Subjects that hold the System role.
    pub system_admins: HashSet<String>,
}

pub fn parse_subjects(list: &str) -> HashSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    Bearer(&'a str),
    /// A session cookie's token.
    Session(&'a str),
}

impl<'a> Credentials<'a> {
    /// A bearer token if there is an `Authorization` header, else the session cookie if any. A bearer
    /// token wins: it cannot be sent cross-site without the caller's script, so it needs no CSRF check.
    pub fn from_headers(authorization: Option<&'a str>, cookie: Option<&'a str>) -> Option<Self> {
        if let Some(value) = authorization {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .unwrap_or_default();
            return Some(Credentials::Bearer(token));
        }
        cookie
            .and_then(|header| crate::sessions::cookie(header, crate::sessions::SESSION_COOKIE))
            .map(Credentials::Session)
    }
}

/// An authenticated caller: who it is, what it may do, and how it proved it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub actor: Actor,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The browser session, when the request came with a session cookie (writes then need the CSRF
    /// check).
    pub session: Option<Session>,
    /// The log's head when the caller's access was read from the database, in the same statement:
    /// a read may take it as the moment it began (`None` when it came from a cache).
    pub read_at: Option<LogPosition>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token or session cookie")]
    Missing,
    #[error("empty bearer token")]
    EmptyToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the session has ended or never existed; sign in again")]
    SessionEnded,
    #[error("recording the user")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AuthError {
    fn from(error: sqlx::Error) -> Self {
        AuthError::Store(StoreError::Database(error))
    }
}

impl From<Refused> for AuthError {
    /// Recording a user uses no idempotency key, so the executor never refuses it; if it did, the
    /// request could not be authenticated.
    fn from(refused: Refused) -> Self {
        AuthError::Store(StoreError::Database(sqlx::Error::Protocol(
            refused.to_string(),
        )))
    }
}

impl CommandError for AuthError {
    fn lost_race(&self) -> bool {
        matches!(self, AuthError::Store(StoreError::Conflict { .. }))
    }
}

pub struct Authenticator {
    verifier: TokenVerifier,
    system_admins: HashSet<String>,
    executor: Executor,
}

/// A browser session, with its user as the access lookups know it.
#[derive(sqlx::FromRow)]
struct SessionRow {
    #[sqlx(flatten)]
    user: AccessRecord,
    session_id: Uuid,
}

impl Authenticator {
    /// An authenticator that reads the access lookups in `pool` on every request, and registers new
    /// users there.
    pub fn new(config: AuthConfig, pool: PgPool) -> Self {
        Self::with_executor(config, Executor::new(pool))
    }

    /// An authenticator that reads the access lookups through `executor` (from its cache, if it keeps
    /// one) and registers new users with it.
    pub fn with_executor(config: AuthConfig, executor: Executor) -> Self {
        Authenticator {
            verifier: TokenVerifier::new(config.token),
            system_admins: config.system_admins,
            executor,
        }
    }

    fn pool(&self) -> &PgPool {
        self.executor.pool()
    }

    /// The subjects `SYSTEM_ADMINS` confers the System role on, whatever is recorded.
    pub fn configured_system_admins(&self) -> Vec<String> {
        self.system_admins.iter().cloned().collect()
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub async fn authenticate(
        &self,
        credentials: Option<Credentials<'_>>,
        context: &RequestContext,
    ) -> Result<Authenticated, AuthError> {
        match credentials.ok_or(AuthError::Missing)? {
            Credentials::Bearer("") => Err(AuthError::EmptyToken),
            Credentials::Bearer(token) => {
                let claims = self.verifier.verify(token).await?;
                self.recognise(claims.identity(), context).await
            }
            Credentials::Session(token) => {
                let row: Option<SessionRow> = sqlx::query_as(&format!(
                    "SELECT {ACCESS_COLUMNS}, s.id AS session_id FROM sessions s \
                     JOIN access_users u ON u.user_id = s.user_id \
                     WHERE s.token_hash = $1 AND s.expires_at > now()"
                ))
                .bind(token_hash(token))
                .fetch_optional(self.pool())
                .await?;
                row.map(|row| {
                    let mut authenticated = self.authenticated(row.user);
                    authenticated.session = Some(Session {
                        id: row.session_id,
                        user_id: authenticated.actor.user_id,
                    });
                    authenticated
                })
                .ok_or(AuthError::SessionEnded)
            }
        }
    }

    /// The user the identity provider vouched for, recorded first if new or changed.
    pub async fn recognise(
        &self,
        identity: Identity,
        context: &RequestContext,
    ) -> Result<Authenticated, AuthError> {
        let id = user_id(&identity.subject);
        let known = self.executor.access(id).await?;
        if let Some(row) = known {
            if !identity.differs_from(row.email.as_deref(), row.name.as_deref()) {
                return Ok(self.authenticated(row));
            }
        }
        self.record(id, &identity, context).await?;
        let row = self.executor.access(id).await?;
        row.map(|row| self.authenticated(row))
            .ok_or(AuthError::Store(StoreError::Conflict {
                stream: User::stream_id(id),
            }))
    }

    /// Registers the user, or records the profile claims that changed, sealed under the user's key
    /// (and kept in plaintext in the access lookups), as a command of the user's own: the events carry
    /// no role, and no permission is needed. A concurrent first request of the same subject makes the
    /// executor run it again, and the second run finds nothing left to record.
    async fn record(
        &self,
        id: Uuid,
        identity: &Identity,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let actor = Actor::own_account(id);
        let caller = Caller {
            actor: &actor,
            idempotency: None,
        };
        let metadata = context.metadata(actor.as_own_ref(), None);
        let stream = User::stream_id(id);
        self.executor
            .run(caller, || async {
                let mut user = self.executor.load::<User>(id).await?;
                let expected = user.version;
                let events = user.state.recognise(identity.clone());
                if events.is_empty() {
                    return Ok::<_, AuthError>(Outcome::new(200, (), expected));
                }
                let events = user.record(events, &metadata, chrono::Utc::now());
                let key = self.executor.personal_key(&stream).await?;
                let write = WriteSet::append(&stream, expected, events).seal_personal_data(&key);
                Ok(Outcome::new(200, (), user.version).appending(write, None))
            })
            .await?;
        Ok(())
    }

    fn authenticated(&self, row: AccessRecord) -> Authenticated {
        let read_at = row.read_at();
        Authenticated {
            actor: Actor {
                user_id: row.user_id,
                system: row.system_role || self.system_admins.contains(&row.subject),
                memberships: row.memberships.0,
            },
            email: row.email,
            name: row.name,
            read_at,
            session: None,
        }
    }
}
