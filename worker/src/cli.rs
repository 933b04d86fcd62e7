//! What the `worker` subcommands do, as library functions that return data or rendered text, so
//! tests call them directly and `main.rs` only parses arguments, prints and picks the exit code.

use std::sync::Arc;

use jobs::Registry;
use queues::{Broker, QueueError};

use crate::config::{Config, ConfigError};
use crate::worker::{DrainReport, Shutdown, Worker, WorkerError};

/// Why a command failed. [`CliError::exit_code`] maps it to 1 (the operation failed) or 2
/// (usage or configuration: fix the command line or the file).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is missing, unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line value is wrong.
    #[error("{0}")]
    Usage(String),
    /// The broker or database said no.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The worker could not start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Anything else that went wrong while doing the work.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// 2 for usage and config errors, 1 for failed operations.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Queue(QueueError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// Connects to the configured broker; the error names the backend and URL.
pub async fn connect(cfg: &Config) -> Result<Arc<dyn Broker>, CliError> {
    Ok(queues::connect(&cfg.broker()).await?)
}

/// The kinds this process runs: the built-in handlers on the application database, the
/// `[retry.<kind>]` overrides, and the diagnostic kinds when the environment asks for them.
pub fn build_registry(cfg: &Config) -> Result<Registry, CliError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .connect_lazy(&cfg.database.url)
        .map_err(|e| {
            CliError::Usage(format!(
                "database.url is not usable: {e} (set [database] url or JOBFLEET_DATABASE_URL)"
            ))
        })?;
    let mut registry =
        jobs::registry(pool, &cfg.jobs).map_err(|e| CliError::Usage(e.to_string()))?;
    if crate::diag::enabled() {
        crate::diag::register(&mut registry);
        tracing::warn!("diagnostic job kinds (diag_sleep, diag_fail) are enabled");
    }
    for (kind, policy) in &cfg.retry {
        if !registry.set_policy(kind, policy.clone()) {
            tracing::warn!(%kind, "[retry.{kind}] names a kind this worker does not run; ignored");
        }
    }
    Ok(registry)
}

/// `worker run`: serves admin HTTP and runs the pools until `shutdown` is triggered.
pub async fn run(cfg: Config, shutdown: Shutdown) -> Result<DrainReport, CliError> {
    let broker = connect(&cfg).await?;
    let registry = build_registry(&cfg)?;
    let admin_addr = cfg.worker.admin_addr;
    let worker = Worker::new(cfg, broker, registry);
    worker.serve_admin(admin_addr, &shutdown).await?;
    Ok(worker.run(shutdown).await?)
}
