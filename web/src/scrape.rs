//! What a running worker reports on its admin port's `/metrics`: pool targets and running
//! slots, and the job counters the dashboard turns into jobs/s. `worker queues` reads the pool
//! targets through the same parser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One scrape, by queue (counters summed over kinds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerMetrics {
    pub pool_target: BTreeMap<String, usize>,
    pub pool_running: BTreeMap<String, usize>,
    pub succeeded: BTreeMap<String, f64>,
    pub failed: BTreeMap<String, f64>,
}

/// Parses Prometheus text; anything unreadable is left out.
pub fn parse(text: &str) -> WorkerMetrics {
    use prometheus_parse::{Scrape, Value};
    let mut m = WorkerMetrics::default();
    let Ok(scrape) = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
        return m;
    };
    for s in scrape.samples {
        let v = match s.value {
            Value::Gauge(v) | Value::Untyped(v) | Value::Counter(v) => v,
            _ => continue,
        };
        let Some(queue) = s.labels.get("queue").map(str::to_owned) else {
            continue;
        };
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        let name = s.metric.trim_end_matches("_total");
        match name {
            "jobfleet_pool_target" => {
                m.pool_target.insert(queue, v as usize);
            }
            "jobfleet_pool_running" => {
                m.pool_running.insert(queue, v as usize);
            }
            "jobfleet_jobs_succeeded" => *m.succeeded.entry(queue).or_default() += v,
            "jobfleet_jobs_failed" => *m.failed.entry(queue).or_default() += v,
            _ => {}
        }
    }
    m
}

/// Reads `/metrics` at `addr` (best effort: `None` when nothing answers within half a second).
pub async fn fetch(addr: SocketAddr) -> Option<WorkerMetrics> {
    let fetch = async {
        // The admin port is local: a proxy from the environment must not be asked for it.
        let client = reqwest::Client::builder().no_proxy().build().ok()?;
        let resp = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?;
        resp.error_for_status().ok()?.text().await.ok()
    };
    match tokio::time::timeout(Duration::from_millis(500), fetch).await {
        Ok(Some(text)) => Some(parse(&text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_targets_and_sums_counters_over_kinds() {
        let text = "# TYPE jobfleet_pool_target gauge\njobfleet_pool_target{queue=\"a\"} 4\n\
                    jobfleet_pool_running{queue=\"a\"} 2\n\
                    # TYPE jobfleet_jobs_succeeded_total counter\n\
                    jobfleet_jobs_succeeded_total{queue=\"a\",kind=\"x\"} 10\n\
                    jobfleet_jobs_succeeded_total{queue=\"a\",kind=\"y\"} 5\n\
                    jobfleet_jobs_failed_total{queue=\"b\",kind=\"x\"} 1\n\
                    jobfleet_pool_target{queue=\"c\"} NaN\n";
        let m = parse(text);
        assert_eq!(m.pool_target.get("a"), Some(&4));
        assert_eq!(m.pool_running.get("a"), Some(&2));
        assert_eq!(m.succeeded.get("a"), Some(&15.0));
        assert_eq!(m.failed.get("b"), Some(&1.0));
        assert!(!m.pool_target.contains_key("c"));
    }
}
