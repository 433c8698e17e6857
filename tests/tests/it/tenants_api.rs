//! Organizations and environments through the REST API, as contract §4, §5 and §8
//! (`events/docs/contract.md`) describe them.

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn assert_timestamp(value: &Value) {
    let text = value.as_str().expect("a timestamp string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(text).is_ok()
            && text.ends_with('Z')
            && text.len() == 24,
        "{text}"
    );
}

#[tokio::test]
async fn creating_an_organization_answers_as_the_seed_shows_and_reads_back_at_once() {
    let app = TestApp::spawn().await;
    let response = app
        .admin(Method::POST, "/api/organizations")
        .json(&json!({ "name": "Acme Corp", "description": "Main production organization" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let etag = header(&response, "etag");
    let location = header(&response, "location");
    let token = header(&response, "x-consistency-token");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/organizations/{id}"));
    assert_eq!(etag, "\"1\"");
    assert!(!token.is_empty());
    assert_eq!(created["name"], "Acme Corp");
    assert_eq!(created["description"], "Main production organization");
    assert_timestamp(&created["createdAt"]);
    assert_eq!(created["createdAt"], created["updatedAt"]);
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["id", "name", "description", "createdAt", "updatedAt"]
    );

    let (status, read) = send(
        app.admin(Method::GET, &location)
            .header("x-consistency-token", token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(read, created);
}

#[tokio::test]
async fn updates_are_partial_and_versioned() {
    let app = TestApp::spawn().await;
    let id = app.create_organization("Acme").await;
    let path = format!("/api/organizations/{id}");

    let response = app
        .admin(Method::PUT, &path)
        .json(&json!({ "description": "HQ" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["name"].as_str(), body["description"].as_str()),
        (Some("Acme"), Some("HQ"))
    );
    assert_ne!(body["updatedAt"], body["createdAt"]);

    let (status, body) = app.put(&path, json!({ "name": "Acme Inc" })).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["name"].as_str(), body["description"].as_str()),
        (Some("Acme Inc"), Some("HQ"))
    );

    // Nothing to change: same state, same version, nothing appended.
    let events = app.event_count().await;
    let response = app
        .admin(Method::PUT, &path)
        .json(&json!({ "name": "Acme Inc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), "\"3\"");
    assert!(!header(&response, "x-consistency-token").is_empty());
    assert_eq!(app.event_count().await, events);

    let (_, body) = app.put(&path, json!({ "description": null })).await;
    assert_eq!(body["description"], Value::Null);
    let (_, read) = app.get(&path).await;
    assert_eq!(read["name"], "Acme Inc");
    assert_eq!(read["description"], Value::Null);
}

#[tokio::test]
async fn deleting_answers_success_and_frees_the_name() {
    let app = TestApp::spawn().await;
    let id = app.create_organization("Gone Corp").await;
    let path = format!("/api/organizations/{id}");
    let (status, body) = app.delete(&path).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "success": true, "id": id }));
    for (status, body) in [
        app.get(&path).await,
        app.put(&path, json!({ "name": "x" })).await,
        app.delete(&path).await,
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "Organization not found");
    }
    app.create_organization("gone corp").await;
}

#[tokio::test]
async fn names_are_unique_case_insensitively() {
    let app = TestApp::spawn().await;
    app.create_organization("Acme").await;
    let other = app.create_organization("Globex").await;
    let events = app.event_count().await;

    let (status, body) = app
        .post("/api/organizations", json!({ "name": "  ACME " }))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "Organization name already exists");
    assert!(body["details"].as_str().unwrap().contains("name"), "{body}");
    let (status, _) = app
        .put(
            &format!("/api/organizations/{other}"),
            json!({ "name": "acme" }),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(app.event_count().await, events);

    // A case-only rename of oneself is allowed.
    let (status, body) = app
        .put(
            &format!("/api/organizations/{other}"),
            json!({ "name": "GLOBEX" }),
        )
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("GLOBEX")));

    let org = app.create_organization("Initech").await;
    app.create_environment(&org, "Production").await;
    let (status, _) = app
        .post(
            "/api/environments",
            json!({ "organizationId": org, "name": "production" }),
        )
        .await;
    assert_eq!(status, 409);
    // The same environment name in another organization is fine.
    app.create_environment(&other, "Production").await;
}

#[tokio::test]
async fn lists_paginate_newest_first_with_exact_totals() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(app.create_organization(&format!("Org {n:02}")).await);
    }
    ids.reverse();
    let (status, page) = app.get("/api/organizations").await;
    assert_eq!(status, 200);
    assert_eq!(
        page["pagination"],
        json!({ "page": 1, "limit": 10, "total": 25, "totalPages": 3 })
    );
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[..10]);

    let (_, page) = app.get("/api/organizations?page=3&limit=10").await;
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[20..]);
    let (_, page) = app.get("/api/organizations?page=9&limit=100").await;
    assert_eq!(page["data"], json!([]));
    assert_eq!(page["pagination"]["total"], 25);

    // Totals follow deletes.
    app.delete(&format!("/api/organizations/{}", ids[0])).await;
    let (_, page) = app.get("/api/organizations?limit=5").await;
    assert_eq!(
        page["pagination"],
        json!({ "page": 1, "limit": 5, "total": 24, "totalPages": 5 })
    );

    for bad in [
        "limit=101",
        "limit=0",
        "page=0",
        "page=-2",
        "limit=ten",
        "page=1.5",
    ] {
        let (status, body) = app.get(&format!("/api/organizations?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["details"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn search_is_a_case_insensitive_substring_with_literal_wildcards() {
    let app = TestApp::spawn().await;
    for name in [
        "100% Real",
        "100 Real",
        "a_b",
        "axb",
        r"back\slash",
        "Backslash",
    ] {
        app.create_organization(name).await;
    }
    let names = |body: Value| -> Vec<String> {
        let mut names: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    for (search, expected) in [
        ("%25", vec!["100% Real"]),
        ("_", vec!["a_b"]),
        ("%5C", vec![r"back\slash"]),
        ("REAL", vec!["100 Real", "100% Real"]),
        ("backs", vec!["Backslash"]),
    ] {
        let (status, body) = app
            .get(&format!("/api/organizations?search={search}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["pagination"]["total"], expected.len(), "{search}");
        assert_eq!(names(body), expected, "{search}");
    }
}

#[tokio::test]
async fn environments_belong_to_an_organization_and_carry_its_name() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme Corp").await;
    let (status, env) = app
        .post(
            "/api/environments",
            json!({ "name": "Production", "description": "Live production environment", "organizationId": org }),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    assert_eq!(env["organizationId"], org.as_str());
    assert_eq!(env["organization"], json!({ "name": "Acme Corp" }));
    let env_id = env["id"].as_str().unwrap();
    let (_, read) = app.get(&format!("/api/environments/{env_id}")).await;
    assert_eq!(read, env);

    // A rename of the organization shows in every environment read.
    app.put(
        &format!("/api/organizations/{org}"),
        json!({ "name": "Acme Holdings" }),
    )
    .await;
    let (_, read) = app.get(&format!("/api/environments/{env_id}")).await;
    assert_eq!(read["organization"]["name"], "Acme Holdings");
    let (_, list) = app
        .get(&format!("/api/environments?organizationId={org}"))
        .await;
    assert_eq!(list["data"][0]["organization"]["name"], "Acme Holdings");
    assert_eq!(list["pagination"]["total"], 1);

    let (status, body) = app
        .put(
            &format!("/api/environments/{env_id}"),
            json!({ "name": "Prod", "description": null }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["name"].as_str(), &body["description"]),
        (Some("Prod"), &Value::Null)
    );
    assert_eq!(body["organization"]["name"], "Acme Holdings");
}

#[tokio::test]
async fn environment_lists_need_an_existing_organization_and_filter_by_it() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let globex = app.create_organization("Globex").await;
    for n in 0..12 {
        app.create_environment(&acme, &format!("Env {n}")).await;
    }
    app.create_environment(&globex, "Only one").await;

    let (status, body) = app.get("/api/environments").await;
    assert_eq!(status, 400);
    assert_eq!(body["details"], "organizationId: is required");
    let (status, body) = app.get("/api/environments?organizationId=not-a-uuid").await;
    assert_eq!(status, 400);
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .starts_with("organizationId"),
        "{body}"
    );
    let (status, _) = app
        .get(&format!(
            "/api/environments?organizationId={}",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_eq!(status, 404);

    let (_, page) = app
        .get(&format!(
            "/api/environments?organizationId={acme}&limit=5&page=3"
        ))
        .await;
    assert_eq!(
        page["pagination"],
        json!({ "page": 3, "limit": 5, "total": 12, "totalPages": 3 })
    );
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let (_, page) = app
        .get(&format!(
            "/api/environments?organizationId={globex}&search=ONLY"
        ))
        .await;
    assert_eq!(page["pagination"]["total"], 1);
    assert_eq!(page["data"][0]["name"], "Only one");
}

#[tokio::test]
async fn an_organization_with_environments_cannot_be_deleted_until_they_are_gone() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    let env = app.create_environment(&org, "Production").await;
    let events = app.event_count().await;
    let (status, body) = app.delete(&format!("/api/organizations/{org}")).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["details"],
        format!("still referenced by environments: {env}")
    );
    assert_eq!(app.event_count().await, events);

    let (status, body) = app.delete(&format!("/api/environments/{env}")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({ "success": true, "id": env }))
    );
    let (status, _) = app.get(&format!("/api/environments/{env}")).await;
    assert_eq!(status, 404);
    let (status, _) = app.delete(&format!("/api/organizations/{org}")).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(
            "/api/environments",
            json!({ "organizationId": org, "name": "Late" }),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn two_hundred_rounds_of_create_then_read_never_miss() {
    let app = TestApp::spawn().await;
    let org = app.create_organization("Acme").await;
    for round in 0..200 {
        let id = app.create_environment(&org, &format!("Env {round}")).await;
        let (status, body) = app.get(&format!("/api/environments/{id}")).await;
        assert_eq!(status, 200, "round {round}: {body}");
        let (_, list) = app
            .get(&format!("/api/environments?organizationId={org}&limit=1"))
            .await;
        assert_eq!(list["data"][0]["id"], id.as_str(), "round {round}");
        assert_eq!(list["pagination"]["total"], round + 1, "round {round}");
    }
}
