//! A local OpenID Connect provider speaking the real wire format, as Auth0 does: discovery document,
//! JWKS, RS256 tokens, and the authorization-code flow with PKCE (`/authorize`, `/oauth/token`,
//! `/v2/logout`). Tests verify tokens and drive browser sign-in against it; the local stack runs it as
//! `dev-issuer` so that a newcomer can sign in without an Auth0 tenant.
//!
//! It owns one registered client (by default [`CLIENT_ID`] with [`CLIENT_SECRET`]), the one-time
//! authorization codes it hands out, and the signing keys. There is no password: whoever reaches
//! `/authorize` signs in as the user they name, which is the point of a development provider and the
//! reason it must never stand in for a real one. Any absolute http(s) redirect URI is accepted at
//! `/authorize` (there is no registration step); the token endpoint then insists on the same one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore;
use reqwest::Url;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The client the platform's browser sign-in is registered as, unless told otherwise.
pub const CLIENT_ID: &str = "admin-platform-web";
/// The default client's secret (a confidential client, as the platform's backend is).
pub const CLIENT_SECRET: &str = "local-client-secret";

/// How long an authorization code can be exchanged: short, as the code travels in a URL.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Lifetime of the tokens the token endpoint issues, in seconds.
const TOKEN_LIFETIME_SECONDS: i64 = 3600;

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
        self.sign_with_header(header, claims)
    }

    /// Signs with this key under a header of the caller's choosing (a made-up `kid`, say).
    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        // Claims are plain JSON and the key is a valid RSA key: signing cannot fail.
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with a valid RSA key")
    }
}

/// The registered client: without a secret it is public and only PKCE protects its codes.
#[derive(Clone)]
struct Client {
    id: String,
    secret: Option<String>,
}

/// What `/authorize` promised about a code, checked when the code is exchanged.
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    sub: String,
    email: String,
    name: String,
    created: Instant,
}

/// The provider. Clones share keys, codes and overrides, so a test keeps a clone to steer the one it
/// serves.
#[derive(Clone)]
pub struct Issuer {
    /// The issuer URL, with a trailing slash (as Auth0 writes it).
    pub url: String,
    pub audience: String,
    /// Keys published in the JWKS; the first one signs new tokens.
    keys: Arc<RwLock<Vec<SigningKey>>>,
    client: Client,
    /// Authorization codes not yet presented, by code.
    codes: Arc<Mutex<HashMap<String, PendingCode>>>,
    /// Claims to force into the next ID token (see [`Issuer::override_next_id_token`]).
    id_token_override: Arc<Mutex<Option<Map<String, Value>>>>,
    /// How many times the JWKS was fetched.
    jwks_requests: Arc<AtomicUsize>,
}

impl Issuer {
    pub fn new(url: String, audience: String, key: SigningKey) -> Self {
        Issuer {
            url,
            audience,
            keys: Arc::new(RwLock::new(vec![key])),
            client: Client {
                id: CLIENT_ID.to_owned(),
                secret: Some(CLIENT_SECRET.to_owned()),
            },
            codes: Arc::default(),
            id_token_override: Arc::default(),
            jwks_requests: Arc::default(),
        }
    }

    /// Registers another client instead of the default one; `None` makes it a public client.
    pub fn with_client(mut self, client_id: String, client_secret: Option<String>) -> Self {
        self.client = Client {
            id: client_id,
            secret: client_secret,
        };
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client.id
    }

    pub fn client_secret(&self) -> Option<&str> {
        self.client.secret.as_deref()
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
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "email": format!("{sub}@example.test"),
            // Members are added by email only when the provider vouches for it.
            "email_verified": true,
            "name": sub,
        })
    }

    pub fn token(&self, sub: &str) -> String {
        self.signing_key().sign(&self.claims(sub))
    }

    /// How many times the JWKS has been fetched from this issuer.
    pub fn jwks_requests(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }

    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().expect("issuer keys lock");
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Merges the fields of `claims` (a JSON object) into the claims of the next ID token the token
    /// endpoint issues, overwriting what it would have said; once. Lets tests forge a bad ID token,
    /// e.g. `json!({"nonce": "wrong"})`.
    ///
    /// # Panics
    /// When `claims` is not a JSON object: that is a mistake in the calling test.
    pub fn override_next_id_token(&self, claims: Value) {
        let Value::Object(fields) = claims else {
            panic!("override_next_id_token takes a JSON object, got {claims}");
        };
        *lock(&self.id_token_override) = Some(fields);
    }

    /// Serves discovery, the JWKS, `/authorize`, `/oauth/token` and `/v2/logout`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(issuer): State<Issuer>| async move {
                    issuer.jwks_requests.fetch_add(1, Ordering::SeqCst);
                    Json(issuer.jwks())
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(|State(issuer): State<Issuer>| async move { Json(issuer.discovery()) }),
            )
            .route("/authorize", get(authorize))
            .route("/oauth/token", post(token_endpoint))
            .route("/v2/logout", get(logout))
            .with_state(self.clone())
    }

    fn discovery(&self) -> Value {
        let url = &self.url;
        json!({
            "issuer": url,
            "authorization_endpoint": format!("{url}authorize"),
            "token_endpoint": format!("{url}oauth/token"),
            "end_session_endpoint": format!("{url}v2/logout"),
            "jwks_uri": format!("{url}.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "client_secret_basic", "none"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "email", "name"],
        })
    }

    /// The ID token for a redeemed code, with any pending override applied.
    fn id_token(&self, code: &PendingCode) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": self.url,
            "sub": code.sub,
            "aud": self.client.id,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "email": code.email,
            "email_verified": true,
            "name": code.name,
        });
        if let Some(nonce) = &code.nonce {
            claims["nonce"] = json!(nonce);
        }
        if let (Some(overrides), Value::Object(fields)) =
            (lock(&self.id_token_override).take(), &mut claims)
        {
            fields.extend(overrides);
        }
        self.signing_key().sign(&claims)
    }
}

/// Locks shared state. A panic while holding one of these locks cannot leave the map half-updated
/// (each critical section is a single insert, remove or replace), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// /authorize
// ---------------------------------------------------------------------------------------------

/// The sign-in page's own fields; every other query parameter rides along in hidden inputs.
const SIGN_IN_FIELDS: [&str; 3] = ["login_hint", "email", "name"];

/// `GET /authorize`. Every request error answers 400 instead of redirecting back with `error=`:
/// RFC 6749 §4.1.2.1 forbids redirecting when the client or redirect URI is in doubt, and for the
/// other errors a developer learns more from a page than from a failed callback.
async fn authorize(
    State(issuer): State<Issuer>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Query(pairs)) = query else {
        return Err(OAuthError::invalid_request("malformed query"));
    };
    let mut params: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &pairs {
        if params.insert(name, value).is_some() {
            return Err(OAuthError::invalid_request(&format!(
                "parameter {name} is repeated"
            )));
        }
    }
    let param = |name: &str| params.get(name).copied().filter(|v| !v.is_empty());

    if param("client_id") != Some(issuer.client.id.as_str()) {
        return Err(OAuthError::bad_request(
            "invalid_client",
            "unknown or missing client_id",
        ));
    }
    let redirect_uri =
        param("redirect_uri").ok_or_else(|| OAuthError::invalid_request("missing redirect_uri"))?;
    let redirect = web_url(redirect_uri).ok_or_else(|| {
        OAuthError::invalid_request("redirect_uri is not an absolute http(s) URL without fragment")
    })?;
    if param("response_type") != Some("code") {
        return Err(OAuthError::bad_request(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    if !param("scope").is_some_and(|scope| scope.split(' ').any(|s| s == "openid")) {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "scope must include openid",
        ));
    }
    let code_challenge = param("code_challenge")
        .ok_or_else(|| OAuthError::invalid_request("missing code_challenge (PKCE is required)"))?;
    if !is_pkce_value(code_challenge) {
        return Err(OAuthError::invalid_request(
            "code_challenge is not a PKCE value",
        ));
    }
    if param("code_challenge_method") != Some("S256") {
        return Err(OAuthError::invalid_request(
            "code_challenge_method must be S256",
        ));
    }

    let Some(sub) = param("login_hint") else {
        return Ok(Html(sign_in_page(&pairs)).into_response());
    };
    let code = random_token();
    let pending = PendingCode {
        client_id: issuer.client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        code_challenge: code_challenge.to_owned(),
        nonce: param("nonce").map(str::to_owned),
        sub: sub.to_owned(),
        email: param("email").map_or_else(|| format!("{sub}@example.test"), str::to_owned),
        name: param("name").unwrap_or(sub).to_owned(),
        created: Instant::now(),
    };
    {
        let mut codes = lock(&issuer.codes);
        codes.retain(|_, pending| pending.created.elapsed() < CODE_LIFETIME);
        codes.insert(code.clone(), pending);
    }

    // `Url` appends to a query the redirect URI may already have, and encodes the values.
    let mut location = redirect;
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = param("state") {
        location.query_pairs_mut().append_pair("state", state);
    }
    Ok(found(location.as_str()))
}

/// The sign-in form: it sends the developer back to `/authorize` with the original parameters plus
/// the user they chose.
fn sign_in_page(pairs: &[(String, String)]) -> String {
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let hidden: String = pairs
        .iter()
        .filter(|(name, _)| !SIGN_IN_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                escape_html(name),
                escape_html(value)
            )
        })
        .collect::<Vec<_>>()
        .join("\n      ");
    format!(
        r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Sign in (development issuer)</title>
    <style>
      body {{ font-family: sans-serif; max-width: 28rem; margin: 4rem auto; }}
      label {{ display: block; margin: 0.8rem 0; }}
      input[type=text], input[type=email] {{ width: 100%; padding: 0.3rem; }}
    </style>
  </head>
  <body>
    <h1>Sign in</h1>
    <p>Development issuer: sign in as any user, no password.</p>
    <form method="get" action="authorize">
      <label>User <input type="text" name="login_hint" required autofocus></label>
      <label>Email (optional) <input type="email" name="email" value="{email}"></label>
      <label>Name (optional) <input type="text" name="name" value="{name}"></label>
      {hidden}
      <button type="submit">Sign in</button>
    </form>
  </body>
</html>
"#,
        email = escape_html(value("email")),
        name = escape_html(value("name")),
    )
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A PKCE code verifier or challenge: 43 to 128 unreserved characters (RFC 7636 §4.1, §4.2).
fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// 32 random bytes, base64url: unguessable and safe in a URL.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// /oauth/token
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    code_verifier: Option<String>,
}

/// `POST /oauth/token`: exchanges an authorization code for an access token and an ID token.
async fn token_endpoint(
    State(issuer): State<Issuer>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Form(request)) = form else {
        return Err(OAuthError::invalid_request(
            "expected a form-encoded body without repeated parameters",
        ));
    };
    // A code is spent the first time anyone presents it, so that a leaked or replayed code never
    // works twice, even if the first attempt fails.
    let pending = request
        .code
        .as_deref()
        .and_then(|code| lock(&issuer.codes).remove(code));

    if request.grant_type.as_deref() != Some("authorization_code") {
        return Err(OAuthError::bad_request(
            "unsupported_grant_type",
            "only authorization_code is supported",
        ));
    }
    let client_id = authenticate_client(&issuer.client, &headers, &request)?;
    if request.code.is_none() {
        return Err(OAuthError::invalid_request("missing code"));
    }
    let pending = pending
        .ok_or_else(|| OAuthError::invalid_grant("unknown or already used authorization code"))?;
    if pending.created.elapsed() >= CODE_LIFETIME {
        return Err(OAuthError::invalid_grant(
            "the authorization code has expired",
        ));
    }
    if pending.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client",
        ));
    }
    if request.redirect_uri.as_deref() != Some(pending.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the one sent to /authorize",
        ));
    }
    let verifier = request
        .code_verifier
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_request("missing code_verifier"))?;
    if !is_pkce_value(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 unreserved characters",
        ));
    }
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != pending.code_challenge {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }

    // The access token is for the API, carrying the identity chosen at sign-in (the API records
    // the user's email and name from it).
    let mut access = issuer.claims(&pending.sub);
    access["email"] = json!(pending.email);
    access["name"] = json!(pending.name);
    let body = json!({
        "access_token": issuer.signing_key().sign(&access),
        "id_token": issuer.id_token(&pending),
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECONDS,
        "scope": "openid profile email",
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Authenticates the client by `client_secret_basic` or `client_secret_post`, or as a public client
/// (`none`) when it has no secret; answers the client id.
fn authenticate_client(
    client: &Client,
    headers: &HeaderMap,
    request: &TokenRequest,
) -> Result<String, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            parse_basic(value.as_bytes())
                .ok_or_else(|| OAuthError::invalid_client("malformed Authorization header"))?,
        ),
    };
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if request.client_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
            if request
                .client_id
                .as_ref()
                .is_some_and(|form_id| *form_id != id)
            {
                return Err(OAuthError::invalid_client(
                    "client_id differs from the Authorization header",
                ));
            }
            (id, Some(secret))
        }
        None => match &request.client_id {
            Some(id) => (id.clone(), request.client_secret.clone()),
            None => return Err(OAuthError::invalid_client("missing client authentication")),
        },
    };
    if client_id != client.id {
        return Err(OAuthError::invalid_client("unknown client"));
    }
    // A public client has nothing to prove; PKCE binds its code to the one who asked for it.
    if let Some(expected) = &client.secret {
        if secret.as_deref() != Some(expected.as_str()) {
            return Err(OAuthError::invalid_client("wrong or missing client secret"));
        }
    }
    Ok(client_id)
}

/// Decodes `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let encoded = value.strip_prefix(b"Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(rest.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[2..];
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// An OAuth error response (RFC 6749 §5.2): `{"error", "error_description"}`.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn bad_request(error: &'static str, description: &str) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.to_owned(),
        }
    }

    fn invalid_request(description: &str) -> Self {
        Self::bad_request("invalid_request", description)
    }

    fn invalid_grant(description: &str) -> Self {
        Self::bad_request("invalid_grant", description)
    }

    fn invalid_client(description: &str) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            ..Self::bad_request("invalid_client", description)
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        // Token endpoint answers must not be cached, errors included (RFC 6749 §5.1, §5.2).
        let mut response = (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            Json(body),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: a 401 names the authentication scheme the client should use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"oauth\""),
            );
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// /v2/logout
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct LogoutRequest {
    #[serde(rename = "returnTo")]
    return_to: Option<String>,
    client_id: Option<String>,
}

/// `GET /v2/logout`: the provider keeps no sign-in session, so there is nothing to end; it only
/// sends the browser back where the client asked.
async fn logout(
    State(issuer): State<Issuer>,
    query: Result<Query<LogoutRequest>, QueryRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Query(request)) = query else {
        return Err(OAuthError::invalid_request("malformed query"));
    };
    if request
        .client_id
        .is_some_and(|client_id| client_id != issuer.client.id)
    {
        return Err(OAuthError::bad_request(
            "invalid_client",
            "unknown client_id",
        ));
    }
    let Some(return_to) = request.return_to else {
        return Ok((StatusCode::OK, "signed out\n").into_response());
    };
    let url = web_url(&return_to).ok_or_else(|| {
        OAuthError::invalid_request("returnTo is not an absolute http(s) URL without fragment")
    })?;
    Ok(found(url.as_str()))
}

/// `text` as a URL a browser can be sent to: absolute http(s) with a host. No fragment, as
/// RFC 6749 §3.1.2 says of redirect URIs (the code would be appended after it and lost).
fn web_url(text: &str) -> Option<Url> {
    let url = Url::parse(text).ok()?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.fragment().is_none();
    usable.then_some(url)
}

/// A 302 to `location` (axum's `Redirect` answers 303/307/308; providers answer 302).
fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}
