//! Schedules from the config, checked and compiled once at start: cron expression, time zone,
//! queue and payload template. Fire times are computed here (with croner, the parser
//! tokio-cron-scheduler uses, configured the same way) so that the core can reason about ticks
//! at any given `now` without waiting on the wall clock.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use runtime::config::{CatchUp, Config, Schedule};

use crate::SchedulerError;
use crate::template::{TemplateVars, render};

/// One validated schedule.
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    /// The entry as configured.
    pub spec: Schedule,
    /// The expression as handed to tokio-cron-scheduler (always with seconds).
    pub expression: String,
    /// The queue jobs go to (the entry's own, or `[routes]` for its kind).
    pub queue: String,
    /// The time zone the expression is read in.
    pub tz: Tz,
    cron: Cron,
}

/// tokio-cron-scheduler requires a seconds field; the config allows classic 5-field cron, which
/// means "at second 0".
pub fn normalize_expression(expr: &str) -> String {
    let expr = expr.trim();
    if !expr.starts_with('@') && expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    }
}

fn parser() -> CronParser {
    // Same settings as tokio-cron-scheduler's own parser, so both agree on every fire time.
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

impl CompiledSchedule {
    /// Checks one entry; errors name it.
    pub fn compile(spec: &Schedule, default_queue: Option<&str>) -> Result<Self, SchedulerError> {
        let bad = |message: String| SchedulerError::InvalidSchedule {
            name: spec.name.clone(),
            message,
        };
        let expression = normalize_expression(&spec.cron);
        let cron = parser()
            .parse(&expression)
            .map_err(|e| bad(format!("cron expression `{}`: {e}", spec.cron)))?;
        let tz: Tz = spec
            .timezone
            .parse()
            .map_err(|_| bad(format!("unknown time zone `{}`", spec.timezone)))?;
        let queue = spec
            .queue
            .clone()
            .or_else(|| default_queue.map(str::to_owned))
            .ok_or_else(|| {
                bad(format!(
                    "no queue, and [routes] has none for `{}`",
                    spec.kind
                ))
            })?;
        queues::QueueName::new(queue.as_str()).map_err(|e| bad(e.to_string()))?;
        let compiled = CompiledSchedule {
            spec: spec.clone(),
            expression,
            queue,
            tz,
            cron,
        };
        // Render once with an arbitrary tick so a typo in a placeholder fails at start.
        compiled
            .payload_at(Utc::now())
            .map_err(|e| bad(e.to_string()))?;
        if compiled.next_after(Utc::now(), 1).is_empty() {
            return Err(bad(format!("cron expression `{}` never fires", spec.cron)));
        }
        Ok(compiled)
    }

    /// Every `[[scheduler.schedules]]` entry of `cfg`.
    pub fn compile_all(cfg: &Config) -> Result<Vec<Self>, SchedulerError> {
        let mut seen = std::collections::HashSet::new();
        cfg.scheduler
            .schedules
            .iter()
            .map(|s| {
                if !seen.insert(s.name.as_str()) {
                    return Err(SchedulerError::InvalidSchedule {
                        name: s.name.clone(),
                        message: "name is used twice".into(),
                    });
                }
                Self::compile(s, cfg.route(&s.kind))
            })
            .collect()
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Missed-tick policy.
    pub fn catch_up(&self) -> CatchUp {
        self.spec.catch_up
    }

    /// The payload for the tick at `tick`.
    pub fn payload_at(
        &self,
        tick: DateTime<Utc>,
    ) -> Result<serde_json::Value, crate::template::TemplateError> {
        render(
            &self.spec.payload,
            &TemplateVars {
                tick,
                schedule: &self.spec.name,
            },
        )
    }

    /// The latest fire time at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&whole_seconds(now).with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Up to `n` fire times strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = whole_seconds(after).with_timezone(&self.tz);
        while out.len() < n {
            match self.cron.find_next_occurrence(&t, false) {
                Ok(next) => {
                    out.push(next.with_timezone(&Utc));
                    t = next;
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Fire times in `(after, upto]`, oldest first, at most `limit` of them.
    pub fn between(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = whole_seconds(after).with_timezone(&self.tz);
        while out.len() < limit {
            match self.cron.find_next_occurrence(&t, false) {
                Ok(next) if next.with_timezone(&Utc) <= upto => {
                    out.push(next.with_timezone(&Utc));
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// Fire times are whole seconds, but croner carries the sub-second part of its start time into
/// the times it finds; dropping it first keeps ticks (and so dedup keys and payloads) exact.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::config::CatchUp;
    use serde_json::json;

    fn spec(cron: &str, tz: &str) -> Schedule {
        Schedule {
            name: "s".into(),
            cron: cron.into(),
            timezone: tz.into(),
            kind: "noop".into(),
            payload: json!({"at": "{{tick}}"}),
            queue: Some("maintenance".into()),
            catch_up: CatchUp::Latest,
            run_at_start: false,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn five_fields_mean_second_zero() {
        assert_eq!(normalize_expression("0 * * * *"), "0 0 * * * *");
        assert_eq!(normalize_expression("*/5 * * * * *"), "*/5 * * * * *");
        let s = CompiledSchedule::compile(&spec("0 * * * *", "UTC"), None).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T10:00:00Z"), 3),
            vec![
                at("2026-11-22T11:00:00Z"),
                at("2026-11-22T12:00:00Z"),
                at("2026-11-22T13:00:00Z")
            ]
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-11-22T10:00:00Z")),
            Some(at("2026-11-22T10:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-11-22T10:59:59Z")),
            Some(at("2026-11-22T10:00:00Z"))
        );
        assert_eq!(
            s.between(at("2026-11-22T10:00:00Z"), at("2026-11-22T13:30:00Z"), 10)
                .len(),
            3
        );
    }

    #[test]
    fn sub_second_now_gives_whole_second_ticks() {
        let s = CompiledSchedule::compile(&spec("*/2 * * * * *", "UTC"), None).unwrap();
        let now = at("2026-11-22T10:00:03.347Z");
        assert_eq!(s.latest_at_or_before(now), Some(at("2026-11-22T10:00:02Z")));
        assert_eq!(
            s.next_after(now, 2),
            vec![at("2026-11-22T10:00:04Z"), at("2026-11-22T10:00:06Z")]
        );
        assert_eq!(
            s.between(at("2026-11-22T09:59:59.9Z"), now, 10),
            vec![at("2026-11-22T10:00:00Z"), at("2026-11-22T10:00:02Z")]
        );
        let exact = at("2026-11-22T10:00:02.000001Z");
        assert_eq!(
            s.latest_at_or_before(exact),
            Some(at("2026-11-22T10:00:02Z"))
        );
    }

    #[test]
    fn time_zone_is_honoured() {
        let s = CompiledSchedule::compile(&spec("0 3 * * *", "Europe/Berlin"), None).unwrap();
        // 03:00 in Berlin in November (CET, +01:00) is 02:00 UTC.
        assert_eq!(
            s.next_after(at("2026-11-22T10:00:00Z"), 1),
            vec![at("2026-11-23T02:00:00Z")]
        );
    }

    #[test]
    fn errors_name_the_entry() {
        for (cron, tz, needle) in [
            ("61 * * * *", "UTC", "cron expression"),
            ("not cron", "UTC", "cron expression"),
            ("0 * * * *", "Mars/Olympus", "time zone"),
        ] {
            let err = CompiledSchedule::compile(&spec(cron, tz), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`s`") && err.contains(needle), "{err}");
        }
        let mut bad = spec("0 * * * *", "UTC");
        bad.payload = json!({"from": "{{yesterday}}"});
        let err = CompiledSchedule::compile(&bad, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("yesterday"), "{err}");
        let mut noq = spec("0 * * * *", "UTC");
        noq.queue = None;
        assert!(CompiledSchedule::compile(&noq, None).is_err());
        assert!(CompiledSchedule::compile(&noq, Some("maintenance")).is_ok());
    }

    #[test]
    fn shipped_example_schedules_are_valid() {
        let cfg = Config::default();
        cfg.validate().unwrap();
        let all = CompiledSchedule::compile_all(&cfg).unwrap();
        assert_eq!(all.len(), 4);
        let hourly = all.iter().find(|s| s.name() == "rollup_hourly").unwrap();
        assert_eq!(hourly.queue, "analytics");
        let tick = hourly
            .latest_at_or_before(at("2026-11-22T11:30:00Z"))
            .unwrap();
        assert_eq!(tick, at("2026-11-22T11:05:00Z"));
        assert_eq!(
            hourly.payload_at(tick).unwrap(),
            json!({"granularity": "hour", "from": "2026-11-22T10:00:00Z", "to": "2026-11-22T11:00:00Z"})
        );
        let daily = all.iter().find(|s| s.name() == "rollup_daily").unwrap();
        let tick = daily
            .latest_at_or_before(at("2026-11-22T11:30:00Z"))
            .unwrap();
        assert_eq!(
            daily.payload_at(tick).unwrap(),
            json!({"granularity": "day", "from": "2026-11-21T00:00:00Z", "to": "2026-11-22T00:00:00Z"})
        );
        let parts = all
            .iter()
            .find(|s| s.name() == "ensure_partitions_events")
            .unwrap();
        assert!(parts.spec.run_at_start);
        assert_eq!(parts.queue, "maintenance");
    }
}
