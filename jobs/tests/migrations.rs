//! `migrations::MIGRATOR` on an empty database: builds the schema, and a second run is a no-op.

mod common;

use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn migrator_builds_schema_and_is_idempotent() {
    let admin = common::pool().await;
    let db = format!("jobs_mig_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();

    // Concurrent runs are serialised by the migrator's own lock.
    let (a, b) = tokio::join!(
        migrations::MIGRATOR.run(&pool),
        migrations::MIGRATOR.run(&pool)
    );
    a.unwrap();
    b.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, migrations::MIGRATOR.iter().count());
    migrations::MIGRATOR.run(&pool).await.unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, again);

    for rel in [
        "jobfleet.documents",
        "jobfleet.document_chunks",
        "jobfleet.document_embedding_state",
        "jobfleet.analytics_events",
        "jobfleet.analytics_events_default",
        "jobfleet.analytics_rollup_hourly",
        "jobfleet.analytics_rollup_daily",
        "jobfleet.analytics_daily_totals",
    ] {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(rel)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(found.is_some(), "{rel} missing");
    }

    // The default config works against the migrated schema: run each kind once.
    let reg = jobs::registry(pool.clone(), &jobs::JobsConfig::default()).unwrap();
    let run = |kind: &'static str, payload: serde_json::Value| {
        let reg = reg.clone();
        async move {
            let h = &reg.get(kind).unwrap().handler;
            h.validate(&payload).unwrap();
            h.run(&common::ctx(), &payload).await
        }
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobfleet.documents (content) VALUES ('hello world') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    run("embed_document", serde_json::json!({"document_id": id}))
        .await
        .unwrap();
    run(
        "ensure_partitions",
        serde_json::json!({"table": "jobfleet.analytics_events", "months_ahead": 2}),
    )
    .await
    .unwrap();
    run(
        "rollup_analytics",
        serde_json::json!({"granularity": "day", "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}),
    )
    .await
    .unwrap();
    run(
        "refresh_materialized_view",
        serde_json::json!({"view": "jobfleet.analytics_daily_totals"}),
    )
    .await
    .unwrap();

    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[test]
fn registry_has_every_kind_with_its_policy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy(&common::database_url())
            .unwrap();
        let reg = jobs::registry(pool, &jobs::JobsConfig::default()).unwrap();
        let kinds: Vec<&str> = reg.kinds().collect();
        assert_eq!(
            kinds,
            [
                "embed_document",
                "ensure_partitions",
                "noop",
                "refresh_materialized_view",
                "rollup_analytics"
            ]
        );
        assert_eq!(reg.get("embed_document").unwrap().policy.max_attempts, 8);
        assert_eq!(
            reg.get("refresh_materialized_view").unwrap().policy.timeout,
            std::time::Duration::from_secs(360)
        );
        let mut cfg = jobs::JobsConfig::default();
        cfg.embed.chunk_size = 0;
        let err = jobs::registry(
            sqlx::postgres::PgPoolOptions::new()
                .connect_lazy(&common::database_url())
                .unwrap(),
            &cfg,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("jobs.embed.chunk_size"), "{err}");
    });
}

/// The worker does not migrate at start: a job meeting a missing table says which command
/// creates it, and is not retried.
#[tokio::test]
async fn a_job_on_a_database_without_the_schema_names_worker_migrate() {
    let pool = common::pool().await;
    let absent = jobs::testkit::random_schema("jt_absent");
    let cfg = jobs::testkit::config_for_schema(&absent);
    let reg = jobs::registry(pool, &cfg).unwrap();
    let err = reg
        .get("embed_document")
        .unwrap()
        .handler
        .run(&common::ctx(), &serde_json::json!({"document_id": 1}))
        .await
        .unwrap_err();
    match err {
        jobs::JobError::Permanent(m) => {
            assert!(m.contains("does not exist"), "{m}");
            assert!(m.ends_with(jobs::ident::MIGRATE_HINT), "{m}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}
