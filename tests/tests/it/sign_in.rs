//! Browser sign-in against a local OpenID Connect provider speaking the real wire format (discovery,
//! authorize redirect, token endpoint with PKCE, JWKS, signed ID tokens): the whole flow, the session
//! cookie and its CSRF defence, logout ending the session everywhere, and every replay refused.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};
use tests::{send, TestApp};

/// A browser: no automatic redirects, so every hop is asserted; cookies kept by hand.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` and attributes of the `Set-Cookie` header for `name`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, attributes) = v.split_once(';').unwrap_or((v, ""));
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| (value.to_owned(), attributes.to_owned()))
        })
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

fn query(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A sign-in up to the callback: the callback URL the issuer redirected to, and the sign-in cookie.
struct Started {
    callback: String,
    sign_in_cookie: String,
}

async fn start_sign_in(app: &TestApp, user: &str, return_to: &str) -> Started {
    let browser = browser();
    let login = browser
        .get(format!(
            "{}/api/auth/login?returnTo={return_to}",
            app.command_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FOUND);
    let (state, attributes) = set_cookie(&login, "__Host-sign-in").expect("a sign-in cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    let authorize = location(&login);
    assert!(
        authorize.starts_with(&format!("{}authorize?", app.issuer.url)),
        "{authorize}"
    );
    assert_eq!(query(&authorize, "state").as_deref(), Some(state.as_str()));
    assert_eq!(
        query(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query(&authorize, "nonce").is_some());

    // The user signs in at the provider, which sends the browser back with a code.
    let approved = browser
        .get(format!("{authorize}&login_hint={user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), StatusCode::FOUND);
    let callback = location(&approved);
    assert!(callback.starts_with(&format!("{}/api/auth/callback?", app.command_url)));
    Started {
        callback,
        sign_in_cookie: format!("__Host-sign-in={state}"),
    }
}

async fn finish(started: &Started) -> reqwest::Response {
    browser()
        .get(&started.callback)
        .header(COOKIE, &started.sign_in_cookie)
        .send()
        .await
        .unwrap()
}

async fn session_of(app: &TestApp, cookie: &str) -> (u16, Value) {
    send(
        app.request(Method::GET, "/api/auth/session")
            .header(COOKIE, cookie),
    )
    .await
}

#[tokio::test]
async fn a_browser_signs_in_acts_with_its_session_and_signs_out_everywhere() {
    let app = TestApp::spawn().await;
    let started = start_sign_in(&app, "alice", "/organizations").await;
    let signed_in = finish(&started).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "/organizations");
    let (token, attributes) = set_cookie(&signed_in, "__Host-session").expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    let cookie = format!("__Host-session={token}");

    let (status, session) = session_of(&app, &cookie).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user"]["email"], "alice@example.test");
    assert_eq!(session["systemRole"], false);
    assert_eq!(session["memberships"], json!([]));

    // Made an admin, the browser writes with its cookie, but only from the API's own origin.
    let org = app.create_organization("Acme").await;
    app.add_member(&org, "alice", "admin").await;
    let create = |origin: Option<&str>, name: &str| {
        let mut request = app
            .request(Method::POST, "/api/environments")
            .header(COOKIE, &cookie)
            .json(&json!({ "organizationId": org, "name": name }));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        send(request)
    };
    let events = app.event_count().await;
    for origin in [None, Some("https://evil.example"), Some("null")] {
        let (status, body) = create(origin, "Forged").await;
        assert_eq!(status, 403, "{origin:?}: {body}");
        assert_eq!(body["error"], "Forbidden: cross-site request refused");
    }
    assert_eq!(app.event_count().await, events);
    let (status, body) = create(Some(&app.command_url), "Production").await;
    assert_eq!(status, 201, "{body}");
    let (_, session) = session_of(&app, &cookie).await;
    assert_eq!(
        session["memberships"],
        json!([{ "organizationId": org, "organizationName": "Acme", "role": "admin" }])
    );

    // Logging out is a write too; then the cookie is dead wherever it was copied.
    let logout = |origin: Option<&str>| {
        let mut request = app
            .request(Method::POST, "/api/auth/logout")
            .header(COOKIE, &cookie);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(session_of(&app, &cookie).await.0, 200);
    let logged_out = logout(Some(&app.command_url)).await.unwrap();
    assert_eq!(logged_out.status(), StatusCode::OK);
    let (cleared, attributes) = set_cookie(&logged_out, "__Host-session").unwrap();
    assert_eq!(cleared, "");
    assert!(attributes.contains("Max-Age=0"), "{attributes}");
    let (status, body) = session_of(&app, &cookie).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("Unauthorized"))
    );
    assert_eq!(create(Some(&app.command_url), "After").await.0, 401);

    // The log has the user's sign-in and sign-out, and never a session token.
    let user_events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = 'user-' || $1 ORDER BY global_position",
    )
    .bind(session["user"]["id"].as_str().unwrap())
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        user_events,
        ["user.registered", "user.signed_in", "user.signed_out"]
    );
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE data::text LIKE '%' || $1 || '%' OR metadata::text LIKE '%' || $1 || '%'",
    )
    .bind(&token)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // Operators see both among the security events.
    let user_id = session["user"]["id"].as_str().unwrap();
    for kind in ["sign_in", "sign_out"] {
        let (status, page) = app
            .get(&format!(
                "/api/v1/admin/security-events?kind={kind}&actorId={user_id}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["pagination"]["total"], 1, "{kind}: {page}");
        assert_eq!(page["data"][0]["details"]["userId"], user_id);
        assert!(!page.to_string().contains(&token), "{page}");
    }
    // The ownership overview shows when the user last signed in.
    let (status, page) = app.get("/api/v1/admin/users?limit=100").await;
    assert_eq!(status, 200, "{page}");
    let listed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == user_id)
        .unwrap()
        .clone();
    let (_, signed_in) = app
        .get(&format!(
            "/api/v1/admin/security-events?kind=sign_in&actorId={user_id}"
        ))
        .await;
    assert_eq!(
        listed["lastSignInAt"], signed_in["data"][0]["occurredAt"],
        "{listed}"
    );
}

#[tokio::test]
async fn a_replayed_state_is_refused() {
    let app = TestApp::spawn().await;
    let started = start_sign_in(&app, "bob", "/").await;
    assert_eq!(finish(&started).await.status(), StatusCode::SEE_OTHER);
    let replayed = finish(&started).await;
    assert_eq!(replayed.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&replayed, "__Host-session").is_none());
    let body: Value = replayed.json().await.unwrap();
    assert!(
        body["details"].as_str().unwrap().contains("already used"),
        "{body}"
    );
}

#[tokio::test]
async fn a_state_from_another_browser_is_refused() {
    let app = TestApp::spawn().await;
    let started = start_sign_in(&app, "bob", "/").await;
    // The victim's browser never started this sign-in, so it has no matching cookie.
    let forced = browser().get(&started.callback).send().await.unwrap();
    assert_eq!(forced.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&forced, "__Host-session").is_none());
    // The sign-in itself is still usable by the browser that started it.
    assert_eq!(finish(&started).await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_id_token_with_the_wrong_nonce_is_refused() {
    let app = TestApp::spawn().await;
    let started = start_sign_in(&app, "carol", "/").await;
    app.issuer
        .override_next_id_token(json!({ "nonce": "not-the-one-sent" }));
    let refused = finish(&started).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&refused, "__Host-session").is_none());
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["details"].as_str().unwrap().contains("nonce"),
        "{body}"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}

#[tokio::test]
async fn an_id_token_for_another_client_or_from_another_issuer_is_refused() {
    let app = TestApp::spawn().await;
    for claims in [
        json!({ "aud": "some-other-client" }),
        json!({ "iss": "https://evil.example/" }),
        json!({ "exp": chrono::Utc::now().timestamp() - 600 }),
    ] {
        let started = start_sign_in(&app, "dave", "/").await;
        app.issuer.override_next_id_token(claims.clone());
        let refused = finish(&started).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{claims}");
        assert!(set_cookie(&refused, "__Host-session").is_none());
    }
}

#[tokio::test]
async fn a_reused_authorization_code_is_refused() {
    let app = TestApp::spawn().await;
    let first = start_sign_in(&app, "erin", "/").await;
    assert_eq!(finish(&first).await.status(), StatusCode::SEE_OTHER);
    let code = query(&first.callback, "code").unwrap();

    // A fresh, valid sign-in presenting the code already exchanged.
    let second = start_sign_in(&app, "erin", "/").await;
    let state = query(&second.callback, "state").unwrap();
    let reused = Started {
        callback: format!(
            "{}/api/auth/callback?code={code}&state={state}",
            app.command_url
        ),
        sign_in_cookie: second.sign_in_cookie,
    };
    let refused = finish(&reused).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&refused, "__Host-session").is_none());
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("refused the authorization code"),
        "{body}"
    );
}

#[tokio::test]
async fn login_only_returns_to_paths_on_this_site() {
    let app = TestApp::spawn().await;
    for target in [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
    ] {
        let response = browser()
            .get(format!("{}/api/auth/login", app.command_url))
            .query(&[("returnTo", target)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{target}");
    }
}

#[tokio::test]
async fn a_return_path_with_non_ascii_characters_comes_back_percent_encoded() {
    let app = TestApp::spawn().await;
    let started = start_sign_in(&app, "carol", "/organizations/café?tab=über alles").await;
    let signed_in = finish(&started).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&signed_in),
        "/organizations/caf%C3%A9?tab=%C3%BCber%20alles"
    );
    let (token, _) = set_cookie(&signed_in, "__Host-session").expect("a session cookie");
    let (status, session) = session_of(&app, &format!("__Host-session={token}")).await;
    assert_eq!(status, 200, "{session}");
    // The one session is the one the browser holds: none was left behind by a failed answer.
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
}

#[tokio::test]
async fn erasing_a_user_ends_its_browser_sessions() {
    let app = TestApp::spawn().await;
    let signed_in = finish(&start_sign_in(&app, "sam", "/").await).await;
    let (token, _) = set_cookie(&signed_in, "__Host-session").expect("a session cookie");
    let cookie = format!("__Host-session={token}");
    let (status, session) = session_of(&app, &cookie).await;
    assert_eq!(status, 200, "{session}");
    let sam = session["user"]["id"].as_str().unwrap().to_owned();

    assert_eq!(app.delete(&format!("/api/users/{sam}")).await.0, 200);
    let (status, body) = session_of(&app, &cookie).await;
    assert_eq!(status, 401, "the erased user's session still works: {body}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1::uuid")
        .bind(&sam)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the session rows go with the erasure");
}
