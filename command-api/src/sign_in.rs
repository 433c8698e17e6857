//! Browser sign-in with the OpenID Connect authorization-code flow (contract §2,
//! `events/docs/contract.md`): `GET /api/auth/login`, `GET /api/auth/callback` and
//! `POST /api/auth/logout`.
//!
//! Login stores a random `state`, `nonce` and PKCE verifier server-side, sets the `state` in a short-lived
//! cookie, and sends the browser to the issuer. The callback accepts the `state` only from the browser
//! that started the sign-in (the cookie must match) and only once (its row is deleted as it is read),
//! exchanges the code with the verifier, checks the ID token's signature, issuer, audience, expiry and
//! `nonce`, records the user and starts a server-side session. Logout deletes the session row, which
//! ends the session wherever the cookie was copied to. The issuer's endpoints come from its discovery
//! document.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use commands::{Caller, Outcome, WriteSet};
use domain::user::{User, UserCommand};
use domain::{Actor, Aggregate, RequestContext};
use http_layer::config::{non_empty, whole_number};
use http_layer::ApiError;
use identity::sessions::{self, random_token, token_hash, SESSION_COOKIE, SIGN_IN_SECONDS};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::extract::{check_same_origin, Context};
use crate::AppState;

/// Binds a sign-in to the browser that started it.
const SIGN_IN_COOKIE: &str = "__Host-sign-in";
const RETURN_TO_MAX: usize = 2_000;

#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// `AUTH_ISSUER`, with its trailing slash.
    pub issuer: String,
    /// `AUTH_CLIENT_ID`; without it browser sign-in is switched off.
    pub client_id: Option<String>,
    /// `AUTH_CLIENT_SECRET`; without it the client is public and PKCE alone protects the code.
    pub client_secret: Option<String>,
    /// `PUBLIC_URL`: the gateway's public base URL, e.g. `https://admin.example.com`.
    pub public_url: String,
    /// `SESSION_TTL_HOURS`: how long a browser session lasts.
    pub session_ttl: chrono::Duration,
    /// `SIGN_IN_ATTEMPTS_PER_IP`: most sign-ins under way from one client address.
    pub max_attempts_per_ip: i64,
    /// `SIGN_IN_ATTEMPTS_MAX`: most sign-ins under way in all.
    pub max_attempts: i64,
}

/// Browser sign-in's settings (contract §1, `events/docs/contract.md`); the issuer is the APIs' own
/// (`AUTH_ISSUER`).
#[derive(clap::Args, Debug, Clone)]
pub struct SignInArgs {
    /// The OAuth client of browser sign-in at the issuer; without it sign-in is switched off.
    #[arg(long, env = "AUTH_CLIENT_ID")]
    pub auth_client_id: Option<String>,
    /// That client's secret; without it the client is public and relies on PKCE alone.
    #[arg(long, env = "AUTH_CLIENT_SECRET", hide_env_values = true)]
    pub auth_client_secret: Option<String>,
    /// The gateway's public base URL: the sign-in callback's, and the origin cookie-authenticated
    /// writes must come from; `http://localhost:8080` when unset.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a browser session lasts, in hours.
    #[arg(long, env = "SESSION_TTL_HOURS", default_value = "12", value_parser = whole_number::<12>)]
    pub session_ttl_hours: u64,
    /// Sign-ins under way from one client address beyond which login answers 429.
    #[arg(
        long,
        env = "SIGN_IN_ATTEMPTS_PER_IP",
        default_value = "20",
        value_parser = whole_number::<20>
    )]
    pub sign_in_attempts_per_ip: u64,
    /// Sign-ins under way in all beyond which login answers 429.
    #[arg(
        long,
        env = "SIGN_IN_ATTEMPTS_MAX",
        default_value = "10000",
        value_parser = whole_number::<10000>
    )]
    pub sign_in_attempts_max: u64,
}

impl SignInArgs {
    /// The gateway's public base URL (`PUBLIC_URL`), without a trailing slash.
    pub fn public_url(&self) -> String {
        non_empty(&self.public_url)
            .unwrap_or("http://localhost:8080")
            .trim_end_matches('/')
            .to_owned()
    }

    pub fn config(&self, issuer: &str) -> SignInConfig {
        SignInConfig {
            issuer: issuer.to_owned(),
            client_id: non_empty(&self.auth_client_id).map(str::to_owned),
            client_secret: non_empty(&self.auth_client_secret).map(str::to_owned),
            public_url: self.public_url(),
            session_ttl: chrono::Duration::hours(self.session_ttl_hours as i64),
            max_attempts_per_ip: self.sign_in_attempts_per_ip as i64,
            max_attempts: self.sign_in_attempts_max as i64,
        }
    }
}

/// The endpoints an issuer's discovery document names.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

pub struct SignIn {
    config: SignInConfig,
    http: reqwest::Client,
    /// Fetched on first use and kept; a failed fetch is retried by the next sign-in.
    discovery: OnceCell<Discovery>,
}

impl SignIn {
    pub fn new(config: SignInConfig) -> Self {
        SignIn {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a default HTTP client builds"),
            discovery: OnceCell::new(),
        }
    }

    /// The origin (scheme, host and port) cookie-authenticated writes must come from.
    pub fn public_origin(&self) -> &str {
        let url = &self.config.public_url;
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        url[after_scheme..]
            .find('/')
            .map_or(url.as_str(), |i| &url[..after_scheme + i])
    }

    fn redirect_uri(&self) -> String {
        format!("{}/api/auth/callback", self.config.public_url)
    }

    fn client_id(&self) -> Result<&str, ApiError> {
        self.config.client_id.as_deref().ok_or_else(|| {
            ApiError::Unavailable("browser sign-in is not configured (AUTH_CLIENT_ID)".into())
        })
    }

    async fn discovery(&self) -> Result<&Discovery, ApiError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}.well-known/openid-configuration", self.config.issuer);
                let document: Discovery = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(unavailable)?
                    .json()
                    .await
                    .map_err(unavailable)?;
                if document.issuer != self.config.issuer {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "the discovery document names issuer {:?}, not AUTH_ISSUER {:?}",
                        document.issuer,
                        self.config.issuer
                    )));
                }
                Ok(document)
            })
            .await
    }
}

fn unavailable(error: reqwest::Error) -> ApiError {
    tracing::error!(%error, "cannot reach the identity provider");
    ApiError::Unavailable("the identity provider could not be reached".into())
}

/// `GET /api/auth/login?returnTo=/path`: sends the browser to the issuer.
pub async fn login(
    State(state): State<AppState>,
    Context(context): Context,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let client_id = sign_in.client_id()?;
    let return_to = match params.get("returnTo") {
        Some(path) => local_path(path)?,
        None => "/".to_owned(),
    };
    let discovery = sign_in.discovery().await?;
    let (sign_in_state, nonce, verifier) = (random_token(), random_token(), random_token());
    let attempt = NewAttempt {
        state_hash: token_hash(&sign_in_state),
        nonce: &nonce,
        code_verifier: &verifier,
        return_to: &return_to,
        client_ip: context.client_ip.as_deref(),
    };
    record_attempt(&state, attempt).await?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut authorize = reqwest::Url::parse(&discovery.authorization_endpoint)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("authorization_endpoint: {e}")))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &sign_in.redirect_uri())
        .append_pair("scope", "openid profile email")
        .append_pair("state", &sign_in_state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(LOCATION, header_value(authorize.as_str())?);
    headers.insert(
        SET_COOKIE,
        cookie(SIGN_IN_COOKIE, &sign_in_state, SIGN_IN_SECONDS)?,
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

struct NewAttempt<'a> {
    state_hash: Vec<u8>,
    nonce: &'a str,
    code_verifier: &'a str,
    return_to: &'a str,
    client_ip: Option<&'a str>,
}

/// Stores a sign-in attempt, unless the live ones (not yet expired) from its client address, or in
/// all, are at their cap: anonymous requests must not fill the table. Expired ones are deleted by
/// the projector's housekeeping.
async fn record_attempt(state: &AppState, attempt: NewAttempt<'_>) -> Result<(), ApiError> {
    let config = &state.sign_in.config;
    let mut tx = state.executor.pool().begin().await?;
    // Serializes sign-in starts, so that concurrent ones cannot all pass on the same count.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SIGN_IN_CAP_LOCK)
        .execute(&mut *tx)
        .await?;
    let (live, from_ip, all_free_in, ip_free_in): (i64, i64, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE client_ip = $2), \
                    ceil(extract(epoch FROM min(created_at) - (now() - make_interval(secs => $1))))::bigint, \
                    ceil(extract(epoch FROM min(created_at) FILTER (WHERE client_ip = $2) \
                                 - (now() - make_interval(secs => $1))))::bigint \
             FROM sign_in_attempts WHERE created_at > now() - make_interval(secs => $1)",
        )
        .bind(SIGN_IN_SECONDS as f64)
        .bind(attempt.client_ip)
        .fetch_one(&mut *tx)
        .await?;
    // Retry once the oldest attempt that counts against the cap has expired.
    let refused = if from_ip >= config.max_attempts_per_ip {
        Some(("from this address", ip_free_in))
    } else if live >= config.max_attempts {
        Some(("in all", all_free_in))
    } else {
        None
    };
    if let Some((scope, free_in)) = refused {
        return Err(ApiError::TooManyRequests {
            details: format!("too many sign-ins under way {scope}; try again later"),
            retry_after_seconds: free_in.unwrap_or(SIGN_IN_SECONDS).max(1) as u64,
        });
    }
    sqlx::query(
        "INSERT INTO sign_in_attempts (state_hash, nonce, code_verifier, return_to, client_ip) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(attempt.state_hash)
    .bind(attempt.nonce)
    .bind(attempt.code_verifier)
    .bind(attempt.return_to)
    .bind(attempt.client_ip)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Key of the advisory lock that serializes sign-in starts.
const SIGN_IN_CAP_LOCK: i64 = 0x5349_474e;

#[derive(sqlx::FromRow)]
struct Attempt {
    nonce: String,
    code_verifier: String,
    return_to: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: String,
}

/// `GET /api/auth/callback?code&state`: finishes the sign-in and starts a session.
pub async fn callback(
    State(state): State<AppState>,
    Context(context): Context,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let client_id = sign_in.client_id()?;
    let refused = |details: &str| ApiError::BadRequest {
        error: "Sign-in refused".into(),
        details: details.to_owned(),
    };
    let sign_in_state = params
        .get("state")
        .ok_or_else(|| refused("state: missing"))?;
    let started_here = headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| sessions::cookie(v, SIGN_IN_COOKIE))
        .any(|value| token_hash(value) == token_hash(sign_in_state));
    if !started_here {
        return Err(refused(
            "state: this sign-in was not started in this browser",
        ));
    }
    // Deleting the attempt as it is read makes the state single-use, even under concurrent callbacks.
    let attempt: Attempt = sqlx::query_as(
        "DELETE FROM sign_in_attempts WHERE state_hash = $1 \
         AND created_at > now() - make_interval(secs => $2) \
         RETURNING nonce, code_verifier, return_to",
    )
    .bind(token_hash(sign_in_state))
    .bind(SIGN_IN_SECONDS as f64)
    .fetch_optional(state.executor.pool())
    .await?
    .ok_or_else(|| refused("state: unknown, expired or already used; sign in again"))?;
    // Everything the answer needs that can fail is built before a session exists, so that a failure
    // cannot leave a session behind that no browser holds.
    let return_to = header_value(&attempt.return_to)?;
    let clear_sign_in = cookie(SIGN_IN_COOKIE, "", 0)?;
    let failed = |details: String| ApiError::Unauthorized(format!("sign-in failed: {details}"));
    if let Some(error) = params.get("error") {
        let description = params.get("error_description").map_or("", String::as_str);
        return Err(failed(format!(
            "the identity provider answered {error}: {description}"
        )));
    }
    let code = params.get("code").ok_or_else(|| refused("code: missing"))?;

    let discovery = sign_in.discovery().await?;
    let redirect_uri = sign_in.redirect_uri();
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", client_id),
        ("code_verifier", attempt.code_verifier.as_str()),
    ];
    if let Some(secret) = &sign_in.config.client_secret {
        form.push(("client_secret", secret));
    }
    let exchanged = sign_in
        .http
        .post(&discovery.token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(unavailable)?;
    if !exchanged.status().is_success() {
        let status = exchanged.status();
        let body: serde_json::Value = exchanged.json().await.unwrap_or_default();
        let reason = body["error"].as_str().unwrap_or("an error");
        return Err(failed(format!(
            "the identity provider refused the authorization code ({status}, {reason})"
        )));
    }
    let tokens: TokenResponse = exchanged
        .json()
        .await
        .map_err(|_| failed("the token endpoint's answer has no id_token".into()))?;
    let claims = state
        .auth
        .verifier()
        .verify_id_token(&tokens.id_token, client_id)
        .await
        .map_err(|e| failed(format!("ID token: {e}")))?;
    if claims.nonce.as_deref() != Some(attempt.nonce.as_str()) {
        return Err(failed(
            "ID token: the nonce is not the one this sign-in sent".into(),
        ));
    }

    let caller = state.auth.recognise(claims.identity(), &context).await?;
    let user_id = caller.actor.user_id;
    let session =
        sessions::create(state.executor.pool(), user_id, sign_in.config.session_ttl).await?;
    record(
        &state,
        user_id,
        UserCommand::SignIn {
            session_id: session.session.id,
        },
        &context,
    )
    .await?;

    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(LOCATION, return_to);
    headers.append(
        SET_COOKIE,
        cookie(
            SESSION_COOKIE,
            &session.token,
            sign_in.config.session_ttl.num_seconds(),
        )?,
    );
    headers.append(SET_COOKIE, clear_sign_in);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /api/auth/logout`: ends the cookie's session everywhere and clears the cookie. Answers
/// `{success: true}` also when there was no session left to end.
pub async fn logout(
    State(state): State<AppState>,
    Context(context): Context,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| sessions::cookie(v, SESSION_COOKIE));
    if let Some(token) = token {
        // Logging a browser out is a write like any other: a page elsewhere must not do it.
        check_same_origin(&headers, state.sign_in.public_origin())?;
        if let Some(session) = sessions::end(state.executor.pool(), token).await? {
            record(
                &state,
                session.user_id,
                UserCommand::SignOut {
                    session_id: session.id,
                },
                &context,
            )
            .await?;
        }
    }
    let mut response = Json(json!({ "success": true })).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(SESSION_COOKIE, "", 0)?);
    Ok(response)
}

/// Appends a sign-in or sign-out to the user's stream, as a command of the user's own: no role, no
/// permission, no idempotency key.
async fn record(
    state: &AppState,
    user_id: Uuid,
    command: UserCommand,
    context: &RequestContext,
) -> Result<(), ApiError> {
    let actor = Actor::own_account(user_id);
    let caller = Caller {
        actor: &actor,
        idempotency: None,
    };
    let metadata = context.metadata(actor.as_own_ref(), None);
    state
        .executor
        .run(caller, || async {
            let mut user = state.executor.load::<User>(user_id).await?;
            let expected = user.version;
            let events = user.state.decide(command.clone())?;
            let events = user.record(events, &metadata, chrono::Utc::now());
            let write = WriteSet::append(&User::stream_id(user_id), expected, events);
            Ok::<_, ApiError>(Outcome::new(200, (), write.version_after()).appending(write, None))
        })
        .await?;
    Ok(())
}

/// A path on this site to return to after sign-in; anything else could send the browser elsewhere.
/// Bytes that may not stand in a `Location` header as they are (non-ASCII, spaces) are percent-encoded,
/// as a browser would send them, so that the path stored is the one the callback can redirect to.
fn local_path(path: &str) -> Result<String, ApiError> {
    let encoded: String = path
        .bytes()
        .map(|b| match b {
            b'!'..=b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let local = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && encoded.len() <= RETURN_TO_MAX;
    if local {
        Ok(encoded)
    } else {
        Err(ApiError::invalid(
            "returnTo",
            "must be a path on this site, such as /organizations",
        ))
    }
}

fn cookie(name: &str, value: &str, max_age_seconds: i64) -> Result<HeaderValue, ApiError> {
    header_value(&format!(
        "{name}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; Secure; SameSite=Lax"
    ))
}

fn header_value(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("header value: {e}")))
}
