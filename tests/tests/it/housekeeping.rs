//! Expired sign-in attempts, sessions, idempotency records and old recorded refusals are purged by
//! the projector's housekeeping; anonymous sign-in starts are capped per client address and in all.

use std::time::{Duration, Instant};

use tests::process::Stack;
use tests::{start_issuer, TestDb};

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await
        .expect("counting rows")
}

#[tokio::test]
async fn the_projector_purges_expired_rows_and_keeps_live_ones() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    // Expired (backdated) and live rows of each table.
    for (n, age) in [
        (0, "0"),
        (1, "0"),
        (2, "25 hours"),
        (3, "25 hours"),
        (4, "25 hours"),
    ] {
        sqlx::query(
            "INSERT INTO sign_in_attempts (state_hash, nonce, code_verifier, return_to, created_at) \
             VALUES (decode(md5($1), 'hex'), 'n', 'v', '/', now() - $2::interval)",
        )
        .bind(format!("attempt {n}"))
        .bind(age)
        .execute(&db.pool)
        .await
        .expect("an attempt");
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at) \
             VALUES (gen_random_uuid(), decode(md5($1), 'hex'), gen_random_uuid(), \
                     now() - $2::interval, now() - $2::interval + interval '12 hours')",
        )
        .bind(format!("session {n}"))
        .bind(age)
        .execute(&db.pool)
        .await
        .expect("a session");
        sqlx::query(
            "INSERT INTO idempotency_keys (caller, key, request_hash, status, headers, body, created_at, \
                                           transaction_id, global_position) \
             VALUES ('caller', $1, 'h', 201, '[]', '{}', now() - $2::interval, 1, 1)",
        )
        .bind(format!("key {n}"))
        .bind(age)
        .execute(&db.pool)
        .await
        .expect("an idempotency record");
        sqlx::query(
            "INSERT INTO security_refusals (minute, kind, source, actor_id, count, first_at, last_at, sample) \
             VALUES (date_trunc('minute', now()), 'permission_denied', $1, '', 1, \
                     now() - CASE WHEN $2 = '0' THEN interval '0' ELSE interval '91 days' END, now(), '{}')",
        )
        .bind(format!("10.0.0.{n}"))
        .bind(age)
        .execute(&db.pool)
        .await
        .expect("a recorded refusal");
        // "25 hours" unseen is past the day a stopped instance's heartbeat is kept.
        sqlx::query(
            "INSERT INTO service_instances VALUES (gen_random_uuid(), 'old-service', '1', \
             now() - $1::interval - interval '1 hour', now() - $1::interval)",
        )
        .bind(age)
        .execute(&db.pool)
        .await
        .expect("a heartbeat");
    }

    let mut stack = Stack::new(&db, &issuer);
    stack.set("HOUSEKEEPING_INTERVAL_SECS", "1");
    let _projector = stack.projector().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for table in [
        "sign_in_attempts",
        "sessions",
        "idempotency_keys",
        "security_refusals",
    ] {
        while count(&db, table).await > 2 {
            assert!(Instant::now() < deadline, "{table} was not purged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count(&db, table).await, 2, "{table}: the live rows stay");
    }
    let heartbeats = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM service_instances WHERE service = 'old-service'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    while heartbeats().await > 2 {
        assert!(
            Instant::now() < deadline,
            "stale heartbeats were not purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        heartbeats().await,
        2,
        "the instances seen within a day stay"
    );
}

#[tokio::test]
async fn anonymous_sign_in_starts_are_capped_per_address_and_in_all() {
    let db = TestDb::create().await.expect("a test database");
    let issuer = start_issuer().await;
    let mut stack = Stack::new(&db, &issuer);
    stack.set("SIGN_IN_ATTEMPTS_PER_IP", "3");
    stack.set("SIGN_IN_ATTEMPTS_MAX", "5");
    let api = stack.command_api().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let login = |ip: &str| {
        http.get(format!("{}/api/auth/login", api.url))
            .header("x-real-ip", ip)
            .send()
    };

    for _ in 0..3 {
        assert_eq!(login("10.0.0.1").await.expect("login").status(), 302);
    }
    let refused = login("10.0.0.1").await.expect("login");
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!(
        (1..=600).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let body: serde_json::Value = refused.json().await.expect("a JSON body");
    assert!(
        body["error"].is_string() && body["details"].is_string(),
        "{body}"
    );

    // Other addresses still get in, up to the cap on all live attempts.
    for _ in 0..2 {
        assert_eq!(login("10.0.0.2").await.expect("login").status(), 302);
    }
    assert_eq!(login("10.0.0.3").await.expect("login").status(), 429);
    assert_eq!(count(&db, "sign_in_attempts").await, 5);

    // Attempts that have expired no longer count.
    sqlx::query("UPDATE sign_in_attempts SET created_at = created_at - interval '11 minutes'")
        .execute(&db.pool)
        .await
        .expect("backdating the attempts");
    assert_eq!(login("10.0.0.1").await.expect("login").status(), 302);
}
