//! `worker dlq list|show|replay|purge`: inspect a queue's dead-letter queue, move entries back
//! to their queue, or delete them. The filter flags are defined once ([`filter`]); replay and
//! purge share one scan with progress, interruption and the audit record ([`scan`]).

pub mod filter;
pub mod list;
pub mod purge;
pub mod replay;
pub mod scan;
pub mod show;

use chrono::{DateTime, Utc};
use runtime::Config;

use crate::cmd::CliError;

/// `worker dlq <command>`.
#[derive(clap::Subcommand)]
pub enum DlqCmd {
    /// List entries, oldest first.
    List(list::Args),
    /// One entry: envelope and error history.
    Show(show::Args),
    /// Move matching entries back to their queue (attempts reset, history kept). Safe to
    /// interrupt (Ctrl-C) and re-run: an entry leaves the DLQ only after its copy is written.
    Replay(replay::Args),
    /// Delete matching entries for good (needs --yes).
    Purge(purge::Args),
}

impl DlqCmd {
    /// Connects and runs the command.
    pub async fn execute(self, cfg: &Config) -> Result<(), CliError> {
        let broker = crate::app::connect(cfg).await?;
        match self {
            DlqCmd::List(a) => list::execute(&*broker, cfg, &a).await,
            DlqCmd::Show(a) => show::execute(&*broker, cfg, &a).await,
            DlqCmd::Replay(a) => replay::execute(&*broker, cfg, &a).await,
            DlqCmd::Purge(a) => purge::execute(&*broker, cfg, &a).await,
        }
    }
}

/// A time in the tables: `2026-11-22 10:00:00Z`, or `-`.
fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}
