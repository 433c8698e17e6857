//! Right to erasure (`DELETE /api/users/{id}`): a user's email, name and token subject are sealed in
//! the log under a key of the user's own, and erasing the user destroys it. Afterwards nothing in the
//! database shows them (reads, point-in-time reads, the audit trail, rebuilt and replayed read models,
//! lookups, kept responses), the log's hash chain still verifies, memberships are gone, and the
//! last-admin rule still holds. A later request of the same subject registers a new user.

use chrono::{DateTime, SecondsFormat, Utc};
use projector::rebuild::rebuild;
use projector::replay::replay;
use projector::scratch::Until;
use projector::verify::{verify, verify_log};
use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

const ERASED: &str = "[erased]";

/// How many rows of any table in the database (the log included) mention `needle` anywhere.
async fn rows_mentioning(app: &TestApp, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t WHERE strpos(t::text, $1) > 0"
        ))
        .bind(needle)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if count > 0 {
            found.push(format!("{table}: {count}"));
        }
    }
    found
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A token for `sub` whose name claim is `name`.
fn token_named(app: &TestApp, sub: &str, name: &str) -> String {
    let mut claims = app.issuer.claims(sub);
    claims["name"] = json!(name);
    app.issuer.signing_key().sign(&claims)
}

async fn members_of(app: &TestApp, org: &str) -> Vec<String> {
    let (status, body) = app
        .get(&format!("/api/organizations/{org}/members?limit=100"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_erased_users_personal_data_is_unreadable_everywhere_and_the_log_still_verifies() {
    let app = TestApp::spawn().await;
    let sub = "erin-7f3a";
    let email = format!("{sub}@example.test");
    let renamed = "Erin Quill-Sanderson";
    let acme = app.create_organization("Acme").await;
    let globex = app.create_organization("Globex").await;
    let erin = app.add_member(&acme, sub, "user").await;
    app.add_member(&globex, sub, "admin").await;
    app.add_member(&globex, "bob", "admin").await;
    // A profile change, and a write of the user's own, kept under an idempotency key.
    let (status, _) = send(
        app.request(Method::GET, "/api/auth/session")
            .bearer_auth(token_named(&app, sub, renamed)),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = send(
        app.admin(Method::PUT, &format!("/api/users/{erin}/system-role"))
            .header("idempotency-key", "grant-erin"),
    )
    .await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some(renamed)),
        "{body}"
    );

    // At rest, the log holds the personal data sealed only.
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT data::text FROM events WHERE stream_id = $1")
            .bind(format!("user-{erin}"))
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(logged.len() >= 2);
    for data in &logged {
        assert!(
            !data.contains(sub) && !data.contains(renamed),
            "plaintext in the log: {data}"
        );
    }
    let (_, user) = app.get(&format!("/api/users/{erin}")).await;
    assert_eq!(
        (user["email"].as_str(), user["name"].as_str()),
        (Some(email.as_str()), Some(renamed))
    );
    let before = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let (status, body) = app.delete(&format!("/api/users/{erin}")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({ "success": true, "id": erin }))
    );

    // Current reads: gone.
    assert_eq!(app.get(&format!("/api/users/{erin}")).await.0, 404);
    let (_, users) = app.get("/api/users?limit=100").await;
    assert!(!users.to_string().contains(&erin), "{users}");
    assert!(!members_of(&app, &acme).await.contains(&erin));
    assert!(!members_of(&app, &globex).await.contains(&erin));

    // Point-in-time reads before the erasure show that values were there, not what they were.
    let (status, then) = app
        .get(&format!("/api/users/{erin}?asOf={}", stamp(before)))
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(
        (then["email"].as_str(), then["name"].as_str()),
        (Some(ERASED), Some(ERASED))
    );
    let (status, member_then) = app
        .get(&format!(
            "/api/organizations/{acme}/members/{erin}?asOf={}",
            stamp(before)
        ))
        .await;
    assert_eq!(
        (status, member_then["email"].as_str()),
        (200, Some(ERASED)),
        "{member_then}"
    );
    let (status, now) = app
        .get(&format!("/api/users/{erin}?asOf={}", stamp(Utc::now())))
        .await;
    assert_eq!(status, 410, "{now}");

    // The audit trail shows each change happened, with the values erased.
    let (status, audit) = app
        .get(&format!(
            "/api/audit-events?resourceType=user&resourceId={erin}&limit=100"
        ))
        .await;
    assert_eq!(status, 200, "{audit}");
    let types: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"user.erased"), "{types:?}");
    let registered = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["type"] == "user.registered")
        .expect("the registration is audited");
    assert_eq!(registered["changes"]["email"]["to"], ERASED, "{registered}");
    let profile = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["type"] == "user.profile_updated")
        .expect("the profile change is audited");
    assert_eq!(profile["changes"]["name"]["to"], ERASED, "{profile}");

    // Nothing in the database mentions the email, the name or the subject any more, the audit trail's
    // stored rows included.
    for needle in [email.as_str(), renamed, sub] {
        let found = rows_mentioning(&app, needle).await;
        assert!(found.is_empty(), "{needle:?} is still in {found:?}");
    }

    // The live read models, audit rows rewritten at the erasure included, are what the log gives.
    for projection in projector::projections() {
        let report = verify(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
        assert!(report.matches(), "{}", projection.name());
    }

    // Read models rebuilt from the log, and a replay to before the erasure, hold none of it either.
    for projection in projector::projections() {
        rebuild(&app.db.pool, projection.as_ref(), |_| {})
            .await
            .unwrap();
    }
    replay(&app.db.pool, Until::Time(before), "before_erasure", |_| {})
        .await
        .unwrap();
    let replayed: (String, String) =
        sqlx::query_as("SELECT email, name FROM before_erasure.users WHERE id = $1::uuid")
            .bind(&erin)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(replayed, (ERASED.to_owned(), ERASED.to_owned()));

    for needle in [email.as_str(), renamed, sub] {
        let found = rows_mentioning(&app, needle).await;
        assert!(found.is_empty(), "{needle:?} is still in {found:?}");
    }
    // The log was only appended to: the chain verifies.
    let report = verify_log(&app.db.pool, |_, _| {}).await.unwrap();
    assert_eq!(report.first_problem, None);

    // The same subject signing in again is a new user, with none of the old memberships.
    let (status, session) = send(app.as_user(sub, Method::GET, "/api/auth/session")).await;
    assert_eq!(
        (status, session["user"]["id"].as_str()),
        (200, Some(erin.as_str()))
    );
    let (_, again) = app.get(&format!("/api/users/{erin}")).await;
    assert_eq!(
        (again["email"].as_str(), again["systemRole"].as_bool()),
        (Some(email.as_str()), Some(false))
    );
    assert!(!members_of(&app, &acme).await.contains(&erin));
    let (status, _) =
        send(app.as_user(sub, Method::GET, &format!("/api/organizations/{acme}"))).await;
    assert_eq!(status, 404);
    let (_, then) = app
        .get(&format!("/api/users/{erin}?asOf={}", stamp(before)))
        .await;
    assert_eq!(then["email"], ERASED, "the old values stay erased: {then}");
}

#[tokio::test]
async fn the_last_admin_of_an_organization_cannot_be_erased_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let solo = app.create_organization("Solo").await;
    let dana = app.add_member(&acme, "dana", "user").await;
    app.add_member(&solo, "dana", "admin").await;
    let events = app.event_count().await;

    let (status, body) = app.delete(&format!("/api/users/{dana}")).await;
    assert_eq!(status, 409, "{body}");
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains(&solo) && details.contains("last admin"),
        "{body}"
    );
    assert_eq!(app.event_count().await, events, "nothing was appended");
    assert!(members_of(&app, &acme).await.contains(&dana));
    assert_eq!(
        app.get(&format!("/api/users/{dana}")).await.1["email"],
        "dana@example.test"
    );

    // Once another admin exists, the erasure goes through.
    app.add_member(&solo, "eve", "admin").await;
    assert_eq!(app.delete(&format!("/api/users/{dana}")).await.0, 200);
    assert!(!members_of(&app, &solo).await.contains(&dana));
}

#[tokio::test]
async fn only_system_users_erase_and_bad_targets_are_refused() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    app.add_member(&acme, "ada", "admin").await;
    let victim = app.add_member(&acme, "victor", "user").await;
    let path = format!("/api/users/{victim}");

    let (status, body) = send(app.as_user("ada", Method::DELETE, &path)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(send(app.request(Method::DELETE, &path)).await.0, 401);
    let (status, body) = app.delete("/api/users/not-a-uuid").await;
    assert_eq!((status, body["error"].is_string()), (400, true), "{body}");
    let (status, body) = app
        .delete(&format!("/api/users/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404, "{body}");
    // A stale If-Match pins the user's version.
    let (status, _) = send(
        app.admin(Method::DELETE, &path)
            .header("if-match", "\"999\""),
    )
    .await;
    assert_eq!(status, 412);
    assert!(members_of(&app, &acme).await.contains(&victim));

    // The right one pins the user only, whatever the memberships' versions.
    let version: i64 = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
        .bind(format!("user-{victim}"))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let if_match = format!("\"{version}\"");
    let (status, body) = send(
        app.admin(Method::DELETE, &path)
            .header("if-match", if_match),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Erasing again: there is no such user any more.
    assert_eq!(app.delete(&path).await.0, 404);
}

#[tokio::test]
async fn a_membership_added_while_the_user_is_erased_does_not_survive_the_erasure() {
    let app = TestApp::spawn().await;
    let mut orgs = Vec::new();
    for n in 0..4 {
        orgs.push(app.create_organization(&format!("Org {n}")).await);
    }
    for round in 0..8 {
        let sub = format!("racer-{round}");
        let user = app.add_member(&orgs[0], &sub, "user").await;
        let adds = orgs[1..].iter().map(|org| {
            send(
                app.admin(Method::POST, &format!("/api/organizations/{org}/members"))
                    .json(&json!({ "userId": user, "role": "user" })),
            )
        });
        let path = format!("/api/users/{user}");
        let erase = app.delete(&path);
        let (added, (erased, body)) = tokio::join!(futures::future::join_all(adds), erase);
        assert_eq!(erased, 200, "{body}");
        for (status, body) in added {
            assert!(status == 201 || status == 404, "{status} {body}");
        }
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM access_memberships WHERE user_id = $1::uuid")
                .bind(&user)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(left, 0, "round {round}: a membership outlived the erasure");
        for org in &orgs {
            assert!(
                !members_of(&app, org).await.contains(&user),
                "round {round}: still listed in {org}"
            );
        }
    }
}

#[tokio::test]
async fn responses_kept_for_retries_do_not_outlive_an_erasure() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let user = app.user_id("gwen").await;
    // The admin adds gwen by email: the kept response shows gwen's email.
    let (status, body) = send(
        app.admin(Method::POST, &format!("/api/organizations/{acme}/members"))
            .header("idempotency-key", "add-gwen")
            .json(&json!({ "email": "gwen@example.test", "role": "user" })),
    )
    .await;
    assert_eq!(
        (status, body["email"].as_str()),
        (201, Some("gwen@example.test")),
        "{body}"
    );
    assert_eq!(app.delete(&format!("/api/users/{user}")).await.0, 200);
    let kept: Vec<Value> = sqlx::query_scalar("SELECT to_jsonb(k) FROM idempotency_keys k")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert!(
        !Value::Array(kept.clone())
            .to_string()
            .contains("gwen@example.test"),
        "{kept:?}"
    );
}
