//! Backfilling historic months on Flopods' `"PodExecution"` (camelCase, quoted
//! `"startedAt"`), as it looks right after it was switched to partitioning: every row in the
//! default partition. On the real PostgreSQL, with writers and readers running meanwhile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::TestDb;
use jobs::partitions::{EnsurePartitions, PartitionReport, PartitionsPayload};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()
}

/// `rows` executions spread evenly over the `days` before [`now`].
async fn seed(db: &TestDb, rows: u32, days: u32) {
    db.exec(jobs::testkit::FLOPODS_POD_EXECUTION).await;
    db.exec(&format!(
        "INSERT INTO {{s}}.\"PodExecution\" (\"podId\", status, \"startedAt\", \"tokensUsed\") \
         SELECT 'pod-' || (n % 40), 'DONE', \
                timestamptz '2026-12-05 12:00+00' - n * interval '{days} days' / {rows}, n % 1000 \
         FROM generate_series(1, {rows}) n; \
         ANALYZE {{s}}.\"PodExecution\";"
    ))
    .await;
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.replace("{s}", &db.schema)))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Rows that are not in the partition of their own month.
async fn misplaced(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT count(*) FROM {s}.\"PodExecution\" \
         WHERE tableoid::regclass::text <> format('%I.%I', '{s}', \
               'PodExecution_p' || to_char(\"startedAt\" AT TIME ZONE 'UTC', 'YYYYMM'))",
    )
    .await
}

#[tokio::test]
async fn historic_rows_leave_the_default_partition_for_their_months() {
    let db = TestDb::new("jt_bf").await;
    seed(&db, 5000, 40).await;
    let t = db.t("PodExecution");
    let per_month: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT '{}.PodExecution_p' || to_char(\"startedAt\" AT TIME ZONE 'UTC', 'YYYYMM'), count(*) \
         FROM \"{}\".\"PodExecution_default\" GROUP BY 1 ORDER BY 1",
        db.schema, db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_month.len(), 3, "{per_month:?}");
    // Two workers at once: one does the work, the other sees it running (or finds it done).
    let runs = (0..2).map(|_| {
        let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
        let p = PartitionsPayload::new(t.clone(), 2);
        tokio::spawn(async move { ep.ensure(&p, now()).await })
    });
    let reports: Vec<PartitionReport> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let r = reports
        .iter()
        .find(|r| !r.created.is_empty())
        .expect("one run did the work")
        .clone();
    assert_eq!(reports.iter().map(|r| r.created.len()).sum::<usize>(), 5);
    assert_eq!(
        r.created,
        ["202610", "202611", "202612", "202701", "202702"]
            .map(|m| db.t(&format!("PodExecution_p{m}")))
    );
    assert_eq!(r.moved_rows, 5000);
    let moved: Vec<(String, i64)> = r
        .moved
        .iter()
        .map(|(p, n)| (p.clone(), *n as i64))
        .collect();
    assert_eq!(moved, per_month);
    let summary = r.summary(&t);
    assert!(
        summary.contains("5 partitions created, 5000 rows moved from default"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("{} {}", per_month[0].0, per_month[0].1)),
        "{summary}"
    );

    assert_eq!(
        scalar(&db, "SELECT count(*) FROM {s}.\"PodExecution_default\"").await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM {s}.\"PodExecution\"").await,
        5000
    );
    assert_eq!(misplaced(&db).await, 0);
    // The partitions carry the parent's indexes (attached, not rebuilt) and defaults.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass('{s}.\"PodExecution_startedAt_idx\"')"
        )
        .await,
        6
    );
    db.exec(
        "INSERT INTO {s}.\"PodExecution\" (\"podId\", \"startedAt\") VALUES ('p', '2026-10-30+00')",
    )
    .await;
    // Nothing left to do.
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    let again = ep
        .ensure(&PartitionsPayload::new(t.clone(), 2), now())
        .await
        .unwrap();
    assert_eq!(again, PartitionReport::default());
    db.cleanup().await;
}

/// Longest single statement of a loop, and how many succeeded.
#[derive(Debug, Default)]
struct Waits {
    longest: Duration,
    ok: u64,
}

#[tokio::test]
async fn writers_and_readers_keep_going_during_a_backfill_and_no_row_is_lost() {
    let db = TestDb::new("jt_bf").await;
    // Sep, Oct and Nov in the default partition.
    seed(&db, 60_000, 95).await;
    let seeded = scalar(&db, "SELECT count(*) FROM {s}.\"PodExecution\"").await;
    let mut cfg = db.cfg.partitions.clone();
    cfg.batch_rows = 2000;
    let ep = EnsurePartitions::new(db.pool.clone(), &cfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // A writer inserting executions of every month involved (rows of a month not yet attached
    // land in the default partition and must be carried along), and a reader looking rows up
    // through the parent; both time every statement.
    let writer = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        let sql = format!(
            "INSERT INTO \"{}\".\"PodExecution\" (\"podId\", \"startedAt\") \
             VALUES ('w', timestamptz '2026-09-01+00' + $1 * interval '1 second')",
            db.schema
        );
        tokio::spawn(async move {
            let mut w = Waits::default();
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Spread over Sep 1 .. Dec 31 (122 days).
                let offset = (i * 7_919_993) % (122 * 86_400);
                let started = Instant::now();
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(offset as f64)
                    .execute(&pool)
                    .await
                    .expect("writer insert");
                w.longest = w.longest.max(started.elapsed());
                w.ok += 1;
            }
            w
        })
    };
    let reader = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        let sql = format!(
            "SELECT count(*) FROM \"{}\".\"PodExecution\" \
             WHERE \"startedAt\" >= timestamptz '2026-10-15+00' + $1 * interval '1 minute' \
               AND \"startedAt\" < timestamptz '2026-10-15+00' + ($1 + 60) * interval '1 minute'",
            db.schema
        );
        tokio::spawn(async move {
            let mut w = Waits::default();
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let _: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind((i * 37 % 20_000) as f64)
                    .fetch_one(&pool)
                    .await
                    .expect("reader query");
                w.longest = w.longest.max(started.elapsed());
                w.ok += 1;
            }
            w
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = ep
        .ensure(&PartitionsPayload::new(db.t("PodExecution"), 0), now())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (w, rd) = (writer.await.unwrap(), reader.await.unwrap());

    assert_eq!(r.created.len(), 4, "{r:?}"); // Sep, Oct, Nov backfilled; Dec current
    assert!(w.ok > 0 && rd.ok > 0, "writer {w:?}, reader {rd:?}");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM {s}.\"PodExecution\"").await,
        seeded + w.ok as i64,
        "rows lost"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM {s}.\"PodExecution_default\"").await,
        0
    );
    assert_eq!(misplaced(&db).await, 0);
    let bound = Duration::from_secs(1);
    assert!(w.longest < bound, "a writer waited {:?}", w.longest);
    assert!(rd.longest < bound, "a reader waited {:?}", rd.longest);
    assert!(r.longest_lock < bound, "{r:?}");
    db.cleanup().await;
}
