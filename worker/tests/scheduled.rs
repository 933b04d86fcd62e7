//! A schedule through to the job it enqueues: the scheduler's `ensure_partitions` entry
//! (daily + at start) is enqueued through a real broker, received, and run by the jobs crate's
//! handler, which must create next month's partition. It lives with the worker because it
//! needs both the scheduler and the job code, and the scheduler does not depend on the latter.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, Utc};
use queues::Producer;
use runtime::config::{CatchUp, Schedule};
use scheduler::{CompiledSchedule, Core, CoreOptions};
use serde_json::json;
use sqlx::PgPool;

const DB: &str = "postgres://postgres@127.0.0.1:5432/test";
const QUEUE: &str = "maintenance";

/// A name of its own for this run (schema, schedule, lease key, namespace).
fn uniq(prefix: &str) -> String {
    queues::conformance::unique_queue(prefix).replace('-', "_")
}

/// End to end: an `ensure_partitions` schedule (daily + at start) enqueued through a real
/// broker, received, and run by the jobs crate's handler, which must create next month's
/// partition.
#[tokio::test]
async fn ensure_partitions_end_to_end_through_a_real_broker() {
    use queues::{BackendKind, BrokerConfig, QueueSpec};

    let url = std::env::var("JOBFLEET_TEST_DATABASE_URL").unwrap_or_else(|_| DB.into());
    let pool = PgPool::connect(&url).await.expect("PostgreSQL on :5432");
    migrations::ensure(&pool).await.unwrap();
    let ns = uniq("e2e");
    let mut cfg = BrokerConfig::new(BackendKind::Postgres, DB);
    cfg.namespace = ns.clone();
    let broker = queues::connect(&cfg).await.expect("postgres queue backend");
    broker.declare(&QueueSpec::new(QUEUE)).await.unwrap();

    // A monthly-partitioned table of our own.
    let schema = uniq("sched_e2e");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (id bigint, created_at timestamptz NOT NULL)
             PARTITION BY RANGE (created_at);"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let name = uniq("partitions");
    let s = Schedule {
        name: name.clone(),
        cron: "0 0 3 * * *".into(),
        timezone: "UTC".into(),
        kind: "ensure_partitions".into(),
        payload: json!({"table": format!("{schema}.events"), "months_ahead": 3}),
        queue: Some(QUEUE.into()),
        catch_up: CatchUp::Latest,
        run_at_start: true,
    };
    let compiled = vec![CompiledSchedule::compile(&s, None).unwrap()];
    let producer: Arc<dyn Producer> = broker.clone();
    let c = Core::new(
        compiled,
        pool.clone(),
        producer,
        CoreOptions::new(uniq("lease"), Duration::from_secs(5)),
    );
    assert!(c.lease_step().await.unwrap());
    let now = Utc::now();
    c.reconcile(now).await.unwrap();
    c.reconcile(now).await.unwrap();
    c.release().await.unwrap();

    let got = broker
        .receive(QUEUE, 10, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one start job");
    let env = got[0].message().envelope().unwrap().clone();
    assert_eq!(env.kind, "ensure_partitions");
    assert!(
        env.dedup_key
            .as_deref()
            .unwrap()
            .starts_with(&format!("{name}@start@"))
    );

    let registry = jobs::registry(pool.clone(), &jobs::JobsConfig::default()).unwrap();
    let reg = registry
        .get("ensure_partitions")
        .expect("ensure_partitions is registered");
    let ctx = jobs::JobContext {
        job_id: env.id.clone(),
        queue: env.queue.clone(),
        attempt: 1,
    };
    reg.handler.run(&ctx, &env.payload).await.unwrap();
    got[0].ack().await.unwrap();

    // A row dated mid next month lands in a partition (there is no default partition, so the
    // insert fails unless next month's partition exists).
    let next_month = (Utc::now().date_naive().with_day(1).unwrap() + chrono::Months::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        + chrono::Duration::days(14);
    let mut tx = pool.begin().await.unwrap();
    let part: (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (id, created_at) VALUES (1, $1) RETURNING tableoid::regclass::text"
    )))
    .bind(next_month)
    .fetch_one(&mut *tx)
    .await
    .expect("next month's partition exists");
    tx.rollback().await.unwrap();
    assert_ne!(part.0, format!("{schema}.events"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
}
