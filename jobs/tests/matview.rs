//! `refresh_materialized_view` on the real PostgreSQL.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{TestDb, ctx};
use jobs::JobError;
use jobs::matview::{RefreshMatview, Refreshed};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

/// The process-wide metrics recorder (one per test binary; nextest runs each test in its own
/// process anyway).
fn recorder() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let r = PrometheusBuilder::new().build_recorder();
        let h = r.handle();
        metrics::set_global_recorder(r).unwrap();
        h
    })
}

/// FlowForge's `user_daily_stats`, with the non-unique index its plan wrote.
const FLOWFORGE: &str = "\
    CREATE TABLE {s}.events (user_id bigint NOT NULL, kind text NOT NULL, \
                             created_at timestamptz NOT NULL); \
    INSERT INTO {s}.events SELECT n % 50, 'run', timestamptz '2026-11-01+00' + n * interval '7 min' \
      FROM generate_series(1, 5000) n; \
    CREATE MATERIALIZED VIEW {s}.user_daily_stats AS \
      SELECT user_id, (created_at AT TIME ZONE 'UTC')::date AS date, count(*) AS runs \
      FROM {s}.events GROUP BY 1, 2; \
    CREATE INDEX ON {s}.user_daily_stats (user_id, date DESC);";

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
    assert!(matches!(
        mv.refresh(&db.t("unpopulated")).await.unwrap(),
        Refreshed::FirstPopulation { .. }
    ));
    assert!(matches!(
        mv.refresh(&db.t("unpopulated")).await.unwrap(),
        Refreshed::Concurrently { .. }
    ));
    // A partial unique index cannot serve CONCURRENTLY, and the advice says so.
    match mv.refresh(&db.t("partial_idx")).await.unwrap() {
        Refreshed::Blocking { advice, .. } => {
            assert!(advice.contains("partial or on expressions"), "{advice}")
        }
        other => panic!("{other:?}"),
    }
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
    assert!(matches!(
        first.await.unwrap().unwrap(),
        Refreshed::Concurrently { took } if took >= Duration::from_millis(1500)
    ));

    let mut cfg = db.cfg.matview.clone();
    cfg.statement_timeout = Duration::from_millis(300);
    let short = RefreshMatview::new(db.pool.clone(), &cfg).unwrap();
    let e = short.refresh(&view).await.unwrap_err();
    assert!(
        matches!(&e, JobError::Retry(m) if m.contains("statement timeout")),
        "{e}"
    );
    // The lock went with the failed transaction.
    assert!(matches!(
        mv.refresh(&view).await.unwrap(),
        Refreshed::Concurrently { .. }
    ));
    db.cleanup().await;
}

#[tokio::test]
async fn a_blocking_refresh_is_reported_with_the_index_that_would_avoid_it_or_refused() {
    let metrics = recorder();
    let db = TestDb::new("jt_mv").await;
    db.exec(FLOWFORGE).await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg
        .get("refresh_materialized_view")
        .unwrap()
        .handler
        .clone();
    let view = db.t("user_daily_stats");
    let out = h.run(&ctx(), &json!({ "view": view })).await.unwrap();
    assert!(
        out.summary
            .contains("without CONCURRENTLY: readers were blocked for"),
        "{out:?}"
    );
    let suggestion = format!(
        "CREATE UNIQUE INDEX ON {}.user_daily_stats (user_id, date DESC)",
        db.schema
    );
    assert!(out.summary.contains(&suggestion), "{out:?}");
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("jobfleet_matview_refresh_seconds_count")
                && l.contains(&format!("view=\"{view}\""))
                && l.contains("mode=\"blocking\"")),
        "{rendered}"
    );

    // Refused when configured, with the same advice, before anything is locked.
    let mut cfg = db.cfg.matview.clone();
    cfg.allow_blocking_refresh = false;
    let strict = RefreshMatview::new(db.pool.clone(), &cfg).unwrap();
    let e = strict.refresh(&view).await.unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("refusing") && m.contains(&suggestion)
            && m.contains("allow_blocking_refresh")),
        "{e}"
    );

    // The suggested index is real SQL and makes the refresh concurrent.
    db.exec(&suggestion).await;
    assert!(matches!(
        strict.refresh(&view).await.unwrap(),
        Refreshed::Concurrently { .. }
    ));
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("jobfleet_matview_refresh_seconds_count")
                && l.contains(&format!("view=\"{view}\""))
                && l.contains("mode=\"concurrently\"")),
        "{rendered}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn no_index_is_suggested_when_the_rows_are_not_unique_on_any() {
    let db = TestDb::new("jt_mv").await;
    db.exec(
        "CREATE MATERIALIZED VIEW {s}.\"Dupes\" AS SELECT n % 3 AS \"userId\", n AS v \
           FROM generate_series(1, 30) n; \
         CREATE INDEX ON {s}.\"Dupes\" (\"userId\"); \
         CREATE MATERIALIZED VIEW {s}.bare AS SELECT 1 AS a;",
    )
    .await;
    let mv = RefreshMatview::new(db.pool.clone(), &db.cfg.matview).unwrap();
    match mv.refresh(&db.t("Dupes")).await.unwrap() {
        Refreshed::Blocking { advice, .. } => {
            assert!(
                advice.contains("not unique on the columns of its other indexes (userId)"),
                "{advice}"
            );
            assert!(
                advice.contains(&format!(
                    "CREATE UNIQUE INDEX ON {}.\"Dupes\" (<columns",
                    db.schema
                )),
                "{advice}"
            );
        }
        other => panic!("{other:?}"),
    }
    match mv.refresh(&db.t("bare")).await.unwrap() {
        Refreshed::Blocking { advice, .. } => {
            assert!(advice.starts_with("it has no unique index"), "{advice}")
        }
        other => panic!("{other:?}"),
    }
    db.cleanup().await;
}
