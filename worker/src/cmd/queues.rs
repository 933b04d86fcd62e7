//! `worker queues [--json]`: the depth of every configured queue, whether it is paused for the
//! fleet (and by whom), with the pool target a running worker on the configured admin port
//! reports in its `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use comfy_table::Table;
use fleet::pause::Paused;
use queues::Broker;
use runtime::Config;
use serde::Serialize;

use crate::cmd::CliError;

/// `worker queues` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

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
    /// Paused for the fleet: `None` when the control state could not be read.
    pub paused: Option<bool>,
    /// Who paused it and why, while paused.
    pub paused_by: Option<String>,
    pub paused_reason: Option<String>,
}

/// Connects, reads the depths and the live targets, prints the table.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    let broker = crate::app::connect(cfg).await?;
    let targets = live_targets(cfg.worker.admin_addr).await;
    let mut rows = rows(&*broker, cfg, &targets).await?;
    // Best effort: the depths are worth showing even when the control state is away.
    let paused = match crate::app::fleet_store(cfg).await {
        Ok(store) => store.paused().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &paused {
        eprintln!("warning: paused queues unknown: {e}");
    }
    mark_paused(&mut rows, paused.ok().as_deref());
    println!("{}", render(&rows, args.json));
    Ok(())
}

/// Fills in the paused columns from the fleet's paused queues (`None`: unknown).
pub fn mark_paused(rows: &mut [QueueRow], paused: Option<&[Paused]>) {
    for r in rows {
        let p = paused.map(|list| list.iter().find(|p| p.queue == r.queue));
        r.paused = p.map(|p| p.is_some());
        r.paused_by = p.flatten().map(|p| p.paused_by.clone());
        r.paused_reason = p.flatten().map(|p| p.reason.clone());
    }
}

/// Depth of every configured queue, with live pool targets when `targets` has them.
pub async fn rows(
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
            paused: None,
            paused_by: None,
            paused_reason: None,
        });
    }
    Ok(rows)
}

/// Reads `jobfleet_pool_target` from a worker's `/metrics` at `addr` (best effort: empty when
/// nothing answers within half a second), through the dashboard's reader of the same page.
pub async fn live_targets(addr: SocketAddr) -> BTreeMap<String, usize> {
    web::scrape::fetch(addr)
        .await
        .map(|m| m.pool_target)
        .unwrap_or_default()
}

/// The `jobfleet_pool_target{queue="q"} N` samples of Prometheus text, by queue.
pub fn parse_targets(text: &str) -> BTreeMap<String, usize> {
    web::scrape::parse(text).pool_target
}

fn age(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| {
        humantime::format_duration(Duration::from_secs(s as u64)).to_string()
    })
}

/// The table (or JSON) of `worker queues`.
pub fn render(rows: &[QueueRow], json: bool) -> String {
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
        "paused",
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
            match (r.paused, &r.paused_by) {
                (None, _) => "?".into(),
                (Some(false), _) => "no".into(),
                (Some(true), by) => {
                    let why = r.paused_reason.as_deref().filter(|w| !w.is_empty());
                    match (by, why) {
                        (Some(by), Some(why)) => format!("PAUSED by {by}: {why}"),
                        (Some(by), None) => format!("PAUSED by {by}"),
                        _ => "PAUSED".into(),
                    }
                }
            },
        ]);
    }
    t.to_string()
}
