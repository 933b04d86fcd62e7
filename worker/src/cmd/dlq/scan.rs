//! The scan `replay` and `purge` share: the run flags, a progress bar on a terminal, stopping
//! after the current entry on the first Ctrl-C, the audit record (a row of the fleet's audit
//! log, written before the scan and completed with its counts after, plus the log line and the
//! optional `--audit-log` file), and the summary. A replay also deletes the cancel requests of
//! the jobs it brings back, so the replayed copies run.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use chrono::Utc;
use fleet::audit::{Action, Entry};
use fleet::{Actor, Store};
use serde_json::json;
use indicatif::{ProgressBar, ProgressStyle};
use queues::dlq::{DlqFilter, ScanObserver, ScanOptions, ScanReport};
use queues::{Broker, DlqEntry};
use runtime::{Config, Shutdown};

use super::filter::FilterArgs;
use crate::audit::{AuditRecord, DlqAction};
use crate::cmd::{CliError, check_queue};

/// The arguments `replay` and `purge` share: which entries, and how to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    pub queue: String,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Stop after this many matching entries.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Count what would happen; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Append an audit record (JSON line) to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a replay or purge shows progress, where its audit line goes, and what stops it.
#[derive(Debug, Clone, Default)]
pub struct DlqRunOptions {
    pub scan: ScanOptions,
    /// Draw a progress bar on stderr (the binary sets this only on a terminal).
    pub progress: bool,
    /// Append the audit record as one JSON line to this file.
    pub audit_log: Option<PathBuf>,
    /// Once triggered (Ctrl-C), stop after the current entry; re-running continues.
    pub interrupt: Option<Shutdown>,
    /// The fleet's control state: the audit row goes there, and a replay clears the cancel
    /// requests of what it brings back. Required for anything but a dry run from the CLI.
    pub fleet: Option<(Store, Actor)>,
}

/// Runs `action` from the command line: first Ctrl-C stops after the current entry, a second
/// exits at once; prints the summary; some failed entries make it exit 1.
pub(super) async fn execute(
    broker: &dyn Broker,
    cfg: &Config,
    action: DlqAction,
    args: &ScanArgs,
    rate: Option<f64>,
) -> Result<(), CliError> {
    let filter = args.filters.parse()?;
    check_queue(cfg, &args.queue)?;
    // Nothing happens unless it can be recorded: no audit row, no replay or purge.
    let fleet = if args.dry_run {
        None
    } else {
        let store = crate::app::fleet_store(cfg).await?;
        Some((store, Actor::operator(&runtime::host::hostname())))
    };
    let interrupt = Shutdown::new();
    interrupt.on_signals(|| {
        eprintln!("interrupted: finishing the current entry (Ctrl-C again to quit now)");
    });
    let opts = DlqRunOptions {
        scan: ScanOptions {
            limit: args.limit,
            dry_run: args.dry_run,
            rate,
            ..Default::default()
        },
        progress: std::io::stderr().is_terminal() && !args.json,
        audit_log: args.audit_log.clone(),
        interrupt: Some(interrupt),
        fleet,
    };
    let record = run(broker, cfg, action, &args.queue, &filter, &opts).await?;
    println!("{}", render(&record, args.json));
    if record.report.failed > 0 {
        return Err(CliError::Failed(format!(
            "{} entries failed; they stay in the DLQ (re-run to retry)",
            record.report.failed
        )));
    }
    Ok(())
}

struct Progress {
    bar: Option<ProgressBar>,
    interrupt: Option<Shutdown>,
    /// Job ids written back to the queue (replay).
    written: Vec<String>,
}

impl ScanObserver for Progress {
    fn progress(&mut self, r: &ScanReport) {
        if let Some(b) = &self.bar {
            b.set_position(r.scanned);
            b.set_message(format!(
                "matched {} done {} skipped {} failed {}",
                r.matched, r.done, r.skipped, r.failed
            ));
        }
    }

    fn written(&mut self, e: &DlqEntry) -> ControlFlow<()> {
        if let Some(env) = &e.envelope {
            self.written.push(env.id.clone());
        }
        match &self.interrupt {
            Some(i) if i.is_triggered() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Runs the generic DLQ replay or purge with progress, then writes the audit record (log, and
/// the audit file when given).
pub async fn run(
    broker: &dyn Broker,
    cfg: &Config,
    action: DlqAction,
    queue: &str,
    filter: &DlqFilter,
    opts: &DlqRunOptions,
) -> Result<AuditRecord, CliError> {
    check_queue(cfg, queue)?;
    let bar = if opts.progress {
        let total = broker.depth(queue).await?.dead_lettered;
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let fleet_action = match action {
        DlqAction::Replay => Action::DlqReplay,
        DlqAction::Purge => Action::DlqPurge,
    };
    let audit_id = match (&opts.fleet, opts.scan.dry_run) {
        (Some((store, actor)), false) => Some(
            store
                .audit(&Entry {
                    actor: actor.clone(),
                    action: fleet_action,
                    target: queue.to_owned(),
                    detail: json!({
                        "filter": filter.describe(),
                        "limit": opts.scan.limit,
                        "rate": opts.scan.rate,
                    }),
                    counts: None,
                })
                .await
                .map_err(|e| CliError::Failed(format!("{e}; nothing was changed")))?,
        ),
        _ => None,
    };
    let mut observer = Progress {
        bar: bar.clone(),
        interrupt: opts.interrupt.clone(),
        written: Vec::new(),
    };
    let result = match action {
        DlqAction::Replay => {
            queues::dlq::replay(broker, queue, filter, &opts.scan, &mut observer).await
        }
        DlqAction::Purge => {
            queues::dlq::purge(broker, queue, filter, &opts.scan, &mut observer).await
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut cleared = 0;
    if let Some((store, _)) = &opts.fleet
        && action == DlqAction::Replay
        && !observer.written.is_empty()
    {
        match store.clear_cancels(queue, &observer.written).await {
            Ok(n) => cleared = n,
            Err(e) => tracing::warn!(error = %e, "could not clear the cancel requests of the replayed jobs; a replayed job cancelled earlier may be cancelled again"),
        }
    }
    if let (Some((store, _)), Some(id), Ok(rep)) = (&opts.fleet, audit_id, &result) {
        let counts = json!({
            "scanned": rep.scanned,
            "matched": rep.matched,
            "done": rep.done,
            "skipped": rep.skipped,
            "failed": rep.failed,
            "interrupted": rep.interrupted,
            "cancels_cleared": cleared,
        });
        if let Err(e) = store.audit_counts(id, &counts).await {
            tracing::warn!(error = %e, audit_id = id, "could not record the counts in the audit log");
        }
    }
    let record = AuditRecord {
        at: Utc::now(),
        user: crate::audit::user(),
        host: runtime::host::hostname(),
        action,
        queue: queue.to_owned(),
        filter: filter.describe(),
        dry_run: opts.scan.dry_run,
        limit: opts.scan.limit,
        rate: opts.scan.rate,
        report: result?,
    };
    record.write(opts.audit_log.as_deref())?;
    Ok(record)
}

/// The summary printed after a replay or purge (or its JSON).
pub fn render(r: &AuditRecord, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(r).expect("record serializes");
    }
    let rep = &r.report;
    let verb = match (r.action, r.dry_run) {
        (DlqAction::Replay, false) => "replayed",
        (DlqAction::Replay, true) => "would replay",
        (DlqAction::Purge, false) => "purged",
        (DlqAction::Purge, true) => "would purge",
    };
    let done = if r.dry_run {
        rep.matched - rep.skipped
    } else {
        rep.done
    };
    let mut s = format!(
        "{}: {verb} {done}, skipped {}, failed {} (scanned {}, matched {}; filter: {})",
        r.queue, rep.skipped, rep.failed, rep.scanned, rep.matched, r.filter
    );
    if rep.skipped > 0 && r.action == DlqAction::Replay {
        s += "\nskipped entries are malformed bodies that can't run; inspect them with `worker dlq show` and purge them";
    }
    if rep.failed > 0 {
        s += "\nfailed entries stay in the DLQ; re-run the same command to retry them";
    }
    if rep.interrupted {
        s += "\ninterrupted: re-run the same command to continue (nothing was lost)";
    }
    s
}
