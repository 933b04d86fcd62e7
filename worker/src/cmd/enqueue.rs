//! `worker enqueue KIND --payload JSON`: builds one envelope, checks its payload with the
//! kind's own rules (no database pool or embedding provider needed), and sends it.

use std::time::Duration;

use chrono::Utc;
use jobs::Validators;
use queues::{Broker, Envelope};
use runtime::Config;

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
    /// De-duplication key.
    #[arg(long)]
    pub dedup_key: Option<String>,
    /// Attempts before the job is dead-lettered.
    #[arg(long)]
    pub max_attempts: Option<u32>,
}

/// Connects, enqueues, prints the job id.
pub async fn execute(
    cfg: &Config,
    settings: &JobSettings,
    args: &EnqueueArgs,
) -> Result<(), CliError> {
    let broker = crate::app::connect(cfg).await?;
    let checks = crate::app::validators(settings)?;
    let env = enqueue(&*broker, cfg, &checks, args).await?;
    println!("enqueued {} ({}) on {}", env.id, env.kind, env.queue);
    Ok(())
}

/// Builds the envelope (queue from `[routes]` when not given; payload checked by `checks`,
/// an unknown kind refused) and sends it.
pub async fn enqueue(
    broker: &dyn Broker,
    cfg: &Config,
    checks: &Validators,
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
