//! Turning a request's credentials into an [`Actor`]: a bearer token or a session cookie names a user;
//! the user's System role and memberships come from the access lookups, which every append keeps in
//! its transaction (`commands::lookups`). Both APIs authenticate through here.
//!
//! The first request of a new subject registers the user, and a request whose token reports a changed
//! email or name records the change, both as a command run by the command executor (so a first `GET`
//! to query-api appends `user.registered`); every other request costs one indexed query.

use std::collections::{HashMap, HashSet};

use commands::{Caller, CommandError, Executor, Outcome, Refused, StoreError, WriteSet};
use domain::user::{user_id, Identity, User};
use domain::{Actor, Aggregate, RequestContext, Role};
use sqlx::types::Json;
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

/// A user as the access lookups know it.
#[derive(Clone, sqlx::FromRow)]
struct AccessRow {
    user_id: Uuid,
    subject: String,
    email: Option<String>,
    name: Option<String>,
    system_role: bool,
    memberships: Json<HashMap<Uuid, Role>>,
    session_id: Option<Uuid>,
}

const ACCESS_COLUMNS: &str = "u.user_id, u.subject, u.email, u.name, u.system_role, \
     COALESCE((SELECT jsonb_object_agg(m.organization_id, m.role) FROM access_memberships m \
               WHERE m.user_id = u.user_id), '{}'::jsonb) AS memberships";

impl Authenticator {
    /// An authenticator that reads the access lookups in `pool` and registers new users there.
    pub fn new(config: AuthConfig, pool: PgPool) -> Self {
        Authenticator {
            verifier: TokenVerifier::new(config.token),
            system_admins: config.system_admins,
            executor: Executor::new(pool),
        }
    }

    fn pool(&self) -> &PgPool {
        self.executor.pool()
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
                let row: Option<AccessRow> = sqlx::query_as(&format!(
                    "SELECT {ACCESS_COLUMNS}, s.id AS session_id FROM sessions s \
                     JOIN access_users u ON u.user_id = s.user_id \
                     WHERE s.token_hash = $1 AND s.expires_at > now()"
                ))
                .bind(token_hash(token))
                .fetch_optional(self.pool())
                .await?;
                row.map(|row| self.authenticated(row))
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
        let known = self.lookup(id).await?;
        if let Some(row) = known {
            if !identity.differs_from(row.email.as_deref(), row.name.as_deref()) {
                return Ok(self.authenticated(row));
            }
        }
        self.record(id, &identity, context).await?;
        let row = self.lookup(id).await?;
        row.map(|row| self.authenticated(row))
            .ok_or(AuthError::Store(StoreError::Conflict {
                stream: User::stream_id(id),
            }))
    }

    async fn lookup(&self, id: Uuid) -> Result<Option<AccessRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ACCESS_COLUMNS}, NULL::uuid AS session_id FROM access_users u WHERE u.user_id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
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

    fn authenticated(&self, row: AccessRow) -> Authenticated {
        Authenticated {
            actor: Actor {
                user_id: row.user_id,
                system: row.system_role || self.system_admins.contains(&row.subject),
                memberships: row.memberships.0,
            },
            email: row.email,
            name: row.name,
            session: row.session_id.map(|id| Session {
                id,
                user_id: row.user_id,
            }),
        }
    }
}
