//! Bearer tokens (contract §2): every way a token can be wrong is refused with `401` and appends
//! nothing; keys the issuer rotates in are picked up without a restart, and unknown key ids cannot make
//! the API hammer the issuer.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use tests::{fixture_key, send, TestApp};

fn fixture_public_key_pem(n: u8) -> String {
    let path = format!("{}/fixtures/issuer-key-{n}.pem", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(path).unwrap();
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
    rsa::RsaPublicKey::from(&private)
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized_and_append_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let events = app.event_count().await;
    let now = chrono::Utc::now().timestamp();
    // A subject never seen before: a rejected token must not even record the user.
    let claims_of = |sub: &str, edit: &dyn Fn(&mut Value)| {
        let mut claims = app.issuer.claims(sub);
        edit(&mut claims);
        app.issuer.signing_key().sign(&claims)
    };
    let claims = |edit: &dyn Fn(&mut Value)| claims_of("mallory", edit);
    let unpublished_key = fixture_key(2).sign(&app.issuer.claims("mallory"));
    let hs256_with_the_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(app.issuer.signing_key().kid);
        jsonwebtoken::encode(
            &header,
            &app.issuer.claims("mallory"),
            &EncodingKey::from_secret(fixture_public_key_pem(1).as_bytes()),
        )
        .unwrap()
    };
    let valid = app.issuer.token("mallory");
    let (head, payload, signature) = {
        let parts: Vec<&str> = valid.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut tampered_claims: Value =
        serde_json::from_slice(&b64.decode(&payload).unwrap()).unwrap();
    tampered_claims["sub"] = json!("someone-else");
    let tampered = format!(
        "{head}.{}.{signature}",
        b64.encode(tampered_claims.to_string())
    );
    let alg_none = format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));

    let tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not-a-jwt".into())),
        ("expired", Some(claims(&|c| c["exp"] = json!(now - 120)))),
        (
            "not yet valid",
            Some(claims(&|c| c["nbf"] = json!(now + 300))),
        ),
        (
            "wrong issuer",
            Some(claims(&|c| c["iss"] = json!("https://evil.example/"))),
        ),
        (
            "wrong audience",
            Some(claims(&|c| c["aud"] = json!("someone-else"))),
        ),
        ("unknown key", Some(unpublished_key)),
        ("tampered payload", Some(tampered)),
        ("alg none", Some(alg_none)),
        (
            "HS256 signed with the public key",
            Some(hs256_with_the_public_key),
        ),
        ("empty bearer", Some(String::new())),
    ];
    for (what, token) in tokens {
        for (method, path) in [
            (Method::POST, "/api/organizations".to_owned()),
            (Method::GET, "/api/organizations".to_owned()),
            (Method::GET, format!("/api/organizations/{org}")),
            (Method::DELETE, format!("/api/organizations/{org}")),
        ] {
            let mut request = app
                .request(method.clone(), &path)
                .json(&json!({ "name": "Intruder" }));
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let (status, body) = send(request).await;
            assert_eq!(status, 401, "{what}: {method} {path}: {body}");
            assert_eq!(body["error"], "Unauthorized", "{what}");
        }
    }
    assert_eq!(app.event_count().await, events);
    // Tokens within the 60 s leeway still work (and record their user).
    let (status, _) = send(
        app.request(Method::GET, "/api/organizations")
            .bearer_auth(claims_of(tests::SYSTEM_ADMIN, &|c| {
                c["exp"] = json!(now - 30)
            })),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_key_the_issuer_rotates_in_is_accepted_without_a_restart() {
    let app = TestApp::spawn().await;
    let old_token = app.issuer.token("rita");
    let new_key = fixture_key(2);
    let new_token = new_key.sign(&app.issuer.claims("rita"));
    let get = |token: String| {
        send(
            app.request(Method::GET, "/api/organizations")
                .bearer_auth(token),
        )
    };
    assert_eq!(get(old_token.clone()).await.0, 200);
    assert_eq!(get(new_token.clone()).await.0, 401, "not published yet");

    // The issuer rotates: the new key signs, the old one is withdrawn.
    app.issuer.publish(vec![new_key]);
    // Refetches are rate-limited (200 ms in tests): the next unknown key id after that finds the new key.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(new_token).await.0, 200);
    assert_eq!(get(app.issuer.token("rita")).await.0, 200);
    assert_eq!(
        get(old_token).await.0,
        401,
        "the withdrawn key no longer verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_key_ids_fetches_the_keys_at_most_once_per_interval() {
    let app = TestApp::spawn().await;
    let fetched_before = app.issuer.jwks_requests();
    let started = std::time::Instant::now();
    let flood = (0..200).map(|n| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("made-up-{n}"));
        let token = app
            .issuer
            .signing_key()
            .sign_with_header(header, &app.issuer.claims("flooder"));
        send(
            app.request(Method::GET, "/api/organizations")
                .bearer_auth(token),
        )
    });
    for (status, _) in futures::future::join_all(flood).await {
        assert_eq!(status, 401);
    }
    let fetched = app.issuer.jwks_requests() - fetched_before;
    // One fetch per 200 ms interval at most (plus the one that may straddle the boundary).
    let intervals = (started.elapsed().as_millis() / 200) as usize + 2;
    assert!(
        fetched <= intervals,
        "{fetched} key fetches for 200 requests in {:?}",
        started.elapsed()
    );
}
