//! `worker dlq replay QUEUE [filters] [--rate N] ...`: matching entries back to their queue.

use queues::Broker;
use runtime::Config;

use super::scan::{self, ScanArgs};
use crate::audit::DlqAction;
use crate::cmd::CliError;

/// `worker dlq replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub scan: ScanArgs,
    /// At most this many entries per second.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Checks `--rate`, replays, prints the summary.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(CliError::Usage("--rate must be above 0".into()));
    }
    scan::execute(broker, cfg, DlqAction::Replay, &args.scan, args.rate).await
}
