//! `refresh_materialized_view` on the real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, ctx};
use jobs::JobError;
use jobs::matview::{RefreshMatview, Refreshed};
use serde_json::json;

#[tokio::test]
async fn refreshes_concurrently_or_plain_as_the_view_allows() {
    let db = TestDb::new("jt_mv").await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg
        .get("refresh_materialized_view")
        .unwrap()
        .handler
        .clone();
    let mv = RefreshMatview::new(db.pool.clone(), &db.cfg.matview).unwrap();

    db.exec(
        "INSERT INTO {s}.analytics_rollup_daily (bucket, name, events, users) \
         VALUES ('2026-11-01+00', 'view', 5, 2), ('2026-11-01+00', 'click', 3, 1)",
    )
    .await;
    let view = db.t("analytics_daily_totals");
    let out = h.run(&ctx(), &json!({ "view": view })).await.unwrap();
    assert!(out.summary.contains("concurrently"), "{out:?}");
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT events FROM {}.analytics_daily_totals",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(total, 8);

    // No unique index: plain. Never populated: plain even with a unique index.
    db.exec(
        "CREATE MATERIALIZED VIEW {s}.\"Plain View\" AS SELECT 1 AS a; \
         CREATE MATERIALIZED VIEW {s}.unpopulated AS SELECT 1 AS a WITH NO DATA; \
         CREATE UNIQUE INDEX ON {s}.unpopulated (a); \
         CREATE MATERIALIZED VIEW {s}.partial_idx AS SELECT 1 AS a; \
         CREATE UNIQUE INDEX ON {s}.partial_idx (a) WHERE a > 0;",
    )
    .await;
    assert_eq!(
        mv.refresh(&db.t("unpopulated")).await.unwrap(),
        Refreshed::Plain
    );
    assert_eq!(
        mv.refresh(&db.t("unpopulated")).await.unwrap(),
        Refreshed::Concurrently
    );
    assert_eq!(
        mv.refresh(&db.t("partial_idx")).await.unwrap(),
        Refreshed::Plain
    );
    // Names with spaces cannot be named through the payload (strict identifier check).
    assert!(matches!(
        mv.refresh(&format!("{}.Plain View", db.schema)).await,
        Err(JobError::Permanent(_))
    ));
    db.cleanup().await;
}

#[tokio::test]
async fn unknown_views_tables_and_injection_are_permanent() {
    let db = TestDb::new("jt_mv").await;
    let mv = RefreshMatview::new(db.pool.clone(), &db.cfg.matview).unwrap();
    for bad in [
        db.t("nope"),
        "no_such_schema_x.v".to_owned(),
        db.t("documents"), // a table, not a materialized view
        format!("{}.analytics_daily_totals; DROP TABLE x", db.schema),
        "a.b.c".into(),
        String::new(),
    ] {
        let e = mv.refresh(&bad).await.unwrap_err();
        assert!(matches!(e, JobError::Permanent(_)), "{bad}: {e}");
    }
    let mut cfg = db.cfg.matview.clone();
    cfg.allowed = vec!["other.view".into()];
    let restricted = RefreshMatview::new(db.pool.clone(), &cfg).unwrap();
    let e = restricted
        .refresh(&db.t("analytics_daily_totals"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("allowed")),
        "{e}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn second_refresh_returns_already_running_and_timeout_applies() {
    let db = TestDb::new("jt_mv").await;
    // A view whose refresh takes ~1.5 s.
    db.exec(
        "CREATE MATERIALIZED VIEW {s}.slow AS SELECT 1 AS a FROM pg_sleep(1.5); \
         CREATE UNIQUE INDEX ON {s}.slow (a);",
    )
    .await;
    let mv = RefreshMatview::new(db.pool.clone(), &db.cfg.matview).unwrap();
    let view = db.t("slow");
    let first = {
        let mv = RefreshMatview::new(db.pool.clone(), &db.cfg.matview).unwrap();
        let view = view.clone();
        tokio::spawn(async move { mv.refresh(&view).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    assert_eq!(mv.refresh(&view).await.unwrap(), Refreshed::AlreadyRunning);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(first.await.unwrap().unwrap(), Refreshed::Concurrently);

    let mut cfg = db.cfg.matview.clone();
    cfg.statement_timeout = Duration::from_millis(300);
    let short = RefreshMatview::new(db.pool.clone(), &cfg).unwrap();
    let e = short.refresh(&view).await.unwrap_err();
    assert!(
        matches!(&e, JobError::Retry(m) if m.contains("statement timeout")),
        "{e}"
    );
    // The lock went with the failed transaction.
    assert_eq!(mv.refresh(&view).await.unwrap(), Refreshed::Concurrently);
    db.cleanup().await;
}
