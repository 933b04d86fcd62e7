//! `worker audit [--since T] [--limit N] [--json]`: the fleet's operator audit log, newest
//! first: who paused, resumed, cancelled, changed a limit, replayed or purged what, and what
//! it came to. The CLI and the dashboard write the same table.

use comfy_table::Table;
use fleet::audit::Record;
use runtime::Config;

use crate::cmd::CliError;
use crate::cmd::dlq::filter::parse_time;
use crate::cmd::pause::fleet_error;

/// `worker audit` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only actions at or after: RFC 3339 or an age like 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

/// Reads the log and prints it.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    let since = args.since.as_deref().map(parse_time).transpose()?;
    if args.limit < 1 {
        return Err(CliError::Usage(format!(
            "--limit {} must be at least 1",
            args.limit
        )));
    }
    let store = crate::app::fleet_store(cfg).await?;
    let rows = store
        .audit_since(since, args.limit)
        .await
        .map_err(fleet_error)?;
    println!("{}", render(&rows, args.json));
    Ok(())
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.is_empty() => "-".into(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// The table (or JSON) of `worker audit`.
pub fn render(rows: &[Record], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).expect("rows serialize");
    }
    if rows.is_empty() {
        return "no operator action recorded in that window".into();
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["at", "who", "action", "target", "detail", "counts"]);
    for r in rows {
        t.add_row(vec![
            r.at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            compact(&r.detail),
            r.counts.as_ref().map_or("-".into(), compact),
        ]);
    }
    t.to_string()
}
