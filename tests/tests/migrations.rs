//! Every service applies the migrations when it starts; several starting at once must not trip over
//! each other.

use sqlx::postgres::PgPoolOptions;
use tests::TestDb;

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
            events::store::migrate(&pool)
                .await
                .map_err(anyhow::Error::from)
        })
    });
    for start in futures::future::join_all(starts).await {
        start.unwrap().unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, events::store::MIGRATOR.iter().count());
    let function_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'append_write')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(function_exists);
}
