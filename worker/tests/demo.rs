//! `worker demo` on the default configuration (PostgreSQL as broker and database), against a
//! database of its own so it starts from nothing, as on a fresh machine.

use worker::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_every_kind_and_shows_the_failed_job() {
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let name = format!("jfdemo_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pool = sqlx::PgPool::connect(admin)
        .await
        .expect("PostgreSQL on :5432");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();

    let mut cfg = Config::default();
    cfg.database.url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    cfg.worker.sample_interval = std::time::Duration::from_millis(200);
    let out = worker::cmd::demo::run(cfg, &Default::default())
        .await
        .expect("demo succeeds");

    for want in [
        "enqueued 7 jobs on the postgres broker",
        "chunks with embeddings",
        "hourly rollup rows",
        "partitions (default + monthly)",
        "analytics_daily_totals refreshed",
        "permanent:",
    ] {
        assert!(out.contains(want), "demo output lacks {want:?}:\n{out}");
    }
    assert!(!out.contains(" 0 chunks"), "no chunks written:\n{out}");
    // The search step finds the document whose title it asks for.
    let search = out
        .split("worker search \"onboarding guide\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no search step:\n{out}"));
    let first_row = search
        .lines()
        .find(|l| l.contains("Onboarding") || l.contains("Quarterly") || l.contains("Release"));
    assert!(
        first_row.is_some_and(|l| l.contains("Onboarding guide")),
        "search did not rank the onboarding guide first:\n{search}"
    );
    assert!(!out.contains(" 0 hourly rollup rows"), "no rollups:\n{out}");
    // monthly partitions: current month + 3 ahead, plus the default one
    assert!(out.contains("has 5 partitions"), "{out}");

    pool.close().await;
    let pool = sqlx::PgPool::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
