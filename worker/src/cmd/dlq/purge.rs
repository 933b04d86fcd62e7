//! `worker dlq purge QUEUE [filters] ... --yes`: matching entries deleted for good.

use queues::Broker;
use runtime::Config;

use super::filter::FilterArgs;
use super::scan::{self, RunFlags};
use crate::audit::DlqAction;
use crate::cmd::CliError;

/// `worker dlq purge` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    pub queue: String,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub flags: RunFlags,
    /// Really delete.
    #[arg(long)]
    pub yes: bool,
}

/// Refuses without `--yes` (unless a dry run), purges, prints the summary.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    if !args.yes && !args.flags.dry_run {
        return Err(CliError::Usage(format!(
            "purge deletes dead-lettered jobs for good; add --yes to do it (or --dry-run to count first): worker dlq purge {} ... --yes",
            args.queue
        )));
    }
    scan::execute(
        broker,
        cfg,
        DlqAction::Purge,
        &args.queue,
        &args.filters,
        &args.flags,
        None,
    )
    .await
}
