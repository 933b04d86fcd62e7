//! The limits' shared state against a real PostgreSQL: two limiters (two workers) leasing one
//! concurrency cap never exceed it together, a crashed worker's slots come back once its lease
//! expires, and an override written with its audit row reaches a running limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet::limits::{Admission, Limiter, Scope, Timing};
use fleet::{Actor, Store};
use runtime::config::LimitsConfig;
use sqlx::PgPool;
use tokio::sync::Notify;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of its own, migrated; dropped by [`drop_db`].
async fn fresh_store() -> (Store, String) {
    let admin = PgPool::connect(&format!("{SERVER}/postgres"))
        .await
        .expect("PostgreSQL on :5432");
    let name = format!("fleet_limits_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("{SERVER}/{name}")).await.unwrap();
    migrations::ensure(&pool).await.unwrap();
    (Store::new(pool), name)
}

async fn drop_db(store: Store, name: String) {
    store.pool().close().await;
    let admin = PgPool::connect(&format!("{SERVER}/postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

fn limits(text: &str) -> LimitsConfig {
    toml::from_str(text).unwrap()
}

fn timing() -> Timing {
    Timing::from_sample_interval(Duration::from_millis(400))
}

/// Starts the lease loop of `l`; the returned notify stops it (a clean exit).
fn start(l: &Limiter) -> (Arc<Notify>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let task = tokio::spawn(l.clone().run(async move { s.notified().await }));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_cap_and_a_crashed_ones_slots_come_back() {
    let (store, db) = fresh_store().await;
    let cfg = limits("[k]\nconcurrency = 3\n");
    let a = Limiter::new(Some(store.clone()), cfg.clone(), "worker-a", timing());
    let b = Limiter::new(Some(store.clone()), cfg.clone(), "worker-b", timing());
    let (stop_a, task_a) = start(&a);
    let (stop_b, task_b) = start(&b);

    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut jobs = Vec::new();
    for i in 0..40 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        jobs.push(tokio::spawn(async move {
            loop {
                if let Admission::Go(_permit) = l.admit("q", "k", Duration::from_millis(300)).await
                {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }));
    }
    for j in jobs {
        tokio::time::timeout(Duration::from_secs(60), j)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 40);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} ran at once under a fleet cap of 3");
    assert!(most >= 2, "the cap was never shared: at most {most}");

    // Worker a "crashes" holding all three slots: its loop is aborted, nothing released.
    // (First a few ticks with nothing to do, so b's lease drops to 0, and after taking them
    // a tick or two, so a's lease records them.)
    let t = timing();
    tokio::time::sleep(t.tick * 3).await;
    let held: Vec<_> = futures_take(&a, 3).await;
    assert_eq!(held.len(), 3);
    tokio::time::sleep(t.tick * 2).await;
    task_a.abort();
    // b gets nothing while a's lease lives, and a slot once it has expired.
    assert!(matches!(
        b.admit("q", "k", t.tick * 2).await,
        Admission::HeldBack { .. }
    ));
    let got = b.admit("q", "k", t.lease_ttl + t.tick * 4).await;
    assert!(
        matches!(got, Admission::Go(_)),
        "a crashed worker's slots never came back"
    );
    drop(got);
    drop(held);
    drop(stop_a);
    stop_b.notify_one();
    task_b.await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobfleet.limit_leases WHERE worker_id = 'worker-b'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0, "a clean exit releases its leases");
    drop_db(store, db).await;
}

/// Takes `n` permits from `l` (each waiting up to 5 s).
async fn futures_take(l: &Limiter, n: usize) -> Vec<fleet::limits::Permit> {
    let mut out = Vec::new();
    for _ in 0..n {
        if let Admission::Go(p) = l.admit("q", "k", Duration::from_secs(5)).await {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn an_override_reaches_a_running_limiter_and_is_audited() {
    let (store, db) = fresh_store().await;
    let l = Limiter::new(Some(store.clone()), LimitsConfig::default(), "w", timing());
    let (stop, task) = start(&l);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(l.in_force().is_empty());
    let scope = Scope::Kind("k".into());
    let actor = Actor::named("alice@ops");
    store
        .set_limit(&scope, Some("100/min".parse().unwrap()), None, &actor)
        .await
        .unwrap();
    let o = store
        .set_limit(&scope, None, Some(4), &actor)
        .await
        .unwrap();
    assert_eq!(
        o.rate.unwrap().to_string(),
        "100/min",
        "a later change keeps the other field"
    );
    assert_eq!(o.concurrency, Some(4));
    // Within one refresh (the sample interval) plus a tick.
    tokio::time::sleep(timing().refresh + timing().tick * 2).await;
    let now = l.in_force();
    assert_eq!(now[&scope].concurrency, Some(4));
    assert!(store.set_limit(&scope, None, None, &actor).await.is_err());
    store.clear_limit(&scope, &actor).await.unwrap();
    tokio::time::sleep(timing().refresh + timing().tick * 2).await;
    assert!(
        l.in_force().is_empty(),
        "cleared, and nothing in the config"
    );
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM jobfleet.audit_log ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        actions,
        vec![
            ("alice@ops".into(), "limit_set".into()),
            ("alice@ops".into(), "limit_set".into()),
            ("alice@ops".into(), "limit_clear".into())
        ]
    );
    stop.notify_one();
    task.await.unwrap();
    drop_db(store, db).await;
}
