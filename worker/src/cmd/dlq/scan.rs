//! The scan `replay` and `purge` share: the run flags, a progress bar on a terminal, stopping
//! after the current entry on the first Ctrl-C, the audit record, and the summary.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use chrono::Utc;
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

    fn written(&mut self, _e: &DlqEntry) -> ControlFlow<()> {
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
    let mut observer = Progress {
        bar: bar.clone(),
        interrupt: opts.interrupt.clone(),
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
