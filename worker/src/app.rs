//! Start-up wiring, written once: load the config (and decode the job sections), connect the
//! broker, build the registry or only the payload checks, and assemble a running worker with
//! its admin port and CloudWatch publisher. `worker run` and `worker demo` start the worker
//! through [`App`]; the operator commands take what they need from here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobs::{Registry, Validators};
use queues::Broker;
use runtime::{Config, Shutdown};

use crate::cmd::CliError;
use crate::config::JobSettings;
use crate::worker::{DrainReport, Worker};

/// Reads the config (`--config`, else `JOBFLEET_CONFIG`, else defaults), sets up logging, and
/// decodes the job sections, so a bad `[jobs]` or `[retry]` key fails every command alike.
pub fn load(flag: Option<&Path>) -> Result<(Config, JobSettings), CliError> {
    let path = runtime::config::config_path(flag);
    let cfg = Config::load(path.as_deref())?;
    runtime::telemetry::init_tracing(&cfg.log);
    let settings = JobSettings::from_config(&cfg)?;
    Ok((cfg, settings))
}

/// Connects to the configured broker; the error names the backend and URL.
pub async fn connect(cfg: &Config) -> Result<Arc<dyn Broker>, CliError> {
    Ok(queues::connect(&cfg.broker()).await?)
}

/// The kinds this process runs: the built-in handlers on the application database (this is
/// where the embedding provider, and so its API key, is needed), the `[retry.<kind>]`
/// overrides, and the diagnostic kinds when the environment asks for them.
pub fn build_registry(cfg: &Config, settings: &JobSettings) -> Result<Registry, CliError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .connect_lazy(&cfg.database.url)
        .map_err(|e| {
            CliError::Usage(format!(
                "database.url is not usable: {e} (set [database] url or JOBFLEET_DATABASE_URL)"
            ))
        })?;
    let mut registry =
        jobs::registry(pool.clone(), &settings.jobs).map_err(|e| CliError::Usage(e.to_string()))?;
    if crate::diag::enabled() {
        crate::diag::register(&mut registry);
        crate::diag::register_record(&mut registry, pool);
        tracing::warn!("diagnostic job kinds (diag_sleep, diag_fail, diag_record) are enabled");
    }
    for (kind, policy) in &settings.retry {
        if !registry.set_policy(kind, policy.clone()) {
            tracing::warn!(%kind, "[retry.{kind}] names a kind this worker does not run; ignored");
        }
    }
    Ok(registry)
}

/// The payload checks of the kinds `build_registry` would run, without building any handler:
/// no database pool, no embedding provider.
pub fn validators(settings: &JobSettings) -> Result<Validators, CliError> {
    let mut v = jobs::validators(&settings.jobs).map_err(|e| CliError::Usage(e.to_string()))?;
    if crate::diag::enabled() {
        v.extend(crate::diag::validators());
    }
    Ok(v)
}

/// What runs beside the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// The admin port, and the CloudWatch publisher when `[cloudwatch] enabled`: `worker run`.
    Everything,
    /// The pools only (`worker demo`, which must not take the admin port of a running worker).
    PoolsOnly,
}

/// A worker ready to start: config, broker and registry.
pub struct App {
    cfg: Config,
    broker: Arc<dyn Broker>,
    registry: Registry,
}

impl App {
    /// Connects the broker and builds the registry.
    pub async fn new(cfg: Config, settings: &JobSettings) -> Result<App, CliError> {
        let broker = connect(&cfg).await?;
        let registry = build_registry(&cfg, settings)?;
        Ok(App {
            cfg,
            broker,
            registry,
        })
    }

    /// The broker, for callers that also enqueue or inspect.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    /// Runs the pools (and what `serve` adds) until `shutdown` is triggered. The CloudWatch
    /// publisher's final flush happens after the drain, so the jobs finished during the grace
    /// period are counted.
    pub async fn run(self, shutdown: Shutdown, serve: Serve) -> Result<DrainReport, CliError> {
        let App {
            cfg,
            broker,
            registry,
        } = self;
        let admin_addr = cfg.worker.admin_addr;
        let cloudwatch = cfg.cloudwatch.clone();
        let queue_names: Vec<String> = cfg.queues.keys().cloned().collect();
        let worker = Worker::new(cfg, broker.clone(), registry);
        if serve == Serve::PoolsOnly {
            return Ok(worker.run(shutdown).await?);
        }
        worker.serve_admin(admin_addr, &shutdown).await?;
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let publisher = if cloudwatch.enabled {
            let p = crate::cloudwatch::Publisher::new(
                &cloudwatch,
                broker,
                Arc::new(worker.view()),
                queue_names,
            )
            .await
            .map_err(|e| CliError::Usage(format!("[cloudwatch]: {e}")))?;
            Some(Arc::new(p).spawn(async move {
                let _ = drained_rx.await;
            }))
        } else {
            None
        };
        let report = worker.run(shutdown).await?;
        let _ = drained_tx.send(());
        if let Some(task) = publisher {
            // The flush is one bounded call; don't let a dead endpoint hold the exit much longer.
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        Ok(report)
    }
}
