//! `worker dlq purge QUEUE [filters] ... --yes`: matching entries deleted for good.

use queues::Broker;
use runtime::Config;

use super::scan::{self, ScanArgs};
use crate::audit::DlqAction;
use crate::cmd::CliError;

/// `worker dlq purge` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Really delete.
    #[arg(long)]
    pub yes: bool,
}

/// Refuses without `--yes` (unless a dry run), purges, prints the summary.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    if !args.yes && !args.scan.dry_run {
        return Err(CliError::Usage(format!(
            "purge deletes dead-lettered jobs for good; add --yes to do it (or --dry-run to count first): worker dlq purge {} ... --yes",
            args.scan.queue
        )));
    }
    scan::execute(broker, cfg, DlqAction::Purge, &args.scan, None).await
}
