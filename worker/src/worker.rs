//! The running worker: one pool per configured queue, the control loop that sizes them, and
//! the graceful drain an Auto Scaling scale-in relies on (stop receiving, let in-flight jobs
//! finish within the grace period, hand the rest back, return). With the fleet's control state
//! attached ([`Worker::with_fleet`]) it also registers itself, reports its pools and the jobs
//! it is running every sample interval, and follows the fleet's pauses and cancels from a
//! snapshot refreshed beside the pools (`fleet::snapshot`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet::limits::Limiter;
use fleet::registry::{MAX_RUNNING_REPORTED, PoolReport, Registration, Report};
use fleet::snapshot::Refresher;
use fleet::{Control, Store};
use jobs::Registry;
use queues::{Broker, QueueError};
use tokio::sync::watch;

use runtime::admin::{self, ReadyCheck};
use runtime::health::Health;
use runtime::{Config, Shutdown};

use crate::control::control_loop;
use crate::pool::{Pool, Shared};
use crate::runner::Runner;
use crate::stats::{PoolSnapshot, SnapshotSource};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Declaring a queue failed (broker down, no permission).
    #[error("cannot declare queue `{queue}`: {source}")]
    Declare {
        queue: String,
        #[source]
        source: QueueError,
    },
    /// The admin port could not be opened.
    #[error(transparent)]
    Admin(#[from] std::io::Error),
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs still running when the grace period ran out (handed back to the queue).
    pub handed_back: usize,
}

/// The pools' live figures; cheap to clone, usable after [`Worker::run`] took the worker.
#[derive(Clone)]
pub struct PoolsView {
    pools: Arc<Vec<Arc<Pool>>>,
}

impl SnapshotSource for PoolsView {
    fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.pools.iter().map(|p| p.snapshot()).collect()
    }
}

impl PoolsView {
    /// Whether every pool's receive loop is up.
    pub fn all_receiving(&self) -> bool {
        self.pools.iter().all(|p| p.is_receiving())
    }

    /// The queues whose last receive failed, with the error: on a Redis Cluster one shard can
    /// be down while the pools of queues on the others carry on.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.pools
            .iter()
            .filter_map(|p| p.receive_error().map(|e| (p.queue.clone(), e)))
            .collect()
    }
}

/// A worker process's job machinery.
pub struct Worker {
    cfg: Config,
    broker: Arc<dyn Broker>,
    runner: Arc<Runner>,
    pools: Arc<Vec<Arc<Pool>>>,
    health: Health,
    control: Control,
    fleet: Option<Store>,
    limiter: Limiter,
}

impl Worker {
    /// Builds the pools of `cfg.queues`, running the kinds in `registry`, with no limits.
    pub fn new(cfg: Config, broker: Arc<dyn Broker>, registry: Registry) -> Self {
        Worker::with_limiter(cfg, broker, registry, Limiter::off())
    }

    /// [`Worker::new`], every job taking its permits from `limiter` (fleet-wide limits), whose
    /// lease loop runs as long as the worker does, drain included.
    pub fn with_limiter(
        cfg: Config,
        broker: Arc<dyn Broker>,
        registry: Registry,
        limiter: Limiter,
    ) -> Self {
        let id = cfg
            .worker
            .id
            .clone()
            .unwrap_or_else(runtime::host::process_id);
        let shared = Shared::new(cfg.worker.budget);
        let pools = cfg
            .queues
            .iter()
            .map(|(name, q)| Arc::new(Pool::new(name.clone(), q.clone(), shared.clone())))
            .collect();
        let health = Health::new();
        health.watch(
            runtime::health::broker::SERVICE,
            &broker.url(),
            runtime::health::broker::prober(broker.clone()),
        );
        let control = Control::detached();
        Worker {
            runner: Arc::new(
                Runner::new(Arc::new(registry), id)
                    .with_control(control.clone())
                    .with_limiter(limiter.clone()),
            ),
            cfg,
            broker,
            pools: Arc::new(pools),
            health,
            control,
            fleet: None,
            limiter,
        }
    }

    /// Joins the fleet whose control state is in `store`: registry row (with the jobs running
    /// here), pauses, cancels. Without it the worker runs alone (nothing paused, nothing
    /// cancelled, no list of running jobs kept).
    pub fn with_fleet(mut self, store: Store) -> Self {
        self.fleet = Some(store);
        self.runner.running().enable();
        self
    }

    /// The fleet snapshot the pools and the runner follow.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The services this worker needs, probed every `worker.sample_interval` while it runs;
    /// the broker is already there, the caller adds the others (the jobs' database).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The worker id in error histories.
    pub fn id(&self) -> &str {
        self.runner.worker_id()
    }

    /// Live figures of the pools.
    pub fn view(&self) -> PoolsView {
        PoolsView {
            pools: self.pools.clone(),
        }
    }

    /// `/readyz`: every service answered its last probe, the fleet's control state its last
    /// refresh, and every pool is receiving; a 503 names each queue whose receives fail (the
    /// others keep being served meanwhile).
    pub fn ready_check(&self) -> ReadyCheck {
        let health = self.health.clone();
        let view = self.view();
        let control = self.control.clone();
        Arc::new(move || {
            let status = health.status();
            let control = control.status();
            let view = view.clone();
            Box::pin(async move {
                match (status, control) {
                    (Ok(()), Ok(())) => {}
                    (Err(a), Err(b)) => return Err(format!("{a}; {b}")),
                    (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
                }
                if !view.all_receiving() {
                    return Err("pools are not running (starting up or draining)".into());
                }
                let failing = view.failing();
                if !failing.is_empty() {
                    let list: Vec<String> = failing
                        .iter()
                        .map(|(q, e)| format!("queue `{q}` cannot receive: {e}"))
                        .collect();
                    return Err(list.join("; "));
                }
                Ok(())
            })
        })
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` on `addr` until `shutdown` (plus the drain) is
    /// over. Returns the bound address.
    pub async fn serve_admin(
        &self,
        addr: SocketAddr,
        shutdown: &Shutdown,
    ) -> Result<SocketAddr, WorkerError> {
        let handle = runtime::telemetry::metrics_handle();
        let s = shutdown.clone();
        let (bound, _task) =
            admin::serve(
                addr,
                handle,
                self.ready_check(),
                async move { s.wait().await },
            )
            .await?;
        tracing::info!(%bound, "admin HTTP listening (/healthz /readyz /metrics)");
        Ok(bound)
    }

    /// Declares the queues, runs until `shutdown` is triggered, then drains: no new receives,
    /// in-flight jobs get `worker.shutdown_grace` to finish, the rest are handed back. A queue
    /// the broker refuses to declare stops the start; one it cannot reach right now (a Redis
    /// Cluster shard that is down) is declared by its pool once it can, and the other queues
    /// are served meanwhile.
    pub async fn run(self, shutdown: Shutdown) -> Result<DrainReport, WorkerError> {
        for p in self.pools.iter() {
            match p.ensure_declared(&*self.broker).await {
                Ok(()) => {}
                Err(e) if e.is_unreachable() => {
                    tracing::warn!(queue = %p.queue, error = %e, "cannot declare the queue yet; its pool retries, the others start");
                }
                Err(source) => {
                    return Err(WorkerError::Declare {
                        queue: p.queue.clone(),
                        source,
                    });
                }
            }
        }
        let w = &self.cfg.worker;
        let (abort_tx, abort_rx) = watch::channel(false);
        let stop = shutdown.subscribe();
        tracing::info!(
            worker_id = %self.id(),
            backend = self.broker.backend(),
            url = %self.broker.url(),
            queues = ?self.pools.iter().map(|p| p.queue.as_str()).collect::<Vec<_>>(),
            budget = w.budget,
            "worker started"
        );
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let refresher = match &self.fleet {
            Some(store) => Some(self.join_fleet(store.clone(), &shutdown, drained_rx).await),
            None => None,
        };
        let s = shutdown.clone();
        let monitor = tokio::spawn(self.health.clone().monitor(
            w.sample_interval,
            w.connect_timeout,
            async move { s.wait().await },
        ));
        // Until the drain is over: running jobs keep their slots leased fleet-wide.
        let (limiter_stop, limiter_stopped) = tokio::sync::oneshot::channel::<()>();
        let limiter = tokio::spawn(self.limiter.clone().run(async move {
            let _ = limiter_stopped.await;
        }));
        let control = tokio::spawn(control_loop(
            self.broker.clone(),
            self.pools.to_vec(),
            w.budget,
            w.sample_interval,
            w.scale_down_cooldown,
            stop.clone(),
        ));
        let loops: Vec<_> = self
            .pools
            .iter()
            .map(|p| {
                tokio::spawn(p.clone().receive_loop(
                    self.broker.clone(),
                    self.runner.clone(),
                    w.receive_wait,
                    stop.clone(),
                    abort_rx.clone(),
                    self.control.clone(),
                ))
            })
            .collect();

        shutdown.wait().await;
        // The grace period counts from the signal, not from the end of the receives under way.
        let deadline = tokio::time::Instant::now() + w.shutdown_grace;
        let running: usize = self.pools.iter().map(|p| p.running()).sum();
        tracing::info!(running, grace = ?w.shutdown_grace, "shutting down: no new jobs; waiting for running ones");
        let pools = self.pools.clone();
        let mut loops = tokio::spawn(async move {
            for l in loops {
                let _ = l.await;
            }
            let _ = control.await;
            let _ = monitor.await;
        });
        let mut loops_done = false;
        let drain = async {
            let _ = (&mut loops).await;
            loops_done = true;
            futures::future::join_all(pools.iter().map(|p| p.idle())).await;
        };
        let mut report = DrainReport::default();
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            report.handed_back = self.pools.iter().map(|p| p.running()).sum();
            tracing::warn!(
                handed_back = report.handed_back,
                "grace period over; handing the remaining jobs back"
            );
            abort_tx.send_replace(true);
            // Hand-back is one broker call per job; bound it so a dead broker can't hang exit.
            let rest = async {
                if !loops_done {
                    let _ = (&mut loops).await;
                }
                futures::future::join_all(self.pools.iter().map(|p| p.idle())).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), rest).await;
        }
        // The registry row goes last: until here the fleet sees this worker draining.
        let _ = drained_tx.send(());
        if let Some(task) = refresher {
            let _ = tokio::time::timeout(w.connect_timeout + Duration::from_secs(1), task).await;
        }
        let _ = limiter_stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), limiter).await;
        tracing::info!(handed_back = report.handed_back, "worker stopped");
        Ok(report)
    }

    /// Registers in the fleet and reads its state once before the pools start (a restarted
    /// worker must not receive from a paused queue), then keeps both fresh every sample
    /// interval until `drained`. An unreachable control state does not stop the start.
    async fn join_fleet(
        &self,
        store: Store,
        shutdown: &Shutdown,
        drained: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let w = &self.cfg.worker;
        let view = self.view();
        let running = self.runner.running().clone();
        let draining = shutdown.clone();
        let refresher = Refresher {
            store: store.clone(),
            control: self.control.clone(),
            registration: Registration {
                instance: uuid::Uuid::new_v4(),
                worker_id: self.id().to_owned(),
                host: runtime::host::hostname(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                backend: self.broker.backend().to_owned(),
                started_at: chrono::Utc::now(),
                interval_ms: w.sample_interval.as_millis() as u64,
            },
            report: move || {
                let (running, running_omitted) = running.report(MAX_RUNNING_REPORTED);
                Report {
                    draining: draining.is_triggered(),
                    pools: view.snapshot().into_iter().map(pool_report).collect(),
                    running,
                    running_omitted,
                }
            },
            queues: self.pools.iter().map(|p| p.queue.clone()).collect(),
            timeout: w.connect_timeout,
        };
        if let Err(e) = tokio::time::timeout(w.connect_timeout, store.forget_lost()).await {
            tracing::debug!("registry clean-up skipped: {e}");
        }
        // A failure is logged by the refresher; the pools then start with nothing paused.
        if refresher.refresh().await.is_ok() {
            let paused: Vec<String> = self.control.state().paused.keys().cloned().collect();
            tracing::info!(?paused, "joined the fleet's control state");
        }
        tokio::spawn(refresher.run(w.sample_interval, async move {
            let _ = drained.await;
        }))
    }
}

fn pool_report(p: PoolSnapshot) -> PoolReport {
    PoolReport {
        queue: p.queue,
        target: p.target,
        granted: p.granted,
        running: p.running,
        succeeded: p.succeeded,
        failed: p.failed,
        dead_lettered: p.dead_lettered,
    }
}
