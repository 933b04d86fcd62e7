//! `worker job ID [--json]`: where a job is, as the dashboard's job page says it (both call
//! `fleet::lookup::find`): running on which worker (host, pid, since when), in which queue's
//! DLQ and why, which schedule tick enqueued it, and its cancel requests. A job waiting in its
//! queue is not visible by id through any broker; the answer says where it looked.

use chrono::{DateTime, Utc};
use comfy_table::Table;
use fleet::cancel::check_job_id;
use fleet::lookup::JobLookup;
use fleet::registry::{LOST_AFTER_INTERVALS, WorkerState};
use runtime::Config;

use crate::cmd::CliError;
use crate::cmd::pause::fleet_error;

/// `worker job` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The job id (`worker enqueue` prints it; the DLQ and the logs show it).
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

/// Looks the job up and prints what was found. A place that could not be read fails the
/// command (exit 1) after the rest is printed: the answer is incomplete.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    // A bad id answers before any connection.
    check_job_id(&args.id).map_err(fleet_error)?;
    let broker = crate::app::connect(cfg).await?;
    let store = crate::app::fleet_store(cfg).await?;
    let queues: Vec<String> = cfg.queues.keys().cloned().collect();
    let found = fleet::lookup::find(&store, &*broker, &queues, &args.id)
        .await
        .map_err(fleet_error)?;
    println!("{}", render(&found, args.json));
    if found.unreadable.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "the answer is incomplete: could not read {}",
            found.unreadable.join("; ")
        )))
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// The table (or JSON) of `worker job`.
pub fn render(l: &JobLookup, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(l).expect("lookup serializes");
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["where", "what"]);
    for r in &l.running {
        let w = &r.worker.registration;
        let mut what = format!(
            "on {} ({}, pid {}) since {}, queue {}, kind {}",
            w.worker_id,
            w.host,
            w.pid,
            when(r.job.started_at),
            r.job.queue,
            r.job.kind
        );
        if r.worker.state == WorkerState::Lost {
            what += &format!(
                "\nworker LOST: no report for {LOST_AFTER_INTERVALS} sample intervals (last {:.0} s ago); the job returns to its queue after its visibility timeout",
                r.worker.seen_ago_s
            );
        }
        t.add_row(vec!["RUNNING".to_owned(), what]);
    }
    for o in &l.maybe_running {
        let w = &o.worker.registration;
        t.add_row(vec![
            "maybe running".to_owned(),
            format!(
                "{} ({}, pid {}) runs {} jobs more than its report lists",
                w.worker_id, w.host, w.pid, o.omitted
            ),
        ]);
    }
    for e in &l.dead_lettered {
        let at = e.dead_lettered_at.map(when).unwrap_or_else(|| "-".into());
        t.add_row(vec![
            "DLQ".to_owned(),
            format!(
                "in the DLQ of {} since {at}: {}\n(worker dlq show {} {})",
                e.queue, e.reason, e.queue, e.id
            ),
        ]);
    }
    for k in &l.ticks {
        t.add_row(vec![
            "schedule".to_owned(),
            format!(
                "enqueued by schedule {} for the tick {} onto {} ({})",
                k.schedule,
                when(k.tick_at),
                k.queue,
                k.state
            ),
        ]);
    }
    for c in &l.cancels {
        let state = match (&c.consumed_by, c.consumed_at) {
            (Some(w), Some(at)) => format!("carried out by {w} at {}", when(at)),
            _ => "pending (the worker that meets the job stops it)".to_owned(),
        };
        t.add_row(vec![
            "cancel".to_owned(),
            format!(
                "requested for {} by {} at {}: {}; {state}",
                c.queue,
                c.requested_by,
                when(c.requested_at),
                c.reason
            ),
        ]);
    }
    let mut out = format!("job {}\n", l.job_id);
    if l.found() || !l.maybe_running.is_empty() {
        out += &t.to_string();
        out.push('\n');
    }
    if l.running.is_empty() {
        out += "not running on any registered worker (as of each worker's last report, one sample interval old at most)\n";
    }
    if l.dead_lettered.is_empty() {
        out += &format!(
            "not in the DLQ of any configured queue ({}); a job waiting in its queue is not listed by id through the broker\n",
            l.searched.join(", ")
        );
    }
    for u in &l.unreadable {
        out += &format!("could not read {u}\n");
    }
    out.trim_end().to_owned()
}
