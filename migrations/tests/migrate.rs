//! The one migrator against a real PostgreSQL, each test on a database of its own: a fresh
//! database, and one whose queue and scheduler tables were applied by the old per-crate paths.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A new empty database; returns an admin pool (to drop it) and a pool on it.
async fn fresh_db(prefix: &str) -> (PgPool, PgPool, String) {
    let base = std::env::var("JOBFLEET_TEST_PG_SERVER").unwrap_or_else(|_| SERVER.into());
    let admin = PgPool::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{base}/{name}"))
        .await
        .unwrap();
    (admin, pool, name)
}

async fn drop_db(admin: PgPool, pool: PgPool, name: String) {
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

async fn exists(pool: &PgPool, rel: &str) -> bool {
    sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
        .bind(rel)
        .fetch_one(pool)
        .await
        .unwrap()
        .is_some()
}

/// The files as the old code applied them: `PgBroker` and the scheduler each `include_str!`-ed
/// their own.
const OLD_QUEUE_SQL: &str = include_str!("../0001_queue.sql");
const OLD_SCHEDULER_SQL: &str = include_str!("../0090_scheduler.sql");

#[tokio::test]
async fn ensure_applies_everything_once_then_only_checks() {
    let (admin, pool, name) = fresh_db("mig_fresh").await;

    let before = migrations::status(&pool).await.unwrap();
    assert_eq!(before.len(), migrations::MIGRATOR.iter().count());
    assert!(before.iter().all(|m| !m.applied), "{before:?}");
    let versions: Vec<i64> = before.iter().map(|m| m.version).collect();
    assert_eq!(&versions[..4], [0, 1, 2, 90]);
    assert!(versions.contains(&150), "unique jobs: {versions:?}");
    assert!(versions.is_sorted(), "{versions:?}");
    let all = versions.len();

    // Processes starting together: the migrator's lock lets each file run once.
    let (a, b) = tokio::join!(migrations::ensure(&pool), migrations::ensure(&pool));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a == all || b == all,
        "neither saw the pending migrations: {a} {b}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, all as i64);
    assert!(
        migrations::status(&pool)
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    assert_eq!(migrations::ensure(&pool).await.unwrap(), 0);
    for rel in [
        "jobfleet.messages",
        "jobfleet.dead_letters",
        "jobfleet.queue_schema",
        "jobfleet.documents",
        "jobfleet.analytics_events",
        "jobfleet.scheduler_leases",
        "jobfleet.scheduler_ticks",
        "jobfleet.dedup_keys",
    ] {
        assert!(exists(&pool, rel).await, "{rel} missing");
    }

    drop_db(admin, pool, name).await;
}

/// A database the old code set up: `PgBroker` applied `0001_queue.sql` by itself (with its
/// `queue_schema` record) and the scheduler applied `0090_scheduler.sql`, with no sqlx
/// bookkeeping. The one migrator must take it over without losing a row.
#[tokio::test]
async fn ensure_upgrades_a_database_set_up_by_the_old_paths() {
    let (admin, pool, name) = fresh_db("mig_upgrade").await;
    sqlx::raw_sql(OLD_QUEUE_SQL).execute(&pool).await.unwrap();
    sqlx::raw_sql(OLD_SCHEDULER_SQL)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobfleet.messages (queue, body) VALUES ('q', '{}')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobfleet.scheduler_leases (name, holder, expires_at) VALUES ('l', 'h', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        migrations::status(&pool)
            .await
            .unwrap()
            .iter()
            .all(|m| !m.applied)
    );

    assert_eq!(
        migrations::ensure(&pool).await.unwrap(),
        migrations::MIGRATOR.iter().count()
    );

    assert!(
        migrations::status(&pool)
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM jobfleet.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(messages, 1);
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM jobfleet.scheduler_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leases, 1);
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM jobfleet.queue_schema ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [1]);
    assert!(exists(&pool, "jobfleet.documents").await);

    drop_db(admin, pool, name).await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_status_error() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let err = migrations::ensure(&pool).await.unwrap_err();
    assert!(matches!(err, migrations::Error::Status(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot read the migration status"),
        "{err}"
    );
}
