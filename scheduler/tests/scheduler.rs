//! Scheduler against a real PostgreSQL (lease + ledger). Jobs go to the memory broker unless a
//! test says otherwise, so enqueues can be counted exactly. Every test uses its own schedule
//! names and lease key, so tests run in parallel against one database without truncating.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queues::backends::memory::MemoryBroker;
use queues::{Consumer, Envelope, Producer};
use runtime::config::{CatchUp, Schedule};
use scheduler::{CompiledSchedule, Core, CoreOptions, Fired, Reason, tick_key};
use serde_json::json;
use sqlx::PgPool;

const DB: &str = "postgres://postgres@127.0.0.1:5432/test";
const QUEUE: &str = "maintenance";

async fn pool() -> PgPool {
    let url = std::env::var("JOBFLEET_TEST_DATABASE_URL").unwrap_or_else(|_| DB.into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
    migrations::ensure(&pool).await.unwrap();
    pool
}

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn schedule(name: &str, cron: &str, catch_up: CatchUp) -> Schedule {
    Schedule {
        name: name.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        kind: "rollup_analytics".into(),
        payload: json!({"granularity": "hour", "from": "{{tick - 1h}}", "to": "{{tick}}"}),
        queue: Some(QUEUE.into()),
        catch_up,
        run_at_start: false,
    }
}

fn core(
    pool: &PgPool,
    broker: &MemoryBroker,
    schedules: &[Schedule],
    lease_name: &str,
    lease: Duration,
) -> Arc<Core> {
    core_with(pool, broker, schedules, CoreOptions::new(lease_name, lease))
}

/// A core with given options (e.g. a controlled `started_at`).
fn core_with(
    pool: &PgPool,
    broker: &MemoryBroker,
    schedules: &[Schedule],
    opts: CoreOptions,
) -> Arc<Core> {
    let compiled = schedules
        .iter()
        .map(|s| CompiledSchedule::compile(s, None).unwrap())
        .collect();
    let producer: Arc<dyn Producer> = Arc::new(broker.clone());
    Arc::new(Core::new(compiled, pool.clone(), producer, opts))
}

/// Everything on the queue, by dedup key (count per key).
async fn drain(broker: &MemoryBroker) -> (BTreeMap<String, usize>, Vec<Envelope>) {
    let mut keys = BTreeMap::new();
    let mut all = Vec::new();
    loop {
        let got = broker
            .receive(QUEUE, 100, Duration::from_millis(20))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            let env = d.message().envelope().unwrap().clone();
            *keys
                .entry(env.dedup_key.clone().unwrap_or_default())
                .or_insert(0) += 1;
            all.push(env);
            d.ack().await.unwrap();
        }
    }
    (keys, all)
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[tokio::test]
async fn two_replicas_controlled_time_each_tick_once() {
    // nextest runs each test in its own process, so this recorder sees only this test.
    let metrics = runtime::telemetry::metrics_handle();
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("two");
    let lease = uniq("lease");
    let s = [schedule(&name, "0 * * * * *", CatchUp::Latest)];
    let a = core(&pool, &broker, &s, &lease, Duration::from_secs(5));
    let b = core(&pool, &broker, &s, &lease, Duration::from_secs(5));

    let (la, lb) = tokio::join!(a.lease_step(), b.lease_step());
    assert_ne!(la.unwrap(), lb.unwrap(), "exactly one leader");

    let base = at("2031-03-01T10:00:00Z");
    let mut expected = BTreeSet::new();
    for i in 0..6 {
        let tick = base + chrono::Duration::minutes(i);
        expected.insert(tick_key(&name, tick));
        let now = tick + chrono::Duration::milliseconds(300);
        if i == 3 {
            // Hand over mid-way: the old leader releases, the other takes over.
            let (old, new) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
            old.release().await.unwrap();
            assert!(new.lease_step().await.unwrap());
            assert!(!old.lease_step().await.unwrap());
        }
        // Both cron jobs fire and both reconcile loops run, concurrently.
        let (r1, r2, r3, r4) = tokio::join!(
            a.on_tick(&name, now),
            b.on_tick(&name, now),
            a.reconcile(now),
            b.reconcile(now)
        );
        r1.unwrap();
        r2.unwrap();
        r3.unwrap();
        r4.unwrap();
    }
    let (keys, envs) = drain(&broker).await;
    assert_eq!(keys.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    let first = envs
        .iter()
        .find(|e| e.dedup_key.as_deref() == Some(&tick_key(&name, base)))
        .unwrap();
    assert_eq!(
        first.payload,
        json!({"granularity": "hour", "from": "2031-03-01T09:00:00Z", "to": "2031-03-01T10:00:00Z"})
    );
    assert_eq!(first.kind, "rollup_analytics");

    let text = metrics.render();
    let value = |metric: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(&name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(
        value("jobfleet_scheduler_ticks_enqueued_total"),
        6.0,
        "{text}"
    );
    assert!(text.contains("jobfleet_scheduler_leader"), "{text}");
}

#[tokio::test]
async fn two_replicas_real_cron_each_tick_once() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("cron");
    let lease = uniq("lease");
    let s = [schedule(&name, "* * * * * *", CatchUp::Latest)];
    let a = core(&pool, &broker, &s, &lease, Duration::from_secs(2));
    let b = core(&pool, &broker, &s, &lease, Duration::from_secs(2));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopper = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ta = tokio::spawn(scheduler::runner::run(a.clone(), stopper(stop_rx.clone())));
    let tb = tokio::spawn(scheduler::runner::run(b.clone(), stopper(stop_rx)));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    stop_tx.send(true).unwrap();
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    let (keys, _) = drain(&broker).await;
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    assert_contiguous_seconds(&name, &keys);
    // Ledger ticks are exact cron times, all on time, one row per enqueued job.
    let rows: Vec<(DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT tick_at, reason, state FROM jobfleet.scheduler_ticks WHERE schedule = $1",
    )
    .bind(&name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), keys.len());
    for (tick, reason, state) in rows {
        assert_eq!(tick.timestamp_subsec_nanos(), 0, "{tick}");
        assert_eq!((reason.as_str(), state.as_str()), ("tick", "enqueued"));
    }
}

fn assert_contiguous_seconds(name: &str, keys: &BTreeMap<String, usize>) {
    let ticks: Vec<DateTime<Utc>> = keys
        .keys()
        .map(|k| at(k.strip_prefix(&format!("{name}@")).unwrap()))
        .collect();
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            chrono::Duration::seconds(1),
            "gap in {ticks:?}"
        );
    }
}

#[tokio::test]
async fn leader_killed_other_takes_over_within_lease() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("kill");
    let lease_name = uniq("lease");
    let lease = Duration::from_secs(2);
    let s = [schedule(&name, "* * * * * *", CatchUp::Skip)];
    let a = core(&pool, &broker, &s, &lease_name, lease);
    let b = core(&pool, &broker, &s, &lease_name, lease);
    let ta = tokio::spawn(scheduler::runner::run(a.clone(), std::future::pending()));
    tokio::time::timeout(Duration::from_secs(3), async {
        while !a.is_leader() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leads");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let tb = tokio::spawn(scheduler::runner::run(b.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(a.is_leader() && !b.is_leader());

    // Kill the leader: no release, its lease row stays until it expires.
    ta.abort();
    let killed = tokio::time::Instant::now();
    tokio::time::timeout(lease + lease / 3 + Duration::from_millis(700), async {
        while !b.is_leader() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("b takes over within the lease period (plus one renew interval)");
    let took = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop_tx.send(true).unwrap();
    tb.await.unwrap().unwrap();

    let (keys, _) = drain(&broker).await;
    assert!(keys.values().all(|&n| n == 1), "doubled: {keys:?}");
    assert_contiguous_seconds(&name, &keys);
    assert!(keys.len() >= 5, "took over after {took:?}: {keys:?}");
    let pending: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobfleet.scheduler_ticks WHERE schedule = $1 AND state = 'pending'",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending.0, 0);
}

#[tokio::test]
async fn sigterm_release_hands_over_at_once() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let lease_name = uniq("lease");
    let s = [schedule(&uniq("rel"), "0 0 * * * *", CatchUp::Latest)];
    let a = core(&pool, &broker, &s, &lease_name, Duration::from_secs(30));
    let b = core(&pool, &broker, &s, &lease_name, Duration::from_secs(30));
    assert!(a.lease_step().await.unwrap());
    assert!(!b.lease_step().await.unwrap());
    assert!(a.lease_step().await.unwrap(), "renew keeps it");
    a.release().await.unwrap();
    assert!(!a.is_leader());
    assert!(b.lease_step().await.unwrap(), "no wait for the 30 s expiry");
}

async fn missed_ticks(catch_up: CatchUp) -> BTreeMap<String, usize> {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("catch");
    let lease_name = uniq("lease");
    let s = [schedule(&name, "0 * * * *", catch_up)];
    let lease = Duration::from_secs(5);

    // First life: enqueues the 10:00 tick, then stops (releases).
    let first = core(&pool, &broker, &s, &lease_name, lease);
    assert!(first.lease_step().await.unwrap());
    assert!(matches!(
        first
            .on_tick(&name, at("2031-05-01T10:00:00Z"))
            .await
            .unwrap(),
        Fired::Enqueued(_)
    ));
    first.release().await.unwrap();

    // Down through 11:00, 12:00 and 13:00; back at 13:30.
    let mut opts = CoreOptions::new(&lease_name, lease);
    opts.started_at = at("2031-05-01T13:30:00Z");
    let second = core_with(&pool, &broker, &s, opts);
    assert!(second.lease_step().await.unwrap());
    second.reconcile(at("2031-05-01T13:30:00Z")).await.unwrap();
    second.reconcile(at("2031-05-01T13:30:05Z")).await.unwrap();
    second.reconcile(at("2031-05-01T13:45:00Z")).await.unwrap();
    // And the next on-time tick proceeds as usual.
    second
        .on_tick(&name, at("2031-05-01T14:00:00Z"))
        .await
        .unwrap();
    second.reconcile(at("2031-05-01T14:00:01Z")).await.unwrap();
    second.release().await.unwrap();
    let (keys, envs) = drain(&broker).await;
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    if catch_up == CatchUp::Latest {
        let catch = envs
            .iter()
            .find(|e| e.dedup_key.as_deref() == Some(&tick_key(&name, at("2031-05-01T13:00:00Z"))))
            .unwrap();
        assert_eq!(catch.payload["from"], "2031-05-01T12:00:00Z");
        let reason: (String,) =
            sqlx::query_as("SELECT reason FROM jobfleet.scheduler_ticks WHERE dedup_key = $1")
                .bind(catch.dedup_key.as_deref().unwrap())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(reason.0, Reason::CatchUp.as_str());
    }
    keys.into_keys()
        .map(|k| (k.split_once('@').unwrap().1.to_owned(), 1))
        .collect()
}

#[tokio::test]
async fn restart_after_three_missed_hourly_ticks_enqueues_one_catch_up() {
    let keys = missed_ticks(CatchUp::Latest).await;
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "2031-05-01T10:00:00Z",
            "2031-05-01T13:00:00Z",
            "2031-05-01T14:00:00Z"
        ]
    );
}

#[tokio::test]
async fn restart_after_three_missed_hourly_ticks_with_skip_enqueues_none() {
    let keys = missed_ticks(CatchUp::Skip).await;
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["2031-05-01T10:00:00Z", "2031-05-01T14:00:00Z"]
    );
}

#[tokio::test]
async fn new_schedule_does_not_fire_a_late_tick() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("new");
    let s = [schedule(&name, "0 * * * *", CatchUp::Latest)];
    let c = core(&pool, &broker, &s, &uniq("lease"), Duration::from_secs(5));
    assert!(c.lease_step().await.unwrap());
    c.reconcile(at("2031-05-01T13:30:00Z")).await.unwrap();
    assert!(drain(&broker).await.0.is_empty());
}

/// A real first leader on a fresh schedule: nothing back-dated to before the process started,
/// even though the on-time window (2 × lease = 6 s) reaches back further.
#[tokio::test]
async fn brand_new_schedule_first_leader_starts_at_its_next_tick() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("fresh");
    let s = [schedule(&name, "* * * * * *", CatchUp::Latest)];
    let started = Utc::now();
    let c = core(&pool, &broker, &s, &uniq("lease"), Duration::from_secs(3));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(scheduler::runner::run(c, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tokio::time::sleep(Duration::from_millis(2600)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();

    let (keys, _) = drain(&broker).await;
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    assert_contiguous_seconds(&name, &keys);
    let ticks: Vec<DateTime<Utc>> = keys
        .keys()
        .map(|k| at(k.strip_prefix(&format!("{name}@")).unwrap()))
        .collect();
    assert!(ticks.len() >= 2, "{ticks:?}");
    assert!(
        ticks[0] >= started,
        "enqueued ticks from before the process started at {started}: {ticks:?}"
    );
    // Its next tick, not a later one: the first whole second after the start.
    assert!(
        ticks[0] - started <= chrono::Duration::milliseconds(1100),
        "started at {started}, first tick {}",
        ticks[0]
    );
}

/// A restart within the on-time window: the schedule that ran before gets the tick that fell
/// while no process ran; a schedule new in this process starts at its next tick.
#[tokio::test]
async fn restart_enqueues_gap_ticks_only_for_a_schedule_that_ran_before() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let old = uniq("old");
    let new = uniq("new");
    let lease_name = uniq("lease");
    let lease = Duration::from_secs(60);

    let mut opts = CoreOptions::new(&lease_name, lease);
    opts.started_at = at("2031-06-01T09:59:30Z");
    let first = core_with(
        &pool,
        &broker,
        &[schedule(&old, "0 * * * * *", CatchUp::Skip)],
        opts,
    );
    assert!(first.lease_step().await.unwrap());
    first.reconcile(at("2031-06-01T09:59:30Z")).await.unwrap();
    for now in ["2031-06-01T10:00:00.2Z", "2031-06-01T10:01:00.2Z"] {
        first.on_tick(&old, at(now)).await.unwrap();
    }
    first.release().await.unwrap();

    // Restarted at 10:02:40 with a schedule added: 10:02 fell while no process ran.
    let s = [
        schedule(&old, "0 * * * * *", CatchUp::Skip),
        schedule(&new, "0 * * * * *", CatchUp::Latest),
    ];
    let mut opts = CoreOptions::new(&lease_name, lease);
    opts.started_at = at("2031-06-01T10:02:40Z");
    let second = core_with(&pool, &broker, &s, opts);
    assert!(second.lease_step().await.unwrap());
    second.reconcile(at("2031-06-01T10:02:40Z")).await.unwrap();
    for name in [&old, &new] {
        second
            .on_tick(name, at("2031-06-01T10:03:00.2Z"))
            .await
            .unwrap();
    }
    second.reconcile(at("2031-06-01T10:03:05Z")).await.unwrap();
    second.release().await.unwrap();

    let (keys, _) = drain(&broker).await;
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    let expected: BTreeSet<String> = [
        (&old, "2031-06-01T10:00:00Z"),
        (&old, "2031-06-01T10:01:00Z"),
        (&old, "2031-06-01T10:02:00Z"),
        (&old, "2031-06-01T10:03:00Z"),
        (&new, "2031-06-01T10:03:00Z"),
    ]
    .into_iter()
    .map(|(n, t)| tick_key(n, at(t)))
    .collect();
    assert_eq!(keys.into_keys().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn pending_tick_left_by_a_crash_is_resent_unchanged() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("crash");
    let lease_name = uniq("lease");
    let lease = Duration::from_secs(2);
    let s = [schedule(&name, "0 * * * *", CatchUp::Latest)];
    let tick = at("2031-05-01T10:00:00Z");

    // The crashed leader got as far as claiming the tick, never sent it.
    let crashed = core(&pool, &broker, &s, &lease_name, lease);
    assert!(crashed.lease_step().await.unwrap());
    let env = Envelope::new("rollup_analytics", QUEUE, json!({"x": 1}))
        .with_dedup_key(tick_key(&name, tick));
    let claim = crashed
        .ledger()
        .claim(
            &name,
            tick,
            Reason::Tick,
            &env,
            crashed.lease().holder(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(claim, scheduler::ledger::Claim::Claimed);

    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let next = core(&pool, &broker, &s, &lease_name, lease);
    assert!(next.lease_step().await.unwrap(), "expired lease is taken");
    // Same tick comes due again: the pending claim is re-sent, not doubled.
    next.reconcile(tick + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let (keys, envs) = drain(&broker).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(envs[0].id, env.id, "the exact claimed envelope");
    assert_eq!(envs[0].payload, json!({"x": 1}));
}

#[tokio::test]
async fn run_at_start_once_and_trigger() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("start");
    let lease_name = uniq("lease");
    let mut sched = schedule(&name, "0 0 3 * * *", CatchUp::Latest);
    sched.kind = "ensure_partitions".into();
    sched.payload = json!({"table": "jobfleet.events", "months_ahead": 3});
    sched.run_at_start = true;
    let s = [sched];
    let now = at("2031-05-01T13:30:20Z");
    let a = core(&pool, &broker, &s, &lease_name, Duration::from_secs(5));
    assert!(a.lease_step().await.unwrap());
    a.reconcile(now).await.unwrap();
    a.reconcile(now + chrono::Duration::seconds(5))
        .await
        .unwrap();
    a.release().await.unwrap();
    // A replica taking over in the same minute does not repeat it.
    let b = core(&pool, &broker, &s, &lease_name, Duration::from_secs(5));
    assert!(b.lease_step().await.unwrap());
    b.reconcile(now + chrono::Duration::seconds(10))
        .await
        .unwrap();
    b.release().await.unwrap();
    let (keys, _) = drain(&broker).await;
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        [&format!("{name}@start@2031-05-01T13:30:00Z")]
    );

    // Trigger: no leadership needed, one job per call.
    let c = core(&pool, &broker, &s, &lease_name, Duration::from_secs(5));
    let Fired::Enqueued(id) = c.trigger(&name, now).await.unwrap() else {
        panic!("trigger enqueues")
    };
    assert!(matches!(
        c.trigger("nope", now).await,
        Err(scheduler::SchedulerError::UnknownSchedule(_))
    ));
    let (keys, envs) = drain(&broker).await;
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0].id, id);
    assert!(
        keys.keys()
            .next()
            .unwrap()
            .starts_with(&format!("{name}@manual@"))
    );

    let rows = c.overview(now, 3).await.unwrap();
    assert_eq!(rows[0].next.len(), 3);
    assert_eq!(rows[0].next[0], at("2031-05-02T03:00:00Z"));
    assert_eq!(rows[0].last.as_ref().unwrap().reason, "manual");
    let table = scheduler::list::render_table(&rows, None);
    assert!(
        table.contains(&name) && table.contains("2031-05-04T03:00:00Z"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&scheduler::list::render_json(&rows, Some("me"))).unwrap();
    assert_eq!(json["schedules"][0]["name"], name);
}

#[tokio::test]
async fn fenced_claim_fails_without_the_lease() {
    let pool = pool().await;
    let broker = MemoryBroker::new();
    let name = uniq("fence");
    let lease_name = uniq("lease");
    let s = [schedule(&name, "0 * * * *", CatchUp::Latest)];
    let a = core(&pool, &broker, &s, &lease_name, Duration::from_secs(5));
    let b = core(&pool, &broker, &s, &lease_name, Duration::from_secs(5));
    assert!(a.lease_step().await.unwrap());
    // `a` is deposed behind its back (as if its lease had expired and `b` took it).
    sqlx::query(
        "UPDATE jobfleet.scheduler_leases SET expires_at = now() - interval '1 s' WHERE name = $1",
    )
    .bind(&lease_name)
    .execute(&pool)
    .await
    .unwrap();
    assert!(b.lease_step().await.unwrap());
    assert!(a.is_leader(), "a's local view has not caught up yet");
    let fired = a.on_tick(&name, at("2031-05-01T10:00:00Z")).await.unwrap();
    assert_eq!(fired, Fired::NotLeader);
    assert!(!a.is_leader(), "a stops acting as leader at once");
    assert!(drain(&broker).await.0.is_empty());
}
