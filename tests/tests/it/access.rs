//! Roles, memberships and tenant isolation over HTTP: the permission matrix of contract §3 for every
//! endpoint, other tenants' resources answering exactly like missing ones, the last-admin rule, the
//! System role, and memberships taking effect with the write that grants them.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp, SYSTEM_ADMIN};

const ROLES: [&str; 4] = ["system", "admin", "user", "guest"];

/// The subject acting in each role of the matrix (System comes from `SYSTEM_ADMINS`).
fn subject(role: &str) -> &'static str {
    match role {
        "system" => SYSTEM_ADMIN,
        "admin" => "alice",
        "user" => "uma",
        "guest" => "gus",
        _ => unreachable!("the matrix has four roles"),
    }
}

/// What a role gets: a success status, or `403` with the words after "permission to".
#[derive(Clone, Copy)]
enum Expect {
    Ok(u16),
    Forbidden(&'static str),
}

use Expect::{Forbidden, Ok as Allowed};

struct Case {
    method: Method,
    /// `{org}`, `{env}`, `{member}`, `{newcomer}` and `{empty_org}` are filled in per case.
    path: &'static str,
    body: Option<Value>,
    /// For system, admin, user and guest.
    expect: [Expect; 4],
}

fn case(method: Method, path: &'static str, body: Option<Value>, expect: [Expect; 4]) -> Case {
    Case {
        method,
        path,
        body,
        expect,
    }
}

/// Contract §3 (`events/docs/contract.md`), one row per endpoint that exists.
fn matrix() -> Vec<Case> {
    let read = [Allowed(200); 4];
    let rename = Some(json!({ "name": "Renamed {unique}" }));
    vec![
        case(Method::GET, "/api/organizations", None, read),
        case(Method::GET, "/api/organizations/{org}", None, read),
        case(
            Method::POST,
            "/api/organizations",
            Some(json!({ "name": "New {unique}" })),
            [
                Allowed(201),
                Forbidden("create organizations"),
                Forbidden("create organizations"),
                Forbidden("create organizations"),
            ],
        ),
        case(
            Method::PUT,
            "/api/organizations/{org}",
            rename.clone(),
            [
                Allowed(200),
                Allowed(200),
                Forbidden("update organizations"),
                Forbidden("update organizations"),
            ],
        ),
        case(
            Method::DELETE,
            "/api/organizations/{empty_org}",
            None,
            [
                Allowed(200),
                Forbidden("delete organizations"),
                Forbidden("delete organizations"),
                Forbidden("delete organizations"),
            ],
        ),
        case(
            Method::GET,
            "/api/environments?organizationId={org}",
            None,
            read,
        ),
        case(Method::GET, "/api/environments/{env}", None, read),
        case(
            Method::POST,
            "/api/environments",
            Some(json!({ "organizationId": "{org}", "name": "Staging" })),
            [
                Allowed(201),
                Allowed(201),
                Forbidden("create environments"),
                Forbidden("create environments"),
            ],
        ),
        case(
            Method::PUT,
            "/api/environments/{env}",
            rename,
            [
                Allowed(200),
                Allowed(200),
                Forbidden("update environments"),
                Forbidden("update environments"),
            ],
        ),
        case(
            Method::DELETE,
            "/api/environments/{env}",
            None,
            [
                Allowed(200),
                Allowed(200),
                Forbidden("delete environments"),
                Forbidden("delete environments"),
            ],
        ),
        case(Method::GET, "/api/organizations/{org}/members", None, read),
        case(
            Method::GET,
            "/api/organizations/{org}/members/{member}",
            None,
            read,
        ),
        case(
            Method::POST,
            "/api/organizations/{org}/members",
            Some(json!({ "userId": "{newcomer}", "role": "guest" })),
            [
                Allowed(201),
                Allowed(201),
                Forbidden("create members"),
                Forbidden("create members"),
            ],
        ),
        case(
            Method::PUT,
            "/api/organizations/{org}/members/{member}",
            Some(json!({ "role": "guest" })),
            [
                Allowed(200),
                Allowed(200),
                Forbidden("update members"),
                Forbidden("update members"),
            ],
        ),
        case(
            Method::DELETE,
            "/api/organizations/{org}/members/{member}",
            None,
            [
                Allowed(200),
                Allowed(200),
                Forbidden("delete members"),
                Forbidden("delete members"),
            ],
        ),
        case(Method::GET, "/api/roles", None, read),
        case(Method::GET, "/api/auth/session", None, read),
        case(
            Method::GET,
            "/api/users",
            None,
            [
                Allowed(200),
                Forbidden("read users"),
                Forbidden("read users"),
                Forbidden("read users"),
            ],
        ),
        case(
            Method::PUT,
            "/api/users/{member}/system-role",
            None,
            [
                Allowed(200),
                Forbidden("update users"),
                Forbidden("update users"),
                Forbidden("update users"),
            ],
        ),
        case(
            Method::DELETE,
            "/api/users/{member}/system-role",
            None,
            [
                Allowed(200),
                Forbidden("update users"),
                Forbidden("update users"),
                Forbidden("update users"),
            ],
        ),
    ]
}

/// An organization with the matrix's admin, user and guest as members.
async fn organization_with_each_role(app: &TestApp, name: &str) -> String {
    let org = app.create_organization(name).await;
    for role in ["admin", "user", "guest"] {
        app.add_member(&org, subject(role), role).await;
    }
    org
}

/// A fresh organization for one case: an environment, a member in each role, and a member to act on.
async fn fixture(app: &TestApp, n: usize, needs_empty_org: bool) -> HashMap<&'static str, String> {
    let org = organization_with_each_role(app, &format!("Org {n}")).await;
    let member = app.add_member(&org, "tom", "user").await;
    let env = app.create_environment(&org, "Production").await;
    let mut values = HashMap::from([
        ("{org}", org),
        ("{env}", env),
        ("{member}", member),
        ("{newcomer}", app.user_id("nina").await),
        ("{unique}", n.to_string()),
    ]);
    if needs_empty_org {
        let empty = organization_with_each_role(app, &format!("Empty {n}")).await;
        values.insert("{empty_org}", empty);
    }
    values
}

fn fill(template: &str, values: &HashMap<&'static str, String>) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (key, value)| {
            text.replace(key, value)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_role_as_the_matrix_says() {
    let app = TestApp::spawn().await;
    // Requests that change nothing share one fixture; each one that succeeds in changing something
    // gets a fresh one, so that no case depends on another.
    let shared = fixture(&app, 0, true).await;
    let mut n = 0;
    for case in matrix() {
        for (role, expect) in ROLES.iter().zip(case.expect) {
            let changes_state = case.method != Method::GET && matches!(expect, Allowed(_));
            let fresh;
            let values = if changes_state {
                n += 1;
                fresh = fixture(&app, n, case.path.contains("{empty_org}")).await;
                &fresh
            } else {
                &shared
            };
            let path = fill(case.path, values);
            let events = app.event_count().await;
            let mut request = app.as_user(subject(role), case.method.clone(), &path);
            if let Some(body) = &case.body {
                let body: Value = serde_json::from_str(&fill(&body.to_string(), values)).unwrap();
                request = request.json(&body);
            }
            let (status, body) = send(request).await;
            let what = format!("{role}: {} {path}", case.method);
            match expect {
                Allowed(expected) => assert_eq!(status, expected, "{what}: {body}"),
                Forbidden(words) => {
                    assert_eq!(status, 403, "{what}: {body}");
                    assert_eq!(
                        body["error"],
                        format!("Forbidden: You do not have permission to {words}"),
                        "{what}"
                    );
                    assert_eq!(app.event_count().await, events, "{what} appended events");
                }
            }
        }
    }
}

#[tokio::test]
async fn another_tenants_resources_answer_exactly_like_missing_ones_and_never_appear_in_lists() {
    let app = TestApp::spawn().await;
    let own = app.create_organization("Alpha").await;
    app.add_member(&own, "alice", "admin").await;
    let own_env = app.create_environment(&own, "Alpha prod").await;
    let other = app.create_organization("Beta").await;
    let bob = app.add_member(&other, "bob", "admin").await;
    let other_env = app.create_environment(&other, "Beta prod").await;
    let missing = uuid::Uuid::now_v7().to_string();
    let events = app.event_count().await;

    let as_alice = |method: Method, path: &str, body: Value| {
        send(app.as_user("alice", method, path).json(&body))
    };
    // Each probe names another tenant's resource, and the same probe with an id that does not exist.
    let probes: Vec<(Method, String, String, Value)> = vec![
        (
            Method::GET,
            format!("/api/organizations/{other}"),
            format!("/api/organizations/{missing}"),
            json!({}),
        ),
        (
            Method::PUT,
            format!("/api/organizations/{other}"),
            format!("/api/organizations/{missing}"),
            json!({ "name": "Mine" }),
        ),
        (
            Method::DELETE,
            format!("/api/organizations/{other}"),
            format!("/api/organizations/{missing}"),
            json!({}),
        ),
        (
            Method::GET,
            format!("/api/environments/{other_env}"),
            format!("/api/environments/{missing}"),
            json!({}),
        ),
        (
            Method::PUT,
            format!("/api/environments/{other_env}"),
            format!("/api/environments/{missing}"),
            json!({ "name": "Mine" }),
        ),
        (
            Method::DELETE,
            format!("/api/environments/{other_env}"),
            format!("/api/environments/{missing}"),
            json!({}),
        ),
        (
            Method::GET,
            format!("/api/environments?organizationId={other}"),
            format!("/api/environments?organizationId={missing}"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/environments".into(),
            "/api/environments".into(),
            json!({ "organizationId": other, "name": "Mine" }),
        ),
        (
            Method::GET,
            format!("/api/organizations/{other}/members"),
            format!("/api/organizations/{missing}/members"),
            json!({}),
        ),
        (
            Method::GET,
            format!("/api/organizations/{other}/members/{bob}"),
            format!("/api/organizations/{missing}/members/{bob}"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/organizations/{other}/members"),
            format!("/api/organizations/{missing}/members"),
            json!({ "userId": bob, "role": "guest" }),
        ),
        (
            Method::PUT,
            format!("/api/organizations/{other}/members/{bob}"),
            format!("/api/organizations/{missing}/members/{bob}"),
            json!({ "role": "guest" }),
        ),
        (
            Method::DELETE,
            format!("/api/organizations/{other}/members/{bob}"),
            format!("/api/organizations/{missing}/members/{bob}"),
            json!({}),
        ),
    ];
    for (method, path, missing_path, body) in probes {
        let (status, answer) = as_alice(method.clone(), &path, body.clone()).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        let missing_body = if method == Method::POST && path == "/api/environments" {
            json!({ "organizationId": missing, "name": "Mine" })
        } else {
            body
        };
        let (_, for_missing) = as_alice(method.clone(), &missing_path, missing_body).await;
        assert_eq!(
            answer["error"], for_missing["error"],
            "{method} {path} must read like a missing resource"
        );
    }
    assert_eq!(
        app.event_count().await,
        events,
        "refused requests appended events"
    );

    let (_, organizations) = as_alice(Method::GET, "/api/organizations", json!({})).await;
    let ids: Vec<&str> = organizations["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own.as_str()]);
    assert_eq!(organizations["pagination"]["total"], 1);
    let (_, environments) = as_alice(
        Method::GET,
        &format!("/api/environments?organizationId={own}"),
        json!({}),
    )
    .await;
    assert_eq!(environments["data"][0]["id"], own_env);
    assert_eq!(environments["pagination"]["total"], 1);
}

#[tokio::test]
async fn a_caller_without_memberships_sees_empty_lists_and_no_organization() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let (status, body) = send(app.as_user("newbie", Method::GET, "/api/organizations")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["pagination"]["total"], 0);
    let (status, _) =
        send(app.as_user("newbie", Method::GET, &format!("/api/organizations/{org}"))).await;
    assert_eq!(status, 404);
    let (status, body) = send(
        app.as_user("newbie", Method::POST, "/api/organizations")
            .json(&json!({ "name": "Mine" })),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"],
        "Forbidden: You do not have permission to create organizations"
    );
}

#[tokio::test]
async fn the_last_admin_can_be_neither_removed_nor_demoted() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let alice = app.add_member(&org, "alice", "admin").await;
    let members = format!("/api/organizations/{org}/members");
    let events = app.event_count().await;

    for (method, body) in [
        (Method::DELETE, None),
        (Method::PUT, Some(json!({ "role": "user" }))),
    ] {
        let mut request = app.as_user("alice", method.clone(), &format!("{members}/{alice}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = send(request).await;
        assert_eq!(status, 409, "{method}: {body}");
        assert_eq!(
            body["error"],
            "The last admin of an organization cannot be removed or demoted"
        );
    }
    assert_eq!(app.event_count().await, events);

    // With a second admin, the first may step down, and then the second is the last one.
    let bob = app.add_member(&org, "bob", "admin").await;
    let (status, body) = send(
        app.as_user("alice", Method::PUT, &format!("{members}/{alice}"))
            .json(&json!({ "role": "guest" })),
    )
    .await;
    assert_eq!(
        (status, body["role"].clone()),
        (200, json!("guest")),
        "{body}"
    );
    let (status, _) = app.delete(&format!("{members}/{bob}")).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn memberships_take_effect_with_the_write_that_grants_or_revokes_them() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let env_body = json!({ "organizationId": org, "name": "Production" });
    let (status, _) = send(
        app.as_user("carol", Method::POST, "/api/environments")
            .json(&env_body),
    )
    .await;
    assert_eq!(status, 404, "not a member yet");

    let carol = app.add_member(&org, "carol", "admin").await;
    let (status, body) = send(
        app.as_user("carol", Method::POST, "/api/environments")
            .json(&env_body),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    app.add_member(&org, "dan", "admin").await;

    let (status, body) = app
        .put(
            &format!("/api/organizations/{org}/members/{carol}"),
            json!({ "role": "guest" }),
        )
        .await;
    assert_eq!((status, body["role"].clone()), (200, json!("guest")));
    let (status, _) = send(
        app.as_user("carol", Method::POST, "/api/environments")
            .json(&json!({ "organizationId": org, "name": "Staging" })),
    )
    .await;
    assert_eq!(status, 403, "demoted to guest");

    let (status, _) = app
        .delete(&format!("/api/organizations/{org}/members/{carol}"))
        .await;
    assert_eq!(status, 200);
    let (status, _) =
        send(app.as_user("carol", Method::GET, &format!("/api/organizations/{org}"))).await;
    assert_eq!(status, 404, "removed");

    // Every membership event records who acted, in which role, for which organization.
    let actors: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata FROM events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(format!("members-{org}"))
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    for metadata in actors {
        assert_eq!(
            metadata["actor"],
            json!({ "id": app.admin_id, "role": "system" })
        );
        assert_eq!(metadata["organizationId"], json!(org));
    }
}

#[tokio::test]
async fn members_are_added_by_id_or_email_and_listed_with_their_profile() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let dave = app.user_id("dave").await;
    let members = format!("/api/organizations/{org}/members");

    let (status, body) = app
        .post(
            &members,
            json!({ "email": "DAVE@example.test", "role": "user" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["userId"], json!(dave));
    assert_eq!(body["email"], "dave@example.test");
    assert_eq!(body["role"], "user");

    for (body, expected, details) in [
        (
            json!({ "userId": dave, "role": "user" }),
            409,
            "already a member",
        ),
        (
            json!({ "email": "nobody@example.test", "role": "user" }),
            404,
            "has signed in",
        ),
    ] {
        let (status, answer) = app.post(&members, body).await;
        assert_eq!(status, expected, "{answer}");
        assert!(
            answer["details"].as_str().unwrap().contains(details),
            "{answer}"
        );
    }
    for (body, field) in [
        (json!({ "userId": dave, "role": "system" }), "role"),
        (json!({ "userId": dave, "role": "owner" }), "role"),
        (json!({ "userId": "not-a-uuid", "role": "user" }), "userId"),
        (json!({ "role": "user" }), "userId"),
    ] {
        let (status, answer) = app.post(&members, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }

    // An email the provider has not verified is not recorded, so nobody is added by it.
    let mut claims = app.issuer.claims("mallory");
    claims["email"] = json!("victim@example.test");
    claims["email_verified"] = json!(false);
    let token = app.issuer.signing_key().sign(&claims);
    let (status, session) = send(
        app.request(Method::GET, "/api/auth/session")
            .bearer_auth(token),
    )
    .await;
    assert_eq!(
        (status, session["user"]["email"].clone()),
        (200, Value::Null)
    );
    let (status, _) = app
        .post(
            &members,
            json!({ "email": "victim@example.test", "role": "admin" }),
        )
        .await;
    assert_eq!(status, 404);

    let (status, list) = app.get(&format!("{members}?search=DAVE")).await;
    assert_eq!(status, 200);
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["name"], "dave");
    assert_eq!(list["data"][0]["organizationId"], json!(org));

    // A profile change reported by the identity provider reaches the member rows.
    let mut claims = app.issuer.claims("dave");
    claims["name"] = json!("Dave Renamed");
    let token = app.issuer.signing_key().sign(&claims);
    let (status, _) = send(
        app.request(Method::GET, "/api/auth/session")
            .bearer_auth(token),
    )
    .await;
    assert_eq!(status, 200);
    let (_, member) = app.get(&format!("{members}/{dave}")).await;
    assert_eq!(member["name"], "Dave Renamed");
}

#[tokio::test]
async fn an_email_the_token_does_not_say_is_verified_adds_nobody() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let members = format!("/api/organizations/{org}/members");
    // Without `email_verified` the provider vouches for nothing: the email could be anybody's.
    let mut claims = app.issuer.claims("mallory");
    claims["email"] = json!("victim@example.test");
    claims.as_object_mut().unwrap().remove("email_verified");
    let token = app.issuer.signing_key().sign(&claims);
    let (status, session) = send(
        app.request(Method::GET, "/api/auth/session")
            .bearer_auth(token),
    )
    .await;
    assert_eq!(
        (status, session["user"]["email"].clone()),
        (200, Value::Null)
    );
    let (status, body) = app
        .post(
            &members,
            json!({ "email": "victim@example.test", "role": "admin" }),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // The same email, verified, is recorded and adds its user.
    let mut claims = app.issuer.claims("victim");
    claims["email"] = json!("victim@example.test");
    let token = app.issuer.signing_key().sign(&claims);
    let (status, session) = send(
        app.request(Method::GET, "/api/auth/session")
            .bearer_auth(token),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let (status, body) = app
        .post(
            &members,
            json!({ "email": "victim@example.test", "role": "user" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["userId"], session["user"]["id"]);
}

#[tokio::test]
async fn roles_have_stable_ids_and_the_session_lists_memberships() {
    let app = TestApp::spawn().await;
    let (status, first) = send(app.as_user("erin", Method::GET, "/api/roles")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "user", "guest"]);
    assert_eq!(
        first["data"][0]["description"],
        "Organization administrator"
    );
    let other = TestApp::spawn().await;
    let (_, second) = send(other.as_user("frank", Method::GET, "/api/roles")).await;
    assert_eq!(first, second, "role ids are the same on every deployment");

    let org = app.create_organization("Acme").await;
    let erin = app.add_member(&org, "erin", "guest").await;
    let (status, session) = send(app.as_user("erin", Method::GET, "/api/auth/session")).await;
    assert_eq!(status, 200);
    assert_eq!(
        session,
        json!({
            "user": { "id": erin, "email": "erin@example.test", "name": "erin" },
            "systemRole": false,
            "memberships": [{ "organizationId": org, "organizationName": "Acme", "role": "guest" }],
        })
    );
    let (status, body) = send(app.request(Method::GET, "/api/auth/session")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("Unauthorized"))
    );
}

#[tokio::test]
async fn a_system_user_grants_and_revokes_the_system_role() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let grace = app.user_id("grace").await;
    let (status, _) =
        send(app.as_user("grace", Method::GET, &format!("/api/organizations/{org}"))).await;
    assert_eq!(status, 404);

    let (status, body) = app
        .put(&format!("/api/users/{grace}/system-role"), json!({}))
        .await;
    assert_eq!(
        (status, body["systemRole"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, _) =
        send(app.as_user("grace", Method::GET, &format!("/api/organizations/{org}"))).await;
    assert_eq!(status, 200, "System sees every organization");
    let (_, session) = send(app.as_user("grace", Method::GET, "/api/auth/session")).await;
    assert_eq!(session["systemRole"], true);
    // Granted System users may grant in turn, and revoke.
    let heidi = app.user_id("heidi").await;
    let (status, _) = send(app.as_user(
        "grace",
        Method::PUT,
        &format!("/api/users/{heidi}/system-role"),
    ))
    .await;
    assert_eq!(status, 200);
    let (status, body) = send(app.as_user(
        "heidi",
        Method::DELETE,
        &format!("/api/users/{grace}/system-role"),
    ))
    .await;
    assert_eq!((status, body["systemRole"].clone()), (200, json!(false)));
    let (status, _) =
        send(app.as_user("grace", Method::GET, &format!("/api/organizations/{org}"))).await;
    assert_eq!(status, 404);

    let (_, users) = app.get("/api/users?search=grace").await;
    assert_eq!(users["pagination"]["total"], 1);
    assert_eq!(users["data"][0]["systemRole"], false);
    let (status, _) = app
        .put(
            &format!("/api/users/{}/system-role", uuid::Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_admins_removing_each_other_at_once_leave_one_admin() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let org = app.create_organization(&format!("Acme {round}")).await;
        let ann = app.add_member(&org, "ann", "admin").await;
        let ben = app.add_member(&org, "ben", "admin").await;
        let members = format!("/api/organizations/{org}/members");
        let (by_ann, by_ben) = tokio::join!(
            send(app.as_user("ann", Method::DELETE, &format!("{members}/{ben}"))),
            send(app.as_user("ben", Method::DELETE, &format!("{members}/{ann}"))),
        );
        let mut statuses = [by_ann.0, by_ben.0];
        statuses.sort_unstable();
        // The loser either finds the winner's removal done (the last admin stays: 409) or was itself
        // removed before its request was authorised (then the organization is hidden from it: 404).
        assert!(
            statuses == [200, 409] || statuses == [200, 404],
            "round {round}: {by_ann:?} {by_ben:?}"
        );
        let (_, list) = app.get(&members).await;
        let admins = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "admin")
            .count();
        assert_eq!(admins, 1, "round {round}: {list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_of_a_new_user_record_it_once() {
    let app = TestApp::spawn().await;
    let token = app.issuer.token("newcomer");
    let requests = (0..20).map(|_| {
        send(
            app.request(Method::GET, "/api/auth/session")
                .bearer_auth(&token),
        )
    });
    let answers = futures::future::join_all(requests).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["user"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let registered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'user.registered' AND stream_id = 'user-' || $1",
    )
    .bind(ids.iter().next().unwrap())
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(registered, 1);
}
