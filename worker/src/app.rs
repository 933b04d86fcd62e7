//! Start-up wiring, written once: load the config (and decode the job sections), connect the
//! broker and the database within `[worker] connect_timeout` (a worker never starts blind),
//! build the registry or only the payload checks, and assemble a running worker with its admin
//! port, its health monitor and CloudWatch publisher. `worker run` and `worker demo` start the worker
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

/// Connects to the configured broker within `[worker] connect_timeout`; the error names the
/// backend, the URL (password hidden) and what to check.
pub async fn connect(cfg: &Config) -> Result<Arc<dyn Broker>, CliError> {
    Ok(runtime::health::broker::connect(&cfg.broker(), cfg.worker.connect_timeout).await?)
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

/// The fleet's control state on the jobs' database, for the operator commands: connected
/// within `[worker] connect_timeout`, with the tables brought up to date (`worker migrate`'s
/// migrator), so a command fails at once, naming the database, when it cannot be reached.
pub async fn fleet_store(cfg: &Config) -> Result<fleet::Store, CliError> {
    let url = &cfg.database.url;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(cfg.worker.connect_timeout)
        .connect(url)
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot reach the fleet's control state (the jobs' database at {}): {e}; is it running? check [database] url / JOBFLEET_DATABASE_URL",
                queues::error::redact_url(url)
            ))
        })?;
    migrations::ensure(&pool)
        .await
        .map_err(|e| CliError::Failed(format!("fleet control state: {e}")))?;
    Ok(fleet::Store::new(pool))
}

/// The control state a `worker run` follows: a small pool of its own, connected lazily so an
/// outage never holds the worker up (its refresher then runs on the last state it read).
async fn worker_fleet_store(cfg: &Config) -> Result<fleet::Store, CliError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(cfg.worker.connect_timeout)
        .connect_lazy(&cfg.database.url)
        .map_err(|e| {
            CliError::Usage(format!(
                "database.url is not usable: {e} (set [database] url or JOBFLEET_DATABASE_URL)"
            ))
        })?;
    // The tables may be missing where the broker is not PostgreSQL and `worker migrate` was
    // never run; an unreachable database is the refresher's to report.
    match tokio::time::timeout(cfg.worker.connect_timeout, migrations::ensure(&pool)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("fleet control state tables not checked: {e}"),
        Err(_) => tracing::warn!("fleet control state tables not checked: no answer in time"),
    }
    Ok(fleet::Store::new(pool))
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

/// The start-up check of `jobs.vector.dimensions` against the chunk column and the provider:
/// a mismatch stops the worker (naming both numbers); an unreachable database only warns,
/// since the jobs retry until it is back.
pub async fn check_vectors(cfg: &Config, settings: &JobSettings) -> Result<(), CliError> {
    // Short: a database that is down must not hold up the start, only a wrong setup should.
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&cfg.database.url)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("vector storage not checked at start: {e}");
            return Ok(());
        }
    };
    match jobs::vector::check_configured(&pool, &settings.jobs).await {
        Ok(storage) => {
            tracing::info!(?storage, "chunk embedding storage");
            Ok(())
        }
        Err(e @ jobs::vector::VectorError::Mismatch(_)) => Err(CliError::Usage(e.to_string())),
        Err(e) => {
            tracing::warn!("vector storage not checked at start: {e}");
            Ok(())
        }
    }
}

/// What runs beside the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// The admin port, and the CloudWatch publisher when `[cloudwatch] enabled`: `worker run`.
    Everything,
    /// The pools only (`worker demo`, which must not take the admin port of a running worker).
    PoolsOnly,
}

/// A worker ready to start: config, broker, registry and the database connection its health
/// monitor keeps.
pub struct App {
    cfg: Config,
    broker: Arc<dyn Broker>,
    registry: Registry,
    database: sqlx::PgConnection,
}

impl App {
    /// Connects the broker, builds the registry and connects the jobs' database, each within
    /// `[worker] connect_timeout`.
    pub async fn new(cfg: Config, settings: &JobSettings) -> Result<App, CliError> {
        let broker = connect(&cfg).await?;
        let registry = build_registry(&cfg, settings)?;
        // The handlers' pool connects lazily; without this, an unreachable database would
        // only show as every job failing.
        let database =
            runtime::health::database::connect(&cfg.database.url, cfg.worker.connect_timeout)
                .await?;
        Ok(App {
            cfg,
            broker,
            registry,
            database,
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
            database,
        } = self;
        let admin_addr = cfg.worker.admin_addr;
        let cloudwatch = cfg.cloudwatch.clone();
        let queue_names: Vec<String> = cfg.queues.keys().cloned().collect();
        let db_url = cfg.database.url.clone();
        let cfg_fleet = cfg.clone();
        let worker = Worker::new(cfg, broker.clone(), registry);
        worker.health().watch(
            runtime::health::database::SERVICE,
            &db_url,
            runtime::health::database::prober(&db_url, Some(database)),
        );
        if serve == Serve::PoolsOnly {
            return Ok(worker.run(shutdown).await?);
        }
        let worker = worker.with_fleet(worker_fleet_store(&cfg_fleet).await?);
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
            .map_err(|e| CliError::Usage(format!("[cloudwatch]: {e}")))?
            .with_control(worker.control());
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
