//! The ownership overview over HTTP: every organization with its environments, member counts by role,
//! admins, last activity and this month's spend; every user with their memberships and roles across
//! organizations and their System role; search, paging, and System only.

use reqwest::Method;
use serde_json::{json, Value};
use tests::{send, TestApp};

fn find<'a>(page: &'a Value, id: &str) -> &'a Value {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {page}"))
}

#[tokio::test]
async fn operators_see_who_owns_what_across_organizations() {
    let app = TestApp::spawn().await;
    let acme = app.create_organization("Acme").await;
    let globex = app.create_organization("Globex").await;
    let production = app.create_environment(&acme, "Production").await;
    let staging = app.create_environment(&acme, "Staging").await;
    let ann = app.add_member(&acme, "ann", "admin").await;
    app.add_member(&acme, "bob", "admin").await;
    app.add_member(&acme, "cid", "guest").await;
    app.add_member(&globex, "ann", "user").await;
    let globex_admin = app.add_member(&globex, "dee", "admin").await;

    let (status, page) = app.get("/api/v1/admin/organizations?limit=100").await;
    assert_eq!(status, 200, "{page}");
    let listed = find(&page, &acme);
    assert_eq!(listed["name"], "Acme");
    assert_eq!(
        listed["environments"],
        json!([{"id": production, "name": "Production"}, {"id": staging, "name": "Staging"}])
    );
    // The System user who created it is no member: only memberships count.
    assert_eq!(
        listed["members"],
        json!({"admin": 2, "user": 0, "guest": 1})
    );
    assert_eq!(listed["admins"].as_array().unwrap().len(), 2);
    assert_eq!(listed["admins"][0]["userId"], ann);
    assert_eq!(listed["spentThisMonth"], json!({}));
    // Its last activity is its newest audit row: the last membership added.
    let (_, trail) = app
        .get(&format!("/api/audit-events?organizationId={acme}&limit=1"))
        .await;
    assert_eq!(
        listed["lastActivityAt"], trail["data"][0]["occurredAt"],
        "{trail}"
    );
    assert_eq!(find(&page, &globex)["admins"][0]["userId"], globex_admin);

    let (_, searched) = app.get("/api/v1/admin/organizations?search=glob").await;
    assert_eq!(searched["pagination"]["total"], 1, "{searched}");
    assert_eq!(searched["data"][0]["id"], globex);
    let (_, paged) = app.get("/api/v1/admin/organizations?limit=1&page=2").await;
    assert_eq!(paged["data"][0]["id"], acme, "newest first: {paged}");
    assert_eq!(paged["pagination"]["total"], 2);

    let (status, page) = app.get("/api/v1/admin/users?search=ann").await;
    assert_eq!(status, 200, "{page}");
    let user = find(&page, &ann);
    assert_eq!(user["systemRole"], false);
    assert_eq!(user["systemRoleSource"], Value::Null);
    assert_eq!(user["lastSignInAt"], Value::Null, "signed in by token only");
    assert_eq!(
        user["memberships"],
        json!([
            {"organizationId": acme, "organization": {"name": "Acme"}, "role": "admin"},
            {"organizationId": globex, "organization": {"name": "Globex"}, "role": "user"},
        ])
    );
    let (_, everyone) = app.get("/api/v1/admin/users?limit=100").await;
    let operator = find(&everyone, &app.admin_id);
    assert_eq!(operator["systemRole"], true, "{operator}");
    assert_eq!(
        operator["systemRoleSource"], "configuration",
        "SYSTEM_ADMINS lists it"
    );
    let (status, _) = app
        .put(&format!("/api/users/{ann}/system-role"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, page) = app.get("/api/v1/admin/users?search=ann").await;
    assert_eq!(find(&page, &ann)["systemRoleSource"], "granted");

    for path in ["/api/v1/admin/organizations", "/api/v1/admin/users"] {
        let (status, body) = send(app.as_user("bob", Method::GET, path)).await;
        assert_eq!(
            status, 403,
            "{path}: an organization's admin is no operator: {body}"
        );
        let (status, _) = app.get(&format!("{path}?page=0")).await;
        assert_eq!(status, 400);
    }
}
