//! `worker enqueue KIND --payload JSON`: builds one envelope, checks its payload with the
//! kind's own rules (no database pool or embedding provider needed), and sends it. With
//! `--dedup-key`, a second enqueue of the key inside the kind's window writes nothing and says
//! so (docs/envelope.md, "Unique jobs").

use std::time::Duration;

use chrono::Utc;
use jobs::Validators;
use jobs::config::UniqueFor;
use queues::{Broker, Envelope, Sent};
use runtime::Config;
use serde_json::json;

use crate::cmd::{CliError, check_queue};
use crate::config::JobSettings;

/// `worker enqueue` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EnqueueArgs {
    /// Job kind, e.g. embed_document.
    pub kind: String,
    /// Payload as JSON, e.g. '{"document_id": 42}'.
    #[arg(long)]
    pub payload: String,
    /// Queue; default: the kind's entry under [routes].
    #[arg(long)]
    pub queue: Option<String>,
    /// Run no earlier than this from now, e.g. 30s, 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// De-duplication key: the job is accepted once per key and queue within the window.
    #[arg(long)]
    pub dedup_key: Option<String>,
    /// How long the key stays taken, e.g. 10m; default: the kind's `[jobs.unique_for]`.
    #[arg(long, value_parser = humantime::parse_duration, requires = "dedup_key")]
    pub unique_for: Option<Duration>,
    /// Attempts before the job is dead-lettered.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one `worker enqueue` did.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The envelope as built (for a duplicate: the one that was not written).
    pub envelope: Envelope,
    /// Written, or a duplicate of an accepted job.
    pub sent: Sent,
}

impl Enqueued {
    /// The line (or JSON document) the command prints.
    pub fn render(&self, json: bool) -> String {
        let e = &self.envelope;
        if json {
            let window = e.dedup().map(|(_, w)| w.as_secs_f64());
            return json!({
                "result": self.sent, "id": e.id, "kind": e.kind, "queue": e.queue,
                "dedup_key": e.dedup_key, "unique_for_secs": window,
            })
            .to_string();
        }
        let key = e.dedup_key.as_deref().unwrap_or_default();
        match self.sent {
            Sent::Duplicate => {
                format!(
                    "duplicate of an accepted job (key {key}) on {}: nothing written",
                    e.queue
                )
            }
            Sent::Enqueued => match e.dedup() {
                Some((_, w)) => format!(
                    "enqueued {} ({}) on {} (key {key}, unique for {})",
                    e.id,
                    e.kind,
                    e.queue,
                    humantime::format_duration(w)
                ),
                None => format!("enqueued {} ({}) on {}", e.id, e.kind, e.queue),
            },
        }
    }
}

/// Connects, enqueues, prints the job id or that it was a duplicate.
pub async fn execute(
    cfg: &Config,
    settings: &JobSettings,
    args: &EnqueueArgs,
) -> Result<(), CliError> {
    let broker = crate::app::connect(cfg).await?;
    let checks = crate::app::validators(settings)?;
    let done = enqueue(&*broker, cfg, &checks, &settings.jobs.unique_for, args).await?;
    println!("{}", done.render(args.json));
    Ok(())
}

/// Builds the envelope (queue from `[routes]` when not given; payload checked by `checks`,
/// an unknown kind refused; with a dedup key, the window from `--unique-for` or `windows`)
/// and sends it.
pub async fn enqueue(
    broker: &dyn Broker,
    cfg: &Config,
    checks: &Validators,
    windows: &UniqueFor,
    args: &EnqueueArgs,
) -> Result<Enqueued, CliError> {
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
    match checks.check(&args.kind, &payload) {
        Some(result) => result
            .map_err(|e| CliError::Usage(format!("payload rejected by `{}`: {e}", args.kind)))?,
        None => {
            let known: Vec<&str> = checks.kinds().collect();
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
        if k.is_empty() {
            return Err(CliError::Usage("--dedup-key must not be empty".into()));
        }
        let window = args
            .unique_for
            .unwrap_or_else(|| windows.window(&args.kind));
        if window.is_zero() || window > Duration::from_secs(10 * 365 * 86_400) {
            return Err(CliError::Usage(format!(
                "--unique-for {} must be more than 0 and at most 10 years",
                humantime::format_duration(window)
            )));
        }
        env = env.with_dedup_key(k.clone()).with_unique_for(window);
    }
    if let Some(n) = args.max_attempts {
        if n == 0 {
            return Err(CliError::Usage("--max-attempts must be at least 1".into()));
        }
        env = env.with_max_attempts(n);
    }
    let sent = broker.send(&env).await?;
    Ok(Enqueued {
        envelope: env,
        sent,
    })
}
