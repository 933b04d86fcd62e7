//! `scheduler list` output: a table for people, JSON for scripts.

use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{Table, presets::UTF8_FULL};

use crate::core::ScheduleOverview;

fn fmt(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The table, with who leads (if anyone) on top.
pub fn render_table(rows: &[ScheduleOverview], leader: Option<&str>) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL).set_header(vec![
        "schedule",
        "cron (tz)",
        "kind → queue",
        "catch-up",
        "next fire times (UTC)",
        "last enqueue",
    ]);
    for r in rows {
        let last = match &r.last {
            Some(l) => format!(
                "{} ({}, {})\njob {}",
                fmt(&l.tick_at),
                l.reason,
                l.state,
                l.job_id
            ),
            None => "never".into(),
        };
        table.add_row(vec![
            r.name.clone(),
            format!("{} ({})", r.cron, r.timezone),
            format!("{} → {}", r.kind, r.queue),
            format!(
                "{}{}",
                r.catch_up,
                if r.run_at_start { ", at start" } else { "" }
            ),
            r.next.iter().map(fmt).collect::<Vec<_>>().join("\n"),
            last,
        ]);
    }
    format!(
        "leader: {}\n{table}\n",
        leader.unwrap_or("none (no live lease)")
    )
}

/// The JSON document (`--json`).
pub fn render_json(rows: &[ScheduleOverview], leader: Option<&str>) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "leader": leader,
        "schedules": rows,
    }))
    .expect("plain data serializes")
}
