//! `scheduler run`: wires tokio-cron-scheduler, the lease loop, the signals, the admin port and
//! the health monitor around the [`Core`]; and the bounded start-up connects every command uses.
//!
//! Each schedule becomes one tokio-cron-scheduler job whose only work is
//! `core.on_tick(name, now)`: the precise, low-latency path. Independently, every lease/3 the
//! lease loop renews (or tries to take) the lease and, while leader, runs `core.reconcile(now)`,
//! which catches what the cron jobs can't see: ticks that fell during a failover, catch-up after
//! downtime, ticks a crashed leader left pending, and the start-up jobs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use queues::{Broker, Producer};
use runtime::health::{self, Health, StartError};
use runtime::{Config, Shutdown};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::SchedulerError;
use crate::core::{Core, CoreOptions};
use crate::schedule::CompiledSchedule;

/// Connects to `database.url` with the few connections the scheduler needs, first checking
/// within `[scheduler] connect_timeout` that the database answers (the error names it, its
/// URL with the password hidden, and what to check).
pub async fn connect_db(cfg: &Config) -> Result<PgPool, SchedulerError> {
    let url = &cfg.database.url;
    health::database::connect(url, cfg.scheduler.connect_timeout).await?;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(url)?)
}

/// Connects the broker within `[scheduler] connect_timeout`.
pub async fn connect_broker(cfg: &Config) -> Result<Arc<dyn Broker>, SchedulerError> {
    health::broker::connect(&cfg.broker(), cfg.scheduler.connect_timeout)
        .await
        .map_err(|e| match e {
            StartError::Fatal(e) => SchedulerError::Queue(e),
            StartError::Unreachable(u) => SchedulerError::Unreachable(u),
        })
}

/// Builds the core with a given producer (tests; [`NoSend`] for read-only commands).
pub fn build_core_with(
    cfg: &Config,
    pool: PgPool,
    lease_name: &str,
    producer: Arc<dyn Producer>,
) -> Result<Arc<Core>, SchedulerError> {
    let schedules = CompiledSchedule::compile_all(cfg)?;
    Ok(Arc::new(Core::new(
        schedules,
        pool,
        producer,
        CoreOptions::new(lease_name, cfg.scheduler.lease),
    )))
}

/// A producer for commands that only read (`scheduler list`), so they work while the broker
/// is down.
pub struct NoSend;

#[async_trait::async_trait]
impl Producer for NoSend {
    async fn send(&self, envelope: &queues::Envelope) -> queues::Result<queues::Sent> {
        Err(queues::QueueError::Config(format!(
            "this command does not enqueue (job {})",
            envelope.id
        )))
    }
}

/// `scheduler run`: the admin port, the health monitor of the database and the broker (every
/// lease/3, when the lease is renewed anyway), and [`run`] until the first SIGTERM/Ctrl-C (a
/// second one exits at once with 130: the shared `runtime::Shutdown` path).
pub async fn serve(
    cfg: &Config,
    core: Arc<Core>,
    broker: Arc<dyn Broker>,
) -> Result<(), SchedulerError> {
    let shutdown = Shutdown::new();
    shutdown.on_signals(|| {
        tracing::info!("signal received: stopping (send it again to exit at once)");
    });
    let health = Health::new();
    let url = &cfg.database.url;
    health.watch(
        health::database::SERVICE,
        url,
        health::database::prober(url, None),
    );
    health.watch(
        health::broker::SERVICE,
        &broker.url(),
        health::broker::prober(broker),
    );
    // The admin port and the monitor stop after the loops, so /healthz answers while the
    // lease is let go.
    let admin_stop = Shutdown::new();
    let stopped = admin_stop.clone();
    let monitor = tokio::spawn(health.clone().monitor(
        core.lease().duration() / 3,
        cfg.scheduler.connect_timeout,
        async move { stopped.wait().await },
    ));
    let stopped = admin_stop.clone();
    let (addr, admin) = runtime::admin::serve(
        cfg.scheduler.admin_addr,
        runtime::telemetry::metrics_handle(),
        health.ready_check(),
        async move { stopped.wait().await },
    )
    .await?;
    tracing::info!(%addr, "admin HTTP listening");
    run(core, shutdown.wait()).await?;
    admin_stop.trigger();
    let _ = admin.await;
    let _ = monitor.await;
    Ok(())
}

/// Runs the cron jobs and the lease loop until `shutdown` resolves, then stops the cron jobs
/// and releases the lease so another replica takes over at once.
pub async fn run(
    core: Arc<Core>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let mut cron = JobScheduler::new().await?;
    for s in core.schedules() {
        let name = s.name().to_owned();
        let c = core.clone();
        let job = Job::new_async_tz(s.expression.as_str(), s.tz, move |_id, _sched| {
            let c = c.clone();
            let name = name.clone();
            Box::pin(async move {
                match c.on_tick(&name, Utc::now()).await {
                    Ok(fired) => tracing::debug!(schedule = %name, %fired, "cron tick"),
                    // The reconcile loop retries the tick; an error here only delays it.
                    Err(e) => tracing::warn!(schedule = %name, error = %e, "cron tick failed"),
                }
            })
        })
        .map_err(|e| SchedulerError::InvalidSchedule {
            name: s.name().to_owned(),
            message: format!("tokio-cron-scheduler rejected `{}`: {e}", s.expression),
        })?;
        cron.add(job).await?;
    }
    cron.start().await?;
    tracing::info!(
        schedules = core.schedules().len(),
        lease = core.lease().name(),
        holder = core.lease().holder(),
        "scheduler running"
    );

    // Renewing runs on its own so a slow broker send in reconcile can never delay it past
    // the lease; reconcile runs every lease/3 and at once when we become leader.
    let step = core.lease().duration() / 3;
    let became_leader = tokio::sync::Notify::new();
    let lease_loop = async {
        let mut every = tokio::time::interval(step);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let was = core.is_leader();
            match core.lease_step().await {
                Ok(true) if !was => became_leader.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease renew failed"),
            }
        }
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reconcile_loop = async {
        let mut every = tokio::time::interval(step);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = became_leader.notified() => {}
                _ = stop_rx.wait_for(|s| *s) => return,
            }
            // Not cancelled midway on shutdown: a claimed tick gets sent.
            if let Err(e) = core.reconcile(Utc::now()).await {
                tracing::warn!(error = %e, "reconcile failed");
            }
        }
    };
    let stopper = async {
        tokio::select! {
            () = lease_loop => {}
            () = shutdown => {}
        }
        let _ = stop_tx.send(true);
    };
    tokio::join!(stopper, reconcile_loop);
    tracing::info!("shutting down: stopping cron jobs and releasing the lease");
    if let Err(e) = cron.shutdown().await {
        tracing::warn!(error = %e, "stopping tokio-cron-scheduler");
    }
    core.release().await
}
