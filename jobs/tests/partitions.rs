//! `ensure_partitions` on the real PostgreSQL: Dec → Jan, rows waiting in the default
//! partition, two workers at once, retention, and refusals.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{TestDb, ctx};
use jobs::JobError;
use jobs::config::RetentionMode;
use jobs::partitions::{EnsurePartitions, PartitionReport, PartitionsPayload};
use serde_json::json;

fn at(y: i32, mo: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, 12, 0, 0).unwrap()
}

fn payload(table: &str, ahead: u32, retention: Option<u32>) -> PartitionsPayload {
    PartitionsPayload {
        retention_months: retention,
        ..PartitionsPayload::new(table, ahead)
    }
}

/// (partition name, bound expression) of `table`'s partitions, sorted.
async fn parts(db: &TestDb, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(format!("\"{}\".\"{table}\"", db.schema))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn names(p: &[(String, String)]) -> Vec<&str> {
    p.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn december_to_january_and_idempotent() {
    let db = TestDb::new("jt_part").await;
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    let t = db.t("analytics_events");
    let r = ep
        .ensure(&payload(&t, 2, None), at(2026, 12, 31))
        .await
        .unwrap();
    assert_eq!(
        r.created,
        vec![
            db.t("analytics_events_p202612"),
            db.t("analytics_events_p202701"),
            db.t("analytics_events_p202702")
        ]
    );
    let p = parts(&db, "analytics_events").await;
    assert_eq!(
        names(&p),
        [
            "analytics_events_default",
            "analytics_events_p202612",
            "analytics_events_p202701",
            "analytics_events_p202702"
        ]
    );
    assert!(
        p[2].1.contains("2027-01-01") && p[2].1.contains("2027-02-01"),
        "{}",
        p[2].1
    );

    let again = ep
        .ensure(&payload(&t, 2, None), at(2026, 12, 1))
        .await
        .unwrap();
    assert_eq!(again, PartitionReport::default());
    let jan = ep
        .ensure(&payload(&t, 2, None), at(2027, 1, 1))
        .await
        .unwrap();
    assert_eq!(jan.created, vec![db.t("analytics_events_p202703")]);

    // Rows route to the new partitions.
    db.exec(
        "INSERT INTO {s}.analytics_events (occurred_at, name) VALUES \
         ('2026-12-31 23:59:59.999+00', 'a'), ('2027-01-01 00:00:00+00', 'b')",
    )
    .await;
    let homes: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT tableoid::regclass::text FROM {}.analytics_events ORDER BY occurred_at",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(homes[0].ends_with("analytics_events_p202612"), "{homes:?}");
    assert!(homes[1].ends_with("analytics_events_p202701"), "{homes:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn rows_in_the_default_partition_move_to_new_partitions() {
    let db = TestDb::new("jt_part").await;
    let t = db.t("analytics_events");
    db.exec(
        "INSERT INTO {s}.analytics_events (occurred_at, name, user_id) \
         SELECT timestamptz '2026-12-20 00:00+00' + n * interval '1 day', 'e', n \
         FROM generate_series(0, 29) n; \
         INSERT INTO {s}.analytics_events (occurred_at, name) VALUES ('2031-05-05+00', 'far')",
    )
    .await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("ensure_partitions").unwrap().handler.clone();
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    // Without backfill only the months asked for are created (and their rows moved).
    let r = ep
        .ensure(
            &PartitionsPayload {
                backfill: false,
                ..payload(&t, 1, None)
            },
            at(2026, 12, 5),
        )
        .await
        .unwrap();
    assert_eq!(r.created.len(), 2);
    assert_eq!(r.moved_rows, 30);
    let per_part = |db: &TestDb| {
        let sql = format!(
            "SELECT tableoid::regclass::text, count(*) FROM {}.analytics_events GROUP BY 1 ORDER BY 1",
            db.schema
        );
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let counts: Vec<i64> = per_part(&db).await.iter().map(|p| p.1).collect();
    assert_eq!(counts, vec![1, 12, 18]); // default (2031), Dec, Jan
    assert_eq!(
        r.moved,
        vec![
            (db.t("analytics_events_p202612"), 12),
            (db.t("analytics_events_p202701"), 18)
        ]
    );
    // The default is attached again and still catches rows outside every partition.
    assert_eq!(parts(&db, "analytics_events").await[0].1, "DEFAULT");
    // Identity values kept: ids still unique and new inserts work.
    db.exec("INSERT INTO {s}.analytics_events (occurred_at, name) VALUES ('2026-12-24+00', 'x')")
        .await;
    // With backfill (the default) the far month gets its partition too.
    let r = ep
        .ensure(&payload(&t, 1, None), at(2026, 12, 5))
        .await
        .unwrap();
    assert_eq!(r.created, vec![db.t("analytics_events_p203105")]);
    assert_eq!(r.moved_rows, 1);
    let per: Vec<(String, i64)> = per_part(&db).await;
    assert!(per.iter().all(|(p, _)| !p.ends_with("_default")), "{per:?}");
    assert_eq!(per.iter().map(|p| p.1).sum::<i64>(), 32);

    // Through the handler (current month is real now; nothing breaks, payload is validated).
    let out = h
        .run(&ctx(), &json!({"table": t, "months_ahead": 1}))
        .await
        .unwrap();
    assert!(out.summary.contains("partitions created"), "{out:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn date_keyed_table_with_generated_columns_moves_rows() {
    let db = TestDb::new("jt_part").await;
    db.exec(
        "CREATE TABLE {s}.\"Metrics\" ( \
           id bigint GENERATED ALWAYS AS IDENTITY, day date NOT NULL, v int, \
           double_v int GENERATED ALWAYS AS (v * 2) STORED) PARTITION BY RANGE (day); \
         CREATE TABLE {s}.metrics_other PARTITION OF {s}.\"Metrics\" DEFAULT; \
         INSERT INTO {s}.\"Metrics\" (day, v) VALUES ('2027-01-15', 21), ('2026-12-31', 1);",
    )
    .await;
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    let r = ep
        .ensure(&payload(&db.t("Metrics"), 1, None), at(2026, 12, 31))
        .await
        .unwrap();
    assert_eq!(r.moved_rows, 2);
    assert_eq!(
        r.created,
        vec![db.t("Metrics_p202612"), db.t("Metrics_p202701")]
    );
    let rows: Vec<(i64, i32, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, double_v, tableoid::regclass::text FROM {}.\"Metrics\" ORDER BY day",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, 2);
    assert_eq!(rows[1].1, 42);
    assert!(rows[1].2.ends_with("\"Metrics_p202701\""), "{rows:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn two_workers_at_once() {
    let db = TestDb::new("jt_part").await;
    let t = db.t("analytics_events");
    db.exec("INSERT INTO {s}.analytics_events (occurred_at, name) VALUES ('2027-02-02+00', 'x')")
        .await;
    let runs = (0..4).map(|_| {
        let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
        let p = payload(&t, 3, None);
        tokio::spawn(async move { ep.ensure(&p, at(2026, 12, 15)).await })
    });
    let reports: Vec<PartitionReport> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(reports.iter().map(|r| r.created.len()).sum::<usize>(), 4);
    assert_eq!(reports.iter().map(|r| r.moved_rows).sum::<u64>(), 1);
    assert_eq!(parts(&db, "analytics_events").await.len(), 5);
    db.cleanup().await;
}

#[tokio::test]
async fn retention_detaches_and_drops_old_partitions_only_when_asked() {
    let db = TestDb::new("jt_part").await;
    let t = db.t("analytics_events");
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    ep.ensure(&payload(&t, 11, None), at(2026, 1, 1))
        .await
        .unwrap();
    db.exec("INSERT INTO {s}.analytics_events (occurred_at, name) VALUES ('2026-02-02+00', 'old'), ('2026-10-10+00', 'new')").await;
    // Without retention nothing goes.
    let r = ep
        .ensure(&payload(&t, 0, None), at(2026, 12, 10))
        .await
        .unwrap();
    assert!(r.dropped.is_empty());
    assert_eq!(parts(&db, "analytics_events").await.len(), 13);
    // Keep 3 months before December: partitions ending on or before Sep 1 go.
    let r = ep
        .ensure(&payload(&t, 0, Some(3)), at(2026, 12, 10))
        .await
        .unwrap();
    assert_eq!(r.dropped.len(), 8);
    let left = parts(&db, "analytics_events").await;
    assert_eq!(
        names(&left),
        [
            "analytics_events_default",
            "analytics_events_p202609",
            "analytics_events_p202610",
            "analytics_events_p202611",
            "analytics_events_p202612"
        ]
    );
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.analytics_events",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(n, 1);
    let dropped: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(db.t("analytics_events_p202601"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(dropped.is_none());
    db.cleanup().await;
}

#[tokio::test]
async fn refusals_are_permanent() {
    let db = TestDb::new("jt_part").await;
    db.exec(
        "CREATE TABLE {s}.plain (t timestamptz); \
         CREATE TABLE {s}.by_list (k int) PARTITION BY LIST (k); \
         CREATE TABLE {s}.by_int (k int) PARTITION BY RANGE (k); \
         CREATE TABLE {s}.by_two (a timestamptz, b timestamptz) PARTITION BY RANGE (a, b); \
         CREATE TABLE {s}.by_hash (t timestamptz) PARTITION BY HASH (t); \
         CREATE TABLE {s}.by_expr (t timestamp) PARTITION BY RANGE ((t::date));",
    )
    .await;
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    for (table, needle) in [
        (db.t("plain"), "is not partitioned"),
        (db.t("by_list"), "by LIST"),
        (db.t("by_two"), "more than one column"),
        (db.t("by_int"), "not a timestamp"),
        (db.t("by_hash"), "by HASH"),
        (db.t("by_expr"), "expression"),
        (format!("{}.\"by_list\"", db.schema), "identifier"),
        (format!("{}.by_list.x", db.schema), "schema.table"),
        ("x'; DROP TABLE y; --".to_owned(), "identifier"),
        (db.t("missing"), "does not exist"),
        ("x.y;drop".to_owned(), "identifier"),
    ] {
        let e = ep
            .ensure(&payload(&table, 1, None), at(2026, 1, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, JobError::Permanent(m) if m.contains(needle)),
            "{table}: {e}"
        );
        // The error names what was refused.
        let shown = table.split('.').next_back().unwrap().trim_matches('"');
        assert!(e.to_string().contains(shown), "{table}: {e}");
    }
    let t = db.t("analytics_events");
    for p in [payload(&t, 25, None), payload(&t, 1, Some(0))] {
        assert!(matches!(
            ep.ensure(&p, at(2026, 1, 1)).await,
            Err(JobError::Permanent(_))
        ));
    }
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("ensure_partitions").unwrap().handler.clone();
    for bad in [
        json!({"table": t}),
        json!({"table": t, "months_ahead": -1}),
        json!("x"),
    ] {
        assert!(
            matches!(h.validate(&bad), Err(JobError::Permanent(_))),
            "{bad}"
        );
    }
    let mut cfg = db.cfg.partitions.clone();
    cfg.allowed_tables = vec!["app.events".into()];
    let restricted = EnsurePartitions::new(db.pool.clone(), &cfg).unwrap();
    let e = restricted
        .ensure(&payload(&t, 1, None), at(2026, 1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("allowed")),
        "{e}"
    );
    db.cleanup().await;
}

/// Partitions of 2026 with one row in February and one in October, for retention tests.
async fn year_of_partitions(db: &TestDb, ep: &EnsurePartitions, table: &str) {
    ep.ensure(&payload(&db.t(table), 11, None), at(2026, 1, 1))
        .await
        .unwrap();
    db.exec(&format!(
        "INSERT INTO {{s}}.{table} (occurred_at, name) VALUES ('2026-02-02+00', 'old'), \
         ('2026-10-10+00', 'new')"
    ))
    .await;
}

async fn attached(db: &TestDb, table: &str) -> Vec<String> {
    names(&parts(db, table).await)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn archive_moves_old_partitions_to_the_archive_schema_detached_and_readable() {
    let db = TestDb::new("jt_part").await;
    let archive = format!("{}_arch", db.schema);
    db.exec(&format!("CREATE SCHEMA \"{archive}\"")).await;
    let mut cfg = db.cfg.partitions.clone();
    cfg.archive_schema = Some(archive.clone());
    let ep = EnsurePartitions::new(db.pool.clone(), &cfg).unwrap();
    year_of_partitions(&db, &ep, "analytics_events").await;
    // A table already named like one partition in the archive: refused before anything moves.
    db.exec(&format!(
        "CREATE TABLE \"{archive}\".analytics_events_p202601 (x int)"
    ))
    .await;
    let archive_3 = PartitionsPayload {
        retention_mode: Some(RetentionMode::Archive),
        ..payload(&db.t("analytics_events"), 0, Some(3))
    };
    let e = ep.ensure(&archive_3, at(2026, 12, 10)).await.unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains(&format!("{archive}.analytics_events_p202601 already exists"))),
        "{e}"
    );
    assert_eq!(attached(&db, "analytics_events").await.len(), 13);
    db.exec(&format!(
        "DROP TABLE \"{archive}\".analytics_events_p202601"
    ))
    .await;

    let r = ep.ensure(&archive_3, at(2026, 12, 10)).await.unwrap();
    assert_eq!(r.archived.len(), 8, "{r:?}");
    assert!(r.dropped.is_empty() && r.detached.is_empty());
    assert!(
        r.archived
            .contains(&format!("{archive}.analytics_events_p202602"))
    );
    // The table has a default partition, so no CONCURRENTLY, and the summary says why.
    let summary = r.summary("t");
    assert!(summary.contains("8 archived"), "{summary}");
    assert!(summary.contains("default partition"), "{summary}");
    assert_eq!(
        attached(&db, "analytics_events").await,
        [
            "analytics_events_default",
            "analytics_events_p202609",
            "analytics_events_p202610",
            "analytics_events_p202611",
            "analytics_events_p202612"
        ]
    );
    // Detached, readable in the archive, and gone from the parent.
    assert_eq!(
        count(&db, &format!("\"{archive}\".analytics_events_p202602")).await,
        1
    );
    assert_eq!(
        count(&db, &format!("{}.analytics_events", db.schema)).await,
        1
    );
    let is_partition: bool =
        sqlx::query_scalar("SELECT relispartition FROM pg_class WHERE oid = to_regclass($1)")
            .bind(format!("\"{archive}\".analytics_events_p202602"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!is_partition);
    // Nothing left to do on the next run.
    let again = ep.ensure(&archive_3, at(2026, 12, 10)).await.unwrap();
    assert!(again.archived.is_empty(), "{again:?}");

    // Archive without an archive schema in the config is a bad payload.
    let plain = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    assert!(matches!(
        plain.ensure(&archive_3, at(2026, 12, 10)).await,
        Err(JobError::Permanent(m)) if m.contains("archive_schema")
    ));
    db.exec(&format!("DROP SCHEMA \"{archive}\" CASCADE")).await;
    db.cleanup().await;
}

#[tokio::test]
async fn detach_keeps_old_partitions_and_is_concurrent_without_a_default_partition() {
    let db = TestDb::new("jt_part").await;
    db.exec(
        "CREATE TABLE {s}.nodefault (id bigint GENERATED ALWAYS AS IDENTITY, \
           occurred_at timestamptz NOT NULL, name text) PARTITION BY RANGE (occurred_at)",
    )
    .await;
    let mut cfg = db.cfg.partitions.clone();
    cfg.retention_mode = RetentionMode::Detach;
    let ep = EnsurePartitions::new(db.pool.clone(), &cfg).unwrap();
    year_of_partitions(&db, &ep, "nodefault").await;
    let r = ep
        .ensure(&payload(&db.t("nodefault"), 0, Some(3)), at(2026, 12, 10))
        .await
        .unwrap();
    assert_eq!(r.detached.len(), 8, "{r:?}");
    assert_eq!(r.detach_not_concurrent, None, "{r:?}");
    assert!(
        r.summary("t").contains("8 detached and kept"),
        "{}",
        r.summary("t")
    );
    assert_eq!(attached(&db, "nodefault").await.len(), 4);
    // Left where it was, as a readable plain table.
    assert_eq!(count(&db, &db.t("nodefault_p202602")).await, 1);
    assert_eq!(count(&db, &db.t("nodefault")).await, 1);

    // The same on a table with a default partition: detached in a short transaction instead.
    year_of_partitions(&db, &ep, "analytics_events").await;
    let r = ep
        .ensure(
            &payload(&db.t("analytics_events"), 0, Some(3)),
            at(2026, 12, 10),
        )
        .await
        .unwrap();
    assert_eq!(r.detached.len(), 8);
    assert!(
        r.detach_not_concurrent
            .unwrap()
            .contains("default partition")
    );
    assert_eq!(count(&db, &db.t("analytics_events_p202602")).await, 1);
    db.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_backfill_is_finished_and_foreign_tables_are_left_alone() {
    let db = TestDb::new("jt_part").await;
    let t = db.t("analytics_events");
    db.exec(
        "INSERT INTO {s}.analytics_events (occurred_at, name) \
         SELECT timestamptz '2026-10-01+00' + n * interval '1 hour', 'e' FROM generate_series(0, 99) n",
    )
    .await;
    // What a run cut off after its first batch leaves: the month's plain table with the bound
    // CHECK and some of the rows, the rest still in the default partition.
    db.exec(
        "CREATE TABLE {s}.analytics_events_p202610 \
           (LIKE {s}.analytics_events INCLUDING ALL EXCLUDING IDENTITY); \
         ALTER TABLE {s}.analytics_events_p202610 ADD CONSTRAINT jobfleet_partition_bound \
           CHECK (occurred_at >= '2026-10-01 00:00:00+00' AND occurred_at < '2026-11-01 00:00:00+00'); \
         WITH m AS (DELETE FROM {s}.analytics_events_default \
                    WHERE occurred_at < '2026-10-02+00' RETURNING *) \
         INSERT INTO {s}.analytics_events_p202610 SELECT * FROM m;",
    )
    .await;
    let ep = EnsurePartitions::new(db.pool.clone(), &db.cfg.partitions).unwrap();
    let r = ep
        .ensure(&payload(&t, 0, None), at(2026, 10, 20))
        .await
        .unwrap();
    assert_eq!(r.created, vec![db.t("analytics_events_p202610")]);
    assert_eq!(r.moved_rows, 76);
    assert_eq!(count(&db, &db.t("analytics_events_p202610")).await, 100);
    assert_eq!(count(&db, &db.t("analytics_events_default")).await, 0);
    // The helper constraint is gone once the partition is attached.
    let checks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'c'",
    )
    .bind(db.t("analytics_events_p202610"))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(checks, 0);

    // A table of someone else's under next month's name: refused, named, untouched.
    db.exec(
        "CREATE TABLE {s}.analytics_events_p202611 (note text); \
         INSERT INTO {s}.analytics_events (occurred_at, name) VALUES ('2026-11-03+00', 'x')",
    )
    .await;
    let e = ep
        .ensure(&payload(&t, 0, None), at(2026, 11, 20))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("analytics_events_p202611 already exists")),
        "{e}"
    );
    assert_eq!(count(&db, &db.t("analytics_events_default")).await, 1);
    db.cleanup().await;
}
