//! `[scheduler]`: the lease and the cron entries, and the built-in schedules used when the
//! file lists none. Plain data; the scheduler crate compiles and runs them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Forget them.
    Skip,
    /// Enqueue one job for the latest missed tick.
    Latest,
}

/// `[[scheduler.schedules]]`: one cron entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Unique name; part of every tick's dedup key.
    pub name: String,
    /// Cron expression; 5 fields, or 6/7 with seconds (and year).
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Job kind to enqueue.
    pub kind: String,
    /// Payload; strings may use `{{tick}}`-style placeholders the scheduler documents.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Queue; default: `[routes]` for the kind.
    #[serde(default)]
    pub queue: Option<String>,
    /// Missed ticks after downtime.
    #[serde(default = "default_catch_up")]
    pub catch_up: CatchUp,
    /// Also enqueue once when the scheduler starts (partition maintenance).
    #[serde(default)]
    pub run_at_start: bool,
}

fn default_tz() -> String {
    "UTC".into()
}

fn default_catch_up() -> CatchUp {
    CatchUp::Latest
}

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Leader lease length; a dead leader is replaced within this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Admin HTTP address of the scheduler (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// How long the scheduler waits at start for its database (lease, ledger) and, for `run`
    /// and `trigger`, the broker, before it exits 1 naming the one that did not answer; also
    /// the bound of each health probe while running (every lease/3).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The cron entries.
    pub schedules: Vec<Schedule>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(15),
            admin_addr: "127.0.0.1:9091".parse().expect("valid literal"),
            connect_timeout: Duration::from_secs(5),
            schedules: default_schedules(),
        }
    }
}

/// The schedules used when the config lists none (`runtime/src/config/default_schedules.toml`): next
/// months' partitions daily and at start, the view refresh every 15 minutes, hourly and daily
/// rollups — all on the jobs' own tables.
pub fn default_schedules() -> Vec<Schedule> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        schedules: Vec<Schedule>,
    }
    toml::from_str::<File>(include_str!("default_schedules.toml"))
        .expect("the built-in schedules parse (a unit test checks)")
        .schedules
}
