//! `worker workers [--json]`: the fleet registry, one line per `worker run` process: who and
//! where, since when, its pools (target / granted / running) and job counts since start, and
//! whether it is running, draining, or lost (no report for three of its sample intervals).

use comfy_table::Table;
use fleet::registry::WorkerRow;
use runtime::Config;

use crate::cmd::CliError;
use crate::cmd::pause::fleet_error;

/// `worker workers` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

/// Reads the registry and prints it.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    let store = crate::app::fleet_store(cfg).await?;
    let rows = store.workers().await.map_err(fleet_error)?;
    println!("{}", render(&rows, args.json));
    Ok(())
}

fn ago(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s ago")
    } else {
        format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(secs as u64))
        )
    }
}

/// The table (or JSON) of `worker workers`.
pub fn render(rows: &[WorkerRow], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).expect("rows serialize");
    }
    if rows.is_empty() {
        return "no worker is registered (none running, or none could reach the control state)"
            .into();
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "worker",
        "host",
        "pid",
        "version",
        "backend",
        "state",
        "started",
        "seen",
        "pools (target/granted/running)",
        "succeeded",
        "failed",
        "DLQ",
    ]);
    for r in rows {
        let reg = &r.registration;
        let pools = r
            .pools
            .iter()
            .map(|p| format!("{} {}/{}/{}", p.queue, p.target, p.granted, p.running))
            .collect::<Vec<_>>()
            .join("\n");
        let (_, ok, failed, dlq) = r.totals();
        t.add_row(vec![
            reg.worker_id.clone(),
            reg.host.clone(),
            reg.pid.to_string(),
            reg.version.clone(),
            reg.backend.clone(),
            r.state.as_str().to_uppercase(),
            reg.started_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            ago(r.seen_ago_s),
            pools,
            ok.to_string(),
            failed.to_string(),
            dlq.to_string(),
        ]);
    }
    let lost = rows
        .iter()
        .filter(|r| r.state == fleet::registry::WorkerState::Lost)
        .count();
    let mut s = t.to_string();
    if lost > 0 {
        s += &format!(
            "\n{lost} lost: no report for {} sample intervals (the process died, or cannot reach the control state); its jobs return to their queues after their visibility timeout",
            fleet::registry::LOST_AFTER_INTERVALS
        );
    }
    s
}
