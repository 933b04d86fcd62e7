//! The control loop and the budget, end to end through a running worker on the memory backend
//! under paused tokio time (so minutes of sampling take milliseconds and are deterministic).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Runs, Sleep, config};
use jobs::{Registry, RetryPolicy};
use queues::backends::memory::MemoryBroker;
use queues::conformance::unique_queue;
use queues::{Envelope, Inspector, Producer};
use runtime::config::Priority;
use serde_json::json;
use worker::stats::SnapshotSource;
use worker::{Shutdown, Worker};

fn registry(runs: &Runs) -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Sleep(runs.clone())), RetryPolicy::default());
    r
}

async fn burst(broker: &MemoryBroker, queue: &str, n: usize, ms: u64) {
    let envs: Vec<Envelope> = (0..n)
        .map(|_| Envelope::new("sleep", queue, json!({ "ms": ms })))
        .collect();
    broker.send_batch(&envs).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn burst_raises_to_max_within_two_intervals_and_drain_falls_back_after_cooldown() {
    let q = unique_queue("burst");
    let mut cfg = config(&[(&q, Priority::Default, 1, 20)]);
    cfg.worker.sample_interval = Duration::from_secs(2);
    cfg.worker.scale_down_cooldown = Duration::from_secs(30);
    cfg.worker.receive_wait = Duration::from_secs(1);
    let interval = cfg.worker.sample_interval;
    let cooldown = cfg.worker.scale_down_cooldown;
    let broker = MemoryBroker::new();
    let runs = Runs::default();
    let w = Worker::new(cfg, Arc::new(broker.clone()), registry(&runs));
    let view = w.view();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(w.run(shutdown.clone()));

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(view.snapshot()[0].target, 1, "an idle queue keeps min");

    burst(&broker, &q, 10_000, 100).await;
    tokio::time::sleep(2 * interval).await;
    let s = &view.snapshot()[0];
    assert_eq!((s.target, s.granted), (20, 20), "{s:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(view.snapshot()[0].running, 20, "all slots in use");

    // 10,000 jobs of 100 ms on 20 slots: about 50 s of (virtual) time.
    let t0 = tokio::time::Instant::now();
    loop {
        let d = broker.depth(&q).await.unwrap();
        if d.backlog() == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(runs.total(), 10_000);
    assert_eq!(view.snapshot()[0].target, 20, "no drop before the cooldown");
    tokio::time::sleep(cooldown + 2 * interval).await;
    let s = &view.snapshot()[0];
    assert_eq!((s.target, s.granted), (1, 1), "{s:?}");
    assert_eq!(s.succeeded, 10_000);

    shutdown.trigger();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.handed_back, 0);
}

#[tokio::test(start_paused = true)]
async fn contended_budget_serves_critical_first_without_starving_bulk() {
    let crit = unique_queue("crit");
    let bulk = unique_queue("bulk");
    let mut cfg = config(&[
        (&crit, Priority::Critical, 1, 8),
        (&bulk, Priority::Bulk, 2, 8),
    ]);
    cfg.worker.budget = 6;
    let broker = MemoryBroker::new();
    let runs = Runs::default();
    let w = Worker::new(cfg.clone(), Arc::new(broker.clone()), registry(&runs));
    let view = w.view();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(w.run(shutdown.clone()));

    // Bulk is flooded first and grabs what it can; then critical work arrives.
    burst(&broker, &bulk, 500, 60_000).await;
    tokio::time::sleep(3 * cfg.worker.sample_interval).await;
    let by_queue = |q: &str| view.snapshot().into_iter().find(|s| s.queue == q).unwrap();
    assert_eq!(
        by_queue(&bulk).granted,
        5,
        "uncontended bulk takes the free budget"
    );
    burst(&broker, &crit, 500, 60_000).await;
    tokio::time::sleep(3 * cfg.worker.sample_interval).await;
    let (c, b) = (by_queue(&crit), by_queue(&bulk));
    assert_eq!(
        (c.target, c.granted),
        (8, 4),
        "critical gets all but bulk's min: {c:?}"
    );
    assert_eq!((b.target, b.granted), (8, 2), "bulk keeps its min: {b:?}");
    assert_eq!(
        (c.running, b.running),
        (1, 5),
        "the process budget holds while bulk's extra jobs run on"
    );
    // As bulk's extra jobs finish, critical takes their slots.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (c, b) = (by_queue(&crit), by_queue(&bulk));
    assert_eq!((c.running, b.running), (4, 2), "{c:?} {b:?}");

    shutdown.trigger();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.handed_back, 6, "60 s jobs outlive a 5 s grace");
    let d = broker.depth(&crit).await.unwrap();
    let done = by_queue(&crit).succeeded;
    assert_eq!(d.in_flight, 0, "handed back");
    assert_eq!(d.visible + done, 500, "none lost");
}
