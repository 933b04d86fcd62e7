//! What the `worker` subcommands do, as library functions that return data or rendered text, so
//! tests call them directly and `main.rs` only parses arguments, prints and picks the exit code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use jobs::Registry;
use queues::dlq::{DlqFilter, ScanObserver, ScanOptions, ScanReport};
use queues::{Broker, DlqEntry, Envelope, QueueError};
use regex::Regex;
use serde::Serialize;

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

/// [vector search, issue 14] The start-up check of `jobs.vector.dimensions` against the chunk
/// column and the provider: a mismatch stops the worker (naming both numbers); an unreachable
/// database only warns, since the jobs retry until it is back.
async fn check_vectors(cfg: &Config) -> Result<(), CliError> {
    // Short: a database that is down must not hold up the start (the jobs retry until it is
    // back), only a wrong setup should stop it.
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&cfg.database.url)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("vector storage not checked at start: {e}");
            return Ok(());
        }
    };
    match jobs::vector::check_configured(&pool, &cfg.jobs).await {
        Ok(storage) => {
            tracing::info!(?storage, "chunk embedding storage");
            Ok(())
        }
        Err(e @ jobs::vector::VectorError::Mismatch(_)) => Err(CliError::Usage(e.to_string())),
        Err(e) => {
            tracing::warn!("vector storage not checked at start: {e}");
            Ok(())
        }
    }
}

/// `worker run`: serves admin HTTP, publishes to CloudWatch when enabled, and runs the pools
/// until `shutdown` is triggered. The CloudWatch publisher's final flush happens after the
/// drain, so the jobs finished during the grace period are counted.
pub async fn run(cfg: Config, shutdown: Shutdown) -> Result<DrainReport, CliError> {
    let broker = connect(&cfg).await?;
    let registry = build_registry(&cfg)?;
    check_vectors(&cfg).await?; // [vector search, issue 14]
    let admin_addr = cfg.worker.admin_addr;
    let cloudwatch = cfg.cloudwatch.clone();
    let queue_names: Vec<String> = cfg.queues.keys().cloned().collect();
    let worker = Worker::new(cfg, broker.clone(), registry);
    worker.serve_admin(admin_addr, &shutdown).await?;
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = if cloudwatch.enabled {
        let p = crate::cloudwatch::Publisher::new(
            &cloudwatch,
            broker,
            Arc::new(worker.view()),
            queue_names,
        )
        .await
        .map_err(|e| CliError::Usage(format!("[cloudwatch]: {e}")))?;
        Some(Arc::new(p).spawn(async move {
            let _ = drained_rx.await;
        }))
    } else {
        None
    };
    let report = worker.run(shutdown).await?;
    let _ = drained_tx.send(());
    if let Some(task) = publisher {
        // The flush is one bounded call; don't let a dead endpoint hold the exit much longer.
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    Ok(report)
}

fn check_queue(cfg: &Config, queue: &str) -> Result<(), CliError> {
    if cfg.queues.contains_key(queue) {
        return Ok(());
    }
    let known: Vec<&str> = cfg.queues.keys().map(String::as_str).collect();
    Err(CliError::Usage(format!(
        "queue `{queue}` is not configured (configured: {}); check the name, or pass the worker's --config",
        known.join(", ")
    )))
}

/// A time on the command line: RFC 3339 (`2026-11-22T10:00:00Z`) or an age like `2h`, `30m`,
/// `1d 6h` (that long ago).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        CliError::Usage(format!(
            "`{s}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or an age like 2h, 30m, 7d"
        ))
    })?;
    let ago = chrono::Duration::from_std(ago)
        .map_err(|_| CliError::Usage(format!("`{s}` is too far back")))?;
    Ok(Utc::now() - ago)
}

/// The DLQ filters as typed on the command line.
#[derive(Debug, Clone, Default)]
pub struct FilterArgs {
    /// `--kind`.
    pub kind: Option<String>,
    /// `--error` (a regex over the reason and the error history).
    pub error: Option<String>,
    /// `--since`.
    pub since: Option<String>,
    /// `--until`.
    pub until: Option<String>,
    /// `--min-attempts`.
    pub min_attempts: Option<u32>,
}

impl FilterArgs {
    /// Parses into a [`DlqFilter`]; a bad regex or time is a usage error.
    pub fn parse(&self) -> Result<DlqFilter, CliError> {
        let error = self
            .error
            .as_deref()
            .map(|r| {
                Regex::new(r)
                    .map_err(|e| CliError::Usage(format!("--error `{r}` is not a regex: {e}")))
            })
            .transpose()?;
        let since = self.since.as_deref().map(parse_time).transpose()?;
        let until = self.until.as_deref().map(parse_time).transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(CliError::Usage("--since must be before --until".into()));
        }
        Ok(DlqFilter {
            kind: self.kind.clone(),
            error,
            since,
            until,
            min_attempts: self.min_attempts,
        })
    }
}

// ---- worker queues ----------------------------------------------------------------------

/// One line of `worker queues`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueRow {
    pub queue: String,
    pub priority: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_lettered: u64,
    /// Seconds.
    pub oldest_age: Option<f64>,
    /// The running worker's current target, when one answers on the configured admin port.
    pub pool_target: Option<usize>,
}

/// Depth of every configured queue, with live pool targets when `targets` has them.
pub async fn queues(
    broker: &dyn Broker,
    cfg: &Config,
    targets: &BTreeMap<String, usize>,
) -> Result<Vec<QueueRow>, CliError> {
    let mut rows = Vec::new();
    for (name, q) in &cfg.queues {
        let d = broker.depth(name).await?;
        rows.push(QueueRow {
            queue: name.clone(),
            priority: q.priority.as_str().to_owned(),
            visible: d.visible,
            in_flight: d.in_flight,
            delayed: d.delayed,
            dead_lettered: d.dead_lettered,
            oldest_age: d.oldest_age.map(|a| a.as_secs_f64()),
            pool_target: targets.get(name).copied(),
        });
    }
    Ok(rows)
}

/// Reads `jobfleet_pool_target` from a worker's `/metrics` at `addr` (best effort: empty when
/// nothing answers within half a second).
pub async fn live_targets(addr: SocketAddr) -> BTreeMap<String, usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        Some(buf)
    };
    let Ok(Some(text)) = tokio::time::timeout(Duration::from_millis(500), fetch).await else {
        return BTreeMap::new();
    };
    parse_targets(&text)
}

/// Pulls `jobfleet_pool_target{queue="q"} N` lines out of Prometheus text.
pub fn parse_targets(text: &str) -> BTreeMap<String, usize> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("jobfleet_pool_target{")?;
            let (labels, value) = rest.split_once("} ")?;
            let queue = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("queue=\""))?
                .trim_end_matches('"');
            Some((queue.to_owned(), value.trim().parse::<f64>().ok()? as usize))
        })
        .collect()
}

fn age(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| {
        humantime::format_duration(Duration::from_secs(s as u64)).to_string()
    })
}

/// The table (or JSON) of `worker queues`.
pub fn render_queues(rows: &[QueueRow], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).expect("rows serialize");
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "queue",
        "priority",
        "visible",
        "in-flight",
        "delayed",
        "DLQ",
        "oldest",
        "pool target",
    ]);
    for r in rows {
        t.add_row(vec![
            r.queue.clone(),
            r.priority.clone(),
            r.visible.to_string(),
            r.in_flight.to_string(),
            r.delayed.to_string(),
            r.dead_lettered.to_string(),
            age(r.oldest_age),
            r.pool_target.map_or("-".into(), |t| t.to_string()),
        ]);
    }
    t.to_string()
}

// ---- worker enqueue ---------------------------------------------------------------------

/// `worker enqueue` arguments.
#[derive(Debug, Clone, Default)]
pub struct EnqueueArgs {
    pub kind: String,
    /// The payload as JSON text.
    pub payload: String,
    pub queue: Option<String>,
    pub delay: Option<Duration>,
    pub dedup_key: Option<String>,
    pub max_attempts: Option<u32>,
}

/// Builds the envelope (queue from `[routes]` when not given; payload checked by the kind's
/// own validation when this build knows the kind) and sends it.
pub async fn enqueue(
    broker: &dyn Broker,
    cfg: &Config,
    registry: &Registry,
    args: &EnqueueArgs,
) -> Result<Envelope, CliError> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| CliError::Usage(format!("--payload is not JSON: {e}")))?;
    let queue = match (&args.queue, cfg.route(&args.kind)) {
        (Some(q), _) => q.clone(),
        (None, Some(q)) => q.to_owned(),
        (None, None) => {
            return Err(CliError::Usage(format!(
                "no --queue given and [routes] has no queue for kind `{}`; pass --queue or add a route",
                args.kind
            )));
        }
    };
    check_queue(cfg, &queue)?;
    match registry.get(&args.kind) {
        Some(reg) => reg
            .handler
            .validate(&payload)
            .map_err(|e| CliError::Usage(format!("payload rejected by `{}`: {e}", args.kind)))?,
        None => {
            let known: Vec<&str> = registry.kinds().collect();
            return Err(CliError::Usage(format!(
                "unknown job kind `{}` (known: {}); a worker would dead-letter it",
                args.kind,
                known.join(", ")
            )));
        }
    }
    let mut env = Envelope::new(args.kind.clone(), queue, payload);
    if let Some(d) = args.delay {
        let d = chrono::Duration::from_std(d)
            .map_err(|_| CliError::Usage("--delay is too long".into()))?;
        env = env.with_run_at(Utc::now() + d);
    }
    if let Some(k) = &args.dedup_key {
        env = env.with_dedup_key(k.clone());
    }
    if let Some(n) = args.max_attempts {
        if n == 0 {
            return Err(CliError::Usage("--max-attempts must be at least 1".into()));
        }
        env = env.with_max_attempts(n);
    }
    broker.send(&env).await?;
    Ok(env)
}

// ---- worker dlq list / show -------------------------------------------------------------

/// Up to `limit` DLQ entries of `queue` that match `filter`, oldest first.
pub async fn dlq_list(
    broker: &dyn Broker,
    cfg: &Config,
    queue: &str,
    filter: &DlqFilter,
    limit: usize,
) -> Result<Vec<DlqEntry>, CliError> {
    check_queue(cfg, queue)?;
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = broker.dlq_list(queue, 200, cursor.as_deref()).await?;
        for e in page.entries {
            if out.len() >= limit {
                return Ok(out);
            }
            if filter.matches(&e) {
                out.push(e);
            }
        }
        match page.next_cursor {
            Some(c) if out.len() < limit => cursor = Some(c),
            _ => return Ok(out),
        }
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

/// The table (or JSON) of `worker dlq list`.
pub fn render_dlq_list(entries: &[DlqEntry], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(entries).expect("entries serialize");
    }
    if entries.is_empty() {
        return "no matching entries".into();
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["id", "kind", "attempts", "dead-lettered", "reason"]);
    for e in entries {
        let (kind, attempts) =
            e.envelope
                .as_ref()
                .map_or(("(malformed)".into(), "-".into()), |env| {
                    (
                        env.kind.clone(),
                        format!("{}/{}", env.attempt, env.max_attempts),
                    )
                });
        t.add_row(vec![
            e.id.clone(),
            kind,
            attempts,
            when(e.dead_lettered_at),
            one_line(&e.reason, 80),
        ]);
    }
    t.to_string()
}

/// One DLQ entry by id.
pub async fn dlq_show(
    broker: &dyn Broker,
    cfg: &Config,
    queue: &str,
    id: &str,
) -> Result<DlqEntry, CliError> {
    check_queue(cfg, queue)?;
    broker.dlq_get(queue, id).await?.ok_or_else(|| {
        CliError::Failed(format!(
            "no entry `{id}` in the DLQ of `{queue}` (list them with `worker dlq list {queue}`)"
        ))
    })
}

/// `worker dlq show`: the envelope and its error history, readable (or the raw JSON).
pub fn render_dlq_show(e: &DlqEntry, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(e).expect("entry serializes");
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("id", e.id.clone());
    line("queue", e.queue.clone());
    line("dead-lettered", when(e.dead_lettered_at));
    line("reason", e.reason.clone());
    let Some(env) = &e.envelope else {
        line("body", format!("(not a valid envelope) {}", e.body));
        return out;
    };
    line("kind", env.kind.clone());
    line(
        "attempts",
        format!("{} of {}", env.attempt, env.max_attempts),
    );
    line("enqueued", when(Some(env.enqueued_at)));
    if let Some(k) = &env.dedup_key {
        line("dedup key", k.clone());
    }
    line(
        "payload",
        serde_json::to_string_pretty(&env.payload).unwrap_or_default(),
    );
    if env.errors.is_empty() {
        out.push_str("history       (none)\n");
    } else {
        out.push_str("history\n");
        for r in &env.errors {
            out.push_str(&format!(
                "  #{:<3} {}  {}\n       {}\n",
                r.attempt,
                when(Some(r.at)),
                r.worker,
                r.error.replace('\n', "\n       ")
            ));
        }
    }
    out
}

// ---- worker dlq replay / purge ----------------------------------------------------------

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqAction {
    Replay,
    Purge,
}

/// The audit record of one replay or purge: who did what to which queue, and the outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub user: String,
    pub host: String,
    pub action: DlqAction,
    pub queue: String,
    pub filter: String,
    pub dry_run: bool,
    pub limit: Option<u64>,
    pub rate: Option<f64>,
    pub report: ScanReport,
}

/// How a replay or purge shows progress and where its audit line goes.
#[derive(Debug, Clone, Default)]
pub struct DlqRunOptions {
    pub scan: ScanOptions,
    /// Draw a progress bar on stderr (the binary sets this only on a terminal).
    pub progress: bool,
    /// Append the audit record as one JSON line to this file.
    pub audit_log: Option<PathBuf>,
    /// Set from outside (Ctrl-C) to stop after the current entry; re-running continues.
    pub interrupt: Option<Arc<AtomicBool>>,
}

struct Progress {
    bar: Option<ProgressBar>,
    interrupt: Option<Arc<AtomicBool>>,
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
            Some(i) if i.load(Ordering::SeqCst) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn who() -> (String, String) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = crate::runner::default_worker_id()
        .rsplit_once('/')
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();
    (user, host)
}

/// `worker dlq replay` / `worker dlq purge`: runs the generic DLQ operation with progress,
/// then writes the audit record (tracing, and the audit file when given). A purge without
/// `yes` is refused.
pub async fn dlq_run(
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
    let report = result?;
    let (user, host) = who();
    let record = AuditRecord {
        at: Utc::now(),
        user,
        host,
        action,
        queue: queue.to_owned(),
        filter: filter.describe(),
        dry_run: opts.scan.dry_run,
        limit: opts.scan.limit,
        rate: opts.scan.rate,
        report,
    };
    tracing::info!(
        target: "audit",
        action = ?record.action,
        user = %record.user,
        host = %record.host,
        queue = %record.queue,
        filter = %record.filter,
        dry_run = record.dry_run,
        matched = record.report.matched,
        done = record.report.done,
        skipped = record.report.skipped,
        failed = record.report.failed,
        interrupted = record.report.interrupted,
        "DLQ {}",
        if action == DlqAction::Replay { "replay" } else { "purge" }
    );
    if let Some(path) = &opts.audit_log {
        append_audit(path, &record)?;
    }
    Ok(record)
}

fn append_audit(path: &Path, record: &AuditRecord) -> Result<(), CliError> {
    use std::io::Write;
    let line = serde_json::to_string(record).expect("audit record serializes");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot append to audit log {}: {e}",
                path.display()
            ))
        })
}

/// The summary printed after a replay or purge (or its JSON).
pub fn render_dlq_summary(r: &AuditRecord, json: bool) -> String {
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

// ---- worker migrate ---------------------------------------------------------------------

/// One migration and whether the database has it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

async fn db(cfg: &Config) -> Result<sqlx::PgPool, CliError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cfg.database.url)
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot connect to the database at {}: {e} (is it running? check [database] url / JOBFLEET_DATABASE_URL)",
                queues::error::redact_url(&cfg.database.url)
            ))
        })
}

/// Applies the pending migrations; returns the status afterwards.
pub async fn migrate(cfg: &Config) -> Result<Vec<MigrationStatus>, CliError> {
    let pool = db(cfg).await?;
    jobs::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| CliError::Failed(format!("migration failed: {e}")))?;
    // [vector search, issue 14] real[] → vector(N) + HNSW index when pgvector is there.
    let report = jobs::vector::migrate(&pool, &cfg.jobs, |n| {
        tracing::info!(converted = n, "converting chunk embeddings to vector")
    })
    .await
    .map_err(|e| CliError::Failed(format!("vector migration failed: {e}")))?;
    tracing::info!("{}", report.summary);
    status_on(&pool).await
}

/// Which migrations are applied and which pending, changing nothing.
pub async fn migrate_status(cfg: &Config) -> Result<Vec<MigrationStatus>, CliError> {
    let pool = db(cfg).await?;
    status_on(&pool).await
}

async fn status_on(pool: &sqlx::PgPool) -> Result<Vec<MigrationStatus>, CliError> {
    let table = &jobs::MIGRATOR.table_name;
    let applied: Vec<i64> = match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success"
    )))
    .fetch_all(pool)
    .await
    {
        Ok(v) => v,
        // No bookkeeping table yet: nothing applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read migration status: {e}"
            )));
        }
    };
    Ok(jobs::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// The migration status as text.
pub fn render_migrations(list: &[MigrationStatus]) -> String {
    list.iter()
        .map(|m| {
            format!(
                "{:<8} {:>14}  {}",
                if m.applied { "applied" } else { "pending" },
                m.version,
                m.description
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
