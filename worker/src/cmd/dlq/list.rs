//! `worker dlq list QUEUE [filters] [--limit N] [--json]`.

use comfy_table::Table;
use queues::dlq::DlqFilter;
use queues::{Broker, DlqEntry};
use runtime::Config;

use super::filter::FilterArgs;
use super::when;
use crate::cmd::{CliError, check_queue};

/// `worker dlq list` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    pub queue: String,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

/// Lists and prints.
pub async fn execute(broker: &dyn Broker, cfg: &Config, args: &Args) -> Result<(), CliError> {
    let filter = args.filters.parse()?;
    let entries = list(broker, cfg, &args.queue, &filter, args.limit).await?;
    println!("{}", render(&entries, args.json));
    Ok(())
}

/// Up to `limit` DLQ entries of `queue` that match `filter`, oldest first (the dashboard's
/// first page, through the same `queues::dlq::list_matching`).
pub async fn list(
    broker: &dyn Broker,
    cfg: &Config,
    queue: &str,
    filter: &DlqFilter,
    limit: usize,
) -> Result<Vec<DlqEntry>, CliError> {
    check_queue(cfg, queue)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(
        queues::dlq::list_matching(broker, queue, filter, limit, None)
            .await?
            .entries,
    )
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
pub fn render(entries: &[DlqEntry], json: bool) -> String {
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
