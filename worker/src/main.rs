//! The `worker` binary: argument parsing, signals, printing and exit codes. Everything else is
//! in the library (`worker::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use worker::cli::{self, CliError, DlqAction};
use worker::{Config, Shutdown};

#[derive(Parser)]
#[command(name = "worker", version, about = "jobfleet worker and operator CLI")]
struct Cli {
    /// Config file (TOML); default: $JOBFLEET_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pools until SIGTERM/SIGINT (a second signal exits at once).
    Run,
    /// Apply the database migrations (jobs' tables, queue tables).
    Migrate {
        /// Only list applied and pending migrations.
        #[arg(long)]
        status: bool,
    },
    /// Depth of every configured queue, and the running worker's pool target when it answers.
    Queues {
        #[arg(long)]
        json: bool,
    },
    /// Enqueue one job.
    Enqueue {
        /// Job kind, e.g. embed_document.
        kind: String,
        /// Payload as JSON, e.g. '{"document_id": 42}'.
        #[arg(long)]
        payload: String,
        /// Queue; default: the kind's entry under [routes].
        #[arg(long)]
        queue: Option<String>,
        /// Run no earlier than this from now, e.g. 30s, 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<std::time::Duration>,
        /// De-duplication key.
        #[arg(long)]
        dedup_key: Option<String>,
        /// Attempts before the job is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// A one-minute tour: migrate, enqueue one job of every kind plus one that fails, run them,
    /// print the results, the queue table and the DLQ entry.
    Demo,
    /// The nearest embedded chunks to a query (semantic search).
    Search(worker::cmd_search::SearchArgs), // [vector search, issue 14]
    /// Inspect, replay or purge a queue's dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
}

#[derive(clap::Args, Clone, Default)]
struct Filters {
    /// Only this job kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only entries whose reason or error history matches this regex.
    #[arg(long)]
    error: Option<String>,
    /// Dead-lettered at or after: RFC 3339 or an age like 2h.
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age like 30m.
    #[arg(long)]
    until: Option<String>,
    /// Only entries that failed at least this many times.
    #[arg(long)]
    min_attempts: Option<u32>,
}

impl Filters {
    fn args(&self) -> cli::FilterArgs {
        cli::FilterArgs {
            kind: self.kind.clone(),
            error: self.error.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            min_attempts: self.min_attempts,
        }
    }
}

#[derive(clap::Args, Clone)]
struct RunFlags {
    /// Stop after this many matching entries.
    #[arg(long)]
    limit: Option<u64>,
    /// Count what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Append an audit record (JSON line) to this file.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List entries, oldest first.
    List {
        queue: String,
        #[command(flatten)]
        filters: Filters,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One entry: envelope and error history.
    Show {
        queue: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move matching entries back to their queue (attempts reset, history kept). Safe to
    /// interrupt (Ctrl-C) and re-run: an entry leaves the DLQ only after its copy is written.
    Replay {
        queue: String,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        flags: RunFlags,
        /// At most this many entries per second.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Delete matching entries for good (needs --yes).
    Purge {
        queue: String,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        flags: RunFlags,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, CliError> {
    let path = worker::config::config_path(path);
    let cfg = Config::load(path.as_deref())?;
    worker::telemetry::init_tracing(&cfg.log);
    Ok(cfg)
}

async fn dispatch(args: Cli) -> Result<(), CliError> {
    let cfg = load(args.config.as_deref())?;
    match args.cmd {
        Cmd::Run => {
            let shutdown = Shutdown::new();
            spawn_signal_handler(shutdown.clone());
            cli::run(cfg, shutdown).await?;
        }
        Cmd::Migrate { status } => {
            let list = if status {
                cli::migrate_status(&cfg).await?
            } else {
                cli::migrate(&cfg).await?
            };
            println!("{}", cli::render_migrations(&list));
        }
        Cmd::Queues { json } => {
            let broker = cli::connect(&cfg).await?;
            let targets = cli::live_targets(cfg.worker.admin_addr).await;
            let rows = cli::queues(&*broker, &cfg, &targets).await?;
            println!("{}", cli::render_queues(&rows, json));
        }
        Cmd::Enqueue {
            kind,
            payload,
            queue,
            delay,
            dedup_key,
            max_attempts,
        } => {
            let broker = cli::connect(&cfg).await?;
            let registry = cli::build_registry(&cfg)?;
            let env = cli::enqueue(
                &*broker,
                &cfg,
                &registry,
                &cli::EnqueueArgs {
                    kind,
                    payload,
                    queue,
                    delay,
                    dedup_key,
                    max_attempts,
                },
            )
            .await?;
            println!("enqueued {} ({}) on {}", env.id, env.kind, env.queue);
        }
        Cmd::Demo => println!("{}", worker::demo::run(cfg).await?),
        Cmd::Search(a) => println!("{}", worker::cmd_search::run(&cfg, &a).await?), // [issue 14]
        Cmd::Dlq { cmd } => dlq(cfg, cmd).await?,
    }
    Ok(())
}

async fn dlq(cfg: Config, cmd: DlqCmd) -> Result<(), CliError> {
    let broker = cli::connect(&cfg).await?;
    match cmd {
        DlqCmd::List {
            queue,
            filters,
            limit,
            json,
        } => {
            let filter = filters.args().parse()?;
            let entries = cli::dlq_list(&*broker, &cfg, &queue, &filter, limit).await?;
            println!("{}", cli::render_dlq_list(&entries, json));
        }
        DlqCmd::Show { queue, id, json } => {
            let entry = cli::dlq_show(&*broker, &cfg, &queue, &id).await?;
            println!("{}", cli::render_dlq_show(&entry, json));
        }
        DlqCmd::Replay {
            queue,
            filters,
            flags,
            rate,
        } => {
            if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
                return Err(CliError::Usage("--rate must be above 0".into()));
            }
            run_dlq(
                &*broker,
                &cfg,
                DlqAction::Replay,
                &queue,
                &filters,
                &flags,
                rate,
            )
            .await?;
        }
        DlqCmd::Purge {
            queue,
            filters,
            flags,
            yes,
        } => {
            if !yes && !flags.dry_run {
                return Err(CliError::Usage(format!(
                    "purge deletes dead-lettered jobs for good; add --yes to do it (or --dry-run to count first): worker dlq purge {queue} ... --yes"
                )));
            }
            run_dlq(
                &*broker,
                &cfg,
                DlqAction::Purge,
                &queue,
                &filters,
                &flags,
                None,
            )
            .await?;
        }
    }
    Ok(())
}

async fn run_dlq(
    broker: &dyn queues::Broker,
    cfg: &Config,
    action: DlqAction,
    queue: &str,
    filters: &Filters,
    flags: &RunFlags,
    rate: Option<f64>,
) -> Result<(), CliError> {
    let filter = filters.args().parse()?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the current entry (Ctrl-C again to quit now)");
            flag.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let opts = cli::DlqRunOptions {
        scan: queues::dlq::ScanOptions {
            limit: flags.limit,
            dry_run: flags.dry_run,
            rate,
            ..Default::default()
        },
        progress: std::io::stderr().is_terminal() && !flags.json,
        audit_log: flags.audit_log.clone(),
        interrupt: Some(interrupt),
    };
    let record = cli::dlq_run(broker, cfg, action, queue, &filter, &opts).await?;
    println!("{}", cli::render_dlq_summary(&record, flags.json));
    if record.report.failed > 0 {
        return Err(CliError::Failed(format!(
            "{} entries failed; they stay in the DLQ (re-run to retry)",
            record.report.failed
        )));
    }
    Ok(())
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit now (jobs still running come back after
/// their visibility timeout).
fn spawn_signal_handler(shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if n == 0 {
                tracing::info!("signal received: draining (send it again to exit at once)");
                shutdown.trigger();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}
