//! `rollup_analytics` on the real PostgreSQL: partition-spanning windows, re-runs that fix a
//! window, and duplicates of a window run concurrently.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{TestDb, ctx};
use jobs::JobError;
use jobs::partitions::{EnsurePartitions, PartitionsPayload};
use serde_json::json;

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

async fn setup() -> TestDb {
    let db = TestDb::new("jt_rollup").await;
    // Monthly partitions for Nov and Dec 2026, so the test windows span a partition boundary.
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    let r = ep
        .ensure(
            &PartitionsPayload::new(db.t("analytics_events"), 1),
            at(2026, 11, 15, 0),
        )
        .await
        .unwrap();
    assert_eq!(r.created.len(), 2);
    // Every 10 minutes from Nov 30 20:00 to Dec 1 04:00 (exclusive): 48 events, alternating
    // names, users 1..=3.
    db.exec(
        "INSERT INTO {s}.analytics_events (occurred_at, name, user_id) \
         SELECT t, CASE WHEN n % 2 = 0 THEN 'view' ELSE 'click' END, n % 3 + 1 \
         FROM generate_series(timestamptz '2026-11-30 20:00+00', timestamptz '2026-12-01 03:50+00', \
                              interval '10 minutes') WITH ORDINALITY AS g(t, n)",
    )
    .await;
    db
}

async fn hourly(db: &TestDb) -> Vec<(DateTime<Utc>, String, i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT bucket, name, events, users FROM {}.analytics_rollup_hourly ORDER BY 1, 2",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn daily(db: &TestDb) -> Vec<(DateTime<Utc>, String, i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT bucket, name, events, users FROM {}.analytics_rollup_daily ORDER BY 1, 2",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn window(g: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> serde_json::Value {
    json!({"granularity": g, "from": from.to_rfc3339(), "to": to.to_rfc3339()})
}

#[tokio::test]
async fn window_across_a_partition_boundary_and_rerun_fixes_late_events() {
    let db = setup().await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("rollup_analytics").unwrap().handler.clone();

    // A bucket outside the window must survive.
    db.exec(
        "INSERT INTO {s}.analytics_rollup_hourly (bucket, name, events, users) \
         VALUES ('2026-11-30 10:00+00', 'view', 99, 9)",
    )
    .await;
    let w = window("hour", at(2026, 11, 30, 20), at(2026, 12, 1, 4));
    h.validate(&w).unwrap();
    h.run(&ctx(), &w).await.unwrap();
    let rows = hourly(&db).await;
    // 8 hours × 2 names, plus the outside bucket.
    assert_eq!(rows.len(), 17);
    assert_eq!(rows[0], (at(2026, 11, 30, 10), "view".into(), 99, 9));
    let total: i64 = rows[1..].iter().map(|r| r.2).sum();
    assert_eq!(total, 48);
    assert!(rows[1..].iter().all(|r| r.2 == 3 && r.3 >= 1 && r.3 <= 3));

    let d = window("day", at(2026, 11, 30, 0), at(2026, 12, 2, 0));
    h.run(&ctx(), &d).await.unwrap();
    let days = daily(&db).await;
    assert_eq!(
        days.iter()
            .map(|r| (r.0, r.1.as_str(), r.2))
            .collect::<Vec<_>>(),
        vec![
            (at(2026, 11, 30, 0), "click", 12),
            (at(2026, 11, 30, 0), "view", 12),
            (at(2026, 12, 1, 0), "click", 12),
            (at(2026, 12, 1, 0), "view", 12),
        ]
    );
    assert!(days.iter().all(|r| r.3 == 3));

    // Late events (one new name) and a deleted hour: the re-run counts the former and removes
    // the buckets of the latter; running it twice more changes nothing.
    db.exec(
        "INSERT INTO {s}.analytics_events (occurred_at, name, user_id) VALUES \
         ('2026-11-30 23:59:59+00', 'view', 42), ('2026-12-01 00:00:00+00', 'signup', 7); \
         DELETE FROM {s}.analytics_events WHERE occurred_at >= '2026-12-01 03:00+00' \
           AND occurred_at < '2026-12-01 04:00+00'",
    )
    .await;
    for _ in 0..3 {
        h.run(&ctx(), &w).await.unwrap();
    }
    let rows = hourly(&db).await;
    assert_eq!(rows.len(), 17 - 2 + 1);
    let find = |b: DateTime<Utc>, n: &str| rows.iter().find(|r| r.0 == b && r.1 == n).cloned();
    assert_eq!(find(at(2026, 11, 30, 23), "view").unwrap().2, 4);
    assert_eq!(find(at(2026, 11, 30, 23), "view").unwrap().3, 4); // users 1..=3 and 42
    assert_eq!(find(at(2026, 12, 1, 0), "signup").unwrap().2, 1);
    assert!(find(at(2026, 12, 1, 3), "view").is_none());
    assert_eq!(rows[0].2, 99);
    db.cleanup().await;
}

#[tokio::test]
async fn concurrent_duplicates_of_a_window_give_one_result() {
    let db = setup().await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("rollup_analytics").unwrap().handler.clone();
    let w = window("hour", at(2026, 11, 30, 0), at(2026, 12, 2, 0));
    let inner = window("hour", at(2026, 11, 30, 22), at(2026, 12, 1, 2));
    let runs = (0..8).map(|i| {
        let h = h.clone();
        let p = if i % 3 == 0 { inner.clone() } else { w.clone() };
        tokio::spawn(async move { h.run(&ctx(), &p).await })
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap().unwrap();
    }
    let concurrent = hourly(&db).await;
    db.exec("TRUNCATE {s}.analytics_rollup_hourly").await;
    h.run(&ctx(), &w).await.unwrap();
    assert_eq!(concurrent, hourly(&db).await);
    assert_eq!(concurrent.len(), 16);
    db.cleanup().await;
}

#[tokio::test]
async fn bad_windows_are_permanent() {
    let db = TestDb::new("jt_rollup").await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("rollup_analytics").unwrap().handler.clone();
    for (bad, needle) in [
        (
            json!({"granularity": "minute", "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}),
            "minute",
        ),
        (
            json!({"granularity": "day", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "before",
        ),
        (
            json!({"granularity": "day", "from": "2026-01-01T05:00:00Z", "to": "2026-01-02T00:00:00Z"}),
            "boundary",
        ),
        (
            json!({"granularity": "hour", "from": "2026-01-01T05:30:00Z", "to": "2026-01-02T00:00:00Z"}),
            "boundary",
        ),
        (
            json!({"granularity": "day", "from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "max_window",
        ),
        (
            json!({"granularity": "day", "from": "yesterday", "to": "2026-01-01T00:00:00Z"}),
            "invalid rollup_analytics payload: `from` ('yesterday') is not an RFC 3339 time: ",
        ),
        (json!({"granularity": "day"}), "from"),
    ] {
        let e = h.validate(&bad).unwrap_err();
        assert!(
            matches!(&e, JobError::Permanent(m) if m.contains(needle)),
            "{bad}: {e}"
        );
        assert!(matches!(
            h.run(&ctx(), &bad).await,
            Err(JobError::Permanent(_))
        ));
    }
    db.cleanup().await;
}
