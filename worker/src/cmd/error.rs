//! Why a subcommand failed, and the exit code that says so.

use queues::QueueError;
use runtime::ConfigError;
use runtime::health::{StartError, Unreachable};

use crate::worker::WorkerError;

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
    /// A service the command needs (broker, database) did not answer at start.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The worker could not start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Anything else that went wrong while doing the work.
    #[error("{0}")]
    Failed(String),
}

impl From<StartError<QueueError>> for CliError {
    fn from(e: StartError<QueueError>) -> Self {
        match e {
            StartError::Fatal(e) => CliError::Queue(e),
            StartError::Unreachable(u) => CliError::Unreachable(u),
        }
    }
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
