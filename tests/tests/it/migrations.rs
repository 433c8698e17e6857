//! Every service applies the migrations when it starts; several starting at once must not trip over
//! each other, and a migration that changes what a read model holds leaves it refilled without a
//! manual step.

use chrono::Utc;
use commands::testing::commit;
use commands::WriteSet;
use domain::organization::OrganizationEvent;
use domain::NewEvent;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use tests::TestDb;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_starting_at_once_migrate_a_fresh_database_once() {
    let db = TestDb::create_empty(4).await.unwrap();
    let starts = (0..6).map(|_| {
        let options = db.connect_options();
        tokio::spawn(async move {
            // Each "service" has its own pool, as separate processes would.
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await?;
            event_log::migrate(&pool).await.map_err(anyhow::Error::from)
        })
    });
    for start in futures::future::join_all(starts).await {
        start.unwrap().unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, event_log::MIGRATOR.iter().count());
    let function_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'append_write')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(function_exists);
}

#[tokio::test]
async fn an_audit_trail_indexed_before_changes_were_stored_is_refilled_by_the_running_projector() {
    let db = TestDb::create_empty(4).await.unwrap();
    // The migrations before 0012, from a copy of their directory.
    let dir = std::env::temp_dir().join(format!("migrations-{}", Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    let all = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/migrations");
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0012" {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    let before = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    before.run(&db.pool).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // An organization created and renamed, indexed as the projection indexed events then.
    let org = Uuid::now_v7();
    let metadata = tests::metadata("someone", Some(org));
    let event = |e: OrganizationEvent| NewEvent::new(&e, metadata.clone(), Utc::now());
    commit(
        &db.pool,
        WriteSet::append(
            &format!("organization-{org}"),
            0,
            vec![
                event(OrganizationEvent::Created {
                    id: org,
                    name: "Acme".into(),
                    description: None,
                }),
                event(OrganizationEvent::Updated {
                    name: Some("Acme Holdings".into()),
                    description: None,
                }),
            ],
        ),
    )
    .await
    .unwrap();
    sqlx::raw_sql(
        "INSERT INTO read_models.audit_index (global_position, organization_id, resource_type, resource_id, actor_id, occurred_at) \
           SELECT global_position, (metadata->>'organizationId')::uuid, 'organization', (data->>'id')::uuid, 'someone', recorded_at FROM events; \
         INSERT INTO read_models.audit_counts (scope, count) SELECT 'all', count(*) FROM events; \
         INSERT INTO projection_checkpoints (name, transaction_id, global_position) \
           SELECT 'audit', max(transaction_id), max(global_position) FROM events;",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    event_log::migrate(&db.pool).await.unwrap();
    let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.audit_index")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(indexed, 0, "the old rows are gone");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The runner reads only what every transaction on the server has moved past, so other tests'
    // writes may leave the newest events for a later batch.
    let mut conn = projector::worker::connect(&db.pool).await.unwrap();
    let mut checkpoint = None;
    let mut applied = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (applied as i64) < logged && std::time::Instant::now() < deadline {
        applied +=
            projector::worker::run_batch(&mut conn, &projector::audit::Audit, &mut checkpoint, 500)
                .await
                .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        applied as i64, logged,
        "the runner starts again from the start of the log"
    );
    let renamed: Value = sqlx::query_scalar(
        "SELECT changes FROM read_models.audit_index WHERE event_type = 'organization.updated'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        renamed,
        json!({ "name": { "from": "Acme", "to": "Acme Holdings" } })
    );
    let counted: i64 =
        sqlx::query_scalar("SELECT count FROM read_models.audit_counts WHERE scope = 'all'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, logged);
}
