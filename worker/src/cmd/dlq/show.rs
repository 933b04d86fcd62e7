//! `worker dlq show QUEUE ID [--json]`: one entry, its envelope and error history.

use queues::{Broker, DlqEntry};
use runtime::Config;

use super::when;
use crate::cmd::{CliError, check_queue};

/// `worker dlq show` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    pub queue: String,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

/// Fetches and prints.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    let entry = show(broker, cfg, &args.queue, &args.id).await?;
    println!("{}", render(&entry, args.json));
    Ok(())
}

/// One DLQ entry by id.
pub async fn show(
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

/// The envelope and its error history, readable (or the raw JSON).
pub fn render(e: &DlqEntry, json: bool) -> String {
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
