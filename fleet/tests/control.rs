//! The control state against a real PostgreSQL: the registry (report, lost, leave), pause and
//! resume with their audit rows, cancel requests from asked to met to cleared, the running jobs
//! a report lists found by id, and the worker-side snapshot: installed on refresh, kept while
//! the database is away, and reported.

use std::time::Duration;

use chrono::Utc;
use fleet::audit::Action;
use fleet::pause::Change;
use fleet::registry::{
    MAX_RUNNING_REPORTED, PoolReport, Registration, Report, RunningJob, WorkerState,
};
use fleet::snapshot::Refresher;
use fleet::{Actor, Control, Store};
use sqlx::PgPool;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own, migrated, so parallel tests never see each other's rows.
async fn fresh_store(tag: &str) -> Store {
    let admin = PgPool::connect(ADMIN_URL)
        .await
        .expect("PostgreSQL on :5432");
    let name = format!(
        "fleet_{tag}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .unwrap();
    migrations::ensure(&pool).await.unwrap();
    Store::new(pool)
}

/// Drops the database of `store` (at the end of a test that passed).
async fn drop_db(store: Store) {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    let admin = PgPool::connect(ADMIN_URL).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

fn registration(worker_id: &str, interval_ms: u64) -> Registration {
    Registration {
        instance: uuid::Uuid::new_v4(),
        worker_id: worker_id.into(),
        host: "host-a".into(),
        pid: 4242,
        version: "0.1.0".into(),
        backend: "redis".into(),
        started_at: Utc::now(),
        interval_ms,
    }
}

#[tokio::test]
async fn registry_rows_are_refreshed_judged_lost_and_removed_on_leave() {
    let store = fresh_store("registry").await;
    // Two processes with one configured id stay two rows.
    let a = registration("w", 100);
    let b = registration("w", 100);
    let report = Report {
        draining: false,
        pools: vec![PoolReport {
            queue: "embeddings".into(),
            target: 4,
            granted: 3,
            running: 2,
            succeeded: 10,
            failed: 1,
            dead_lettered: 1,
        }],
        ..Report::default()
    };
    store.report(&a, &report).await.unwrap();
    store.report(&b, &Report::default()).await.unwrap();
    let rows = store.workers().await.unwrap();
    assert_eq!(rows.len(), 2);
    let ra = rows
        .iter()
        .find(|r| r.registration.instance == a.instance)
        .unwrap();
    assert_eq!(ra.state, WorkerState::Running);
    assert_eq!(ra.pools, report.pools);
    assert_eq!(ra.totals(), (2, 10, 1, 1));

    // `a` keeps reporting (now draining); `b` goes quiet for more than 3 intervals.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let draining = Report {
        draining: true,
        ..report.clone()
    };
    store.report(&a, &draining).await.unwrap();
    let rows = store.workers().await.unwrap();
    let state = |id| {
        rows.iter()
            .find(|r| r.registration.instance == id)
            .unwrap()
            .state
    };
    assert_eq!(state(a.instance), WorkerState::Draining);
    assert_eq!(state(b.instance), WorkerState::Lost);

    store.deregister(a.instance).await.unwrap();
    let rows = store.workers().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].registration.instance, b.instance);
    drop_db(store).await;
}

fn running_job(id: &str, queue: &str) -> RunningJob {
    RunningJob {
        id: id.into(),
        queue: queue.into(),
        kind: "diag_sleep".into(),
        // Whole microseconds: what survives the jsonb round trip is compared exactly.
        started_at: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap(),
    }
}

#[tokio::test]
async fn a_reported_running_job_is_found_by_id_until_a_report_drops_it() {
    let store = fresh_store("running").await;
    let a = registration("w-a", 100);
    let b = registration("w-b", 60_000);
    let job = running_job("0192f0c4-7f7e-7d7a-9a6b-1c2d3e4f5a6b", "emails");
    let other = running_job("job-2", "reports");
    store
        .report(
            &a,
            &Report {
                running: vec![job.clone(), other.clone()],
                ..Report::default()
            },
        )
        .await
        .unwrap();
    store.report(&b, &Report::default()).await.unwrap();

    let found = store.running_job(&job.id).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].job, job);
    assert_eq!(found[0].worker.registration.instance, a.instance);
    assert_eq!(found[0].worker.state, WorkerState::Running);
    assert_eq!(store.running_job("job-2").await.unwrap()[0].job, other);
    for absent in ["not-running", "0192f0c4", "job"] {
        assert!(
            store.running_job(absent).await.unwrap().is_empty(),
            "{absent}: only an exact id matches"
        );
    }
    assert!(store.omitting_running().await.unwrap().is_empty());

    // The job ended: the next report no longer lists it.
    store
        .report(
            &a,
            &Report {
                running: vec![other.clone()],
                ..Report::default()
            },
        )
        .await
        .unwrap();
    assert!(store.running_job(&job.id).await.unwrap().is_empty());

    // A worker that goes quiet keeps its last list, marked lost; the job redelivered to
    // another worker is found on both, the live one first.
    store
        .report(
            &b,
            &Report {
                running: vec![other.clone()],
                ..Report::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let found = store.running_job("job-2").await.unwrap();
    let seen: Vec<(&str, WorkerState)> = found
        .iter()
        .map(|r| (r.worker.registration.worker_id.as_str(), r.worker.state))
        .collect();
    assert_eq!(
        seen,
        vec![("w-b", WorkerState::Running), ("w-a", WorkerState::Lost)]
    );

    // Past the cap, the rest is counted, not listed.
    let many: Vec<RunningJob> = (0..MAX_RUNNING_REPORTED + 7)
        .map(|i| running_job(&format!("bulk-{i}"), "emails"))
        .collect();
    store
        .report(
            &b,
            &Report {
                running: many,
                ..Report::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.running_job("bulk-0").await.unwrap().len(), 1);
    assert!(
        store
            .running_job(&format!("bulk-{MAX_RUNNING_REPORTED}"))
            .await
            .unwrap()
            .is_empty()
    );
    let omitting = store.omitting_running().await.unwrap();
    assert_eq!(omitting.len(), 1);
    assert_eq!(omitting[0].worker.registration.instance, b.instance);
    assert_eq!(omitting[0].omitted, 7);
    drop_db(store).await;
}

#[tokio::test]
async fn pause_and_resume_change_the_state_and_write_one_audit_row_each() {
    let store = fresh_store("pause").await;
    let alice = Actor::named("alice@ops-1");
    assert_eq!(
        store
            .pause(&alice, "embeddings", "provider incident")
            .await
            .unwrap(),
        Change::Done
    );
    assert_eq!(
        store
            .pause(&alice, "embeddings", "still down")
            .await
            .unwrap(),
        Change::Already
    );
    let paused = store.paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].queue, "embeddings");
    assert_eq!(paused[0].reason, "still down");
    assert_eq!(paused[0].paused_by, "alice@ops-1");

    let bob = Actor::named("bob@ops-2");
    assert_eq!(
        store.resume(&bob, "embeddings").await.unwrap(),
        Change::Done
    );
    assert_eq!(
        store.resume(&bob, "embeddings").await.unwrap(),
        Change::Already
    );
    assert!(store.paused().await.unwrap().is_empty());

    let log = store.audit_since(None, 10).await.unwrap();
    let actions: Vec<(Option<Action>, &str, bool)> = log
        .iter()
        .map(|r| {
            (
                r.known_action(),
                r.actor.as_str(),
                r.counts.as_ref().unwrap()["changed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            (Some(Action::Resume), "bob@ops-2", false),
            (Some(Action::Resume), "bob@ops-2", true),
            (Some(Action::Pause), "alice@ops-1", false),
            (Some(Action::Pause), "alice@ops-1", true),
        ]
    );
    assert_eq!(log[3].detail["reason"], "provider incident");
    drop_db(store).await;
}

#[tokio::test]
async fn a_cancel_request_is_pending_until_met_renewable_and_cleared_by_replay() {
    let store = fresh_store("cancel").await;
    let carol = Actor::named("carol@ops");
    let bad = store.cancel(&carol, "q", " x", "").await.unwrap_err();
    assert!(matches!(bad, fleet::Error::Invalid(_)), "{bad}");
    assert!(
        store.audit_since(None, 10).await.unwrap().is_empty(),
        "nothing half-applied"
    );

    let req = store
        .cancel(&carol, "q", "job-1", "wrong tenant")
        .await
        .unwrap();
    assert_eq!(req.dlq_reason(), "cancelled by carol@ops: wrong tenant");
    store.cancel(&carol, "q", "job-2", "").await.unwrap();
    let pending = store.pending_cancels().await.unwrap();
    assert_eq!(pending.len(), 2);

    let met = store
        .consume_cancels("w-1", &[("q".into(), "job-1".into())])
        .await
        .unwrap();
    assert_eq!(met, 1);
    let pending = store.pending_cancels().await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|r| r.job_id.as_str())
            .collect::<Vec<_>>(),
        vec!["job-2"]
    );
    let all = store.cancels(Some("q"), 10).await.unwrap();
    let one = all.iter().find(|r| r.job_id == "job-1").unwrap();
    assert_eq!(one.consumed_by.as_deref(), Some("w-1"));

    // Cancelled again (after a replay, say): pending again.
    store.cancel(&carol, "q", "job-1", "again").await.unwrap();
    assert_eq!(store.pending_cancels().await.unwrap().len(), 2);

    assert_eq!(
        store
            .clear_cancels("q", &["job-1".into(), "job-2".into()])
            .await
            .unwrap(),
        2
    );
    assert!(store.pending_cancels().await.unwrap().is_empty());
    let cancels = store
        .audit_since(None, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.known_action() == Some(Action::Cancel))
        .count();
    assert_eq!(cancels, 3);
    drop_db(store).await;
}

/// The worker side: a refresh installs pauses and cancels; a request met here is matched no
/// more, and marked done for the fleet at the next refresh; with the database away the last
/// state stays in force and `status` says so. (Its return is `worker/tests/fleet.rs`'s.)
#[tokio::test]
async fn the_snapshot_follows_the_database_and_keeps_the_last_state_while_it_is_away() {
    let store = fresh_store("snapshot").await;
    // The refresher's store: a second pool on the same database, closed to simulate the
    // outage (every query then fails at once, as against a dead server).
    let url = store_url(&store).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&url)
        .await
        .unwrap();
    let control = Control::detached();
    let reg = registration("snap", 200);
    let refresher = Refresher {
        store: Store::new(pool.clone()),
        control: control.clone(),
        registration: reg.clone(),
        report: Report::default,
        queues: vec!["q".into(), "other".into()],
        timeout: Duration::from_secs(2),
    };
    let ops = Actor::named("ops@host");
    store.pause(&ops, "q", "").await.unwrap();
    store.cancel(&ops, "q", "job-9", "no").await.unwrap();
    assert!(!control.is_paused("q"), "nothing before the first refresh");

    let mut waiter = control.clone();
    let wait_cancel = tokio::spawn(async move { waiter.cancelled("q", "job-9").await });
    refresher.refresh().await.unwrap();
    assert!(control.is_paused("q"));
    assert!(!control.is_paused("other"));
    let req = tokio::time::timeout(Duration::from_secs(2), wait_cancel)
        .await
        .expect("the running job hears of its cancel")
        .unwrap();
    assert_eq!(req.job_id, "job-9");
    assert!(control.status().is_ok());
    assert_eq!(store.workers().await.unwrap().len(), 1, "registered");

    control.met(&req);
    assert!(
        control.cancel_for("q", "job-9").is_none(),
        "met here: no longer matched"
    );
    refresher.refresh().await.unwrap();
    assert!(
        store.pending_cancels().await.unwrap().is_empty(),
        "written as met"
    );

    // The database goes away: the pause stays in force, the condition is reported.
    pool.close().await;
    store.resume(&ops, "q").await.unwrap();
    let err = refresher.refresh().await.unwrap_err();
    assert!(!err.is_empty());
    assert!(control.is_paused("q"), "last state kept");
    let why = control.status().unwrap_err();
    assert!(why.contains("fleet control state does not answer"), "{why}");
    assert!(why.contains("running with the state read at"), "{why}");
    drop_db(store).await;
}

async fn store_url(store: &Store) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}
