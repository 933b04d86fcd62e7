//! `worker dlq replay QUEUE [filters] [--rate N] ...`: matching entries back to their queue.

use queues::Broker;
use runtime::Config;

use super::filter::FilterArgs;
use super::scan::{self, RunFlags};
use crate::audit::DlqAction;
use crate::cmd::CliError;

/// `worker dlq replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    pub queue: String,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub flags: RunFlags,
    /// At most this many entries per second.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Checks `--rate`, replays, prints the summary.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(CliError::Usage("--rate must be above 0".into()));
    }
    scan::execute(
        broker,
        cfg,
        DlqAction::Replay,
        &args.queue,
        &args.filters,
        &args.flags,
        args.rate,
    )
    .await
}
