//! Publishes per-queue depth and job counts to CloudWatch, so an Auto Scaling group (or KEDA)
//! can add workers when the backlog grows and remove them when it drains.
//!
//! One `PutMetricData` call per interval carries every queue's metrics; it is split only at the
//! API limits. The names and dimensions are declared once, in [`METRICS`] and
//! [`dimension_names`], and `deploy/cloudformation/jobfleet.json` is tested against them
//! (`tests/deploy_contract.rs`), so a rename here that the template does not follow fails CI
//! instead of silently leaving the fleet without a scaling signal.
//!
//! Decisions (see `docs/operations.md`, "Autoscaling"):
//! - A worker cannot know how many machines consume a queue, so it publishes the raw
//!   [`BACKLOG`] and the scaling policy divides it by the group's `GroupInServiceInstances` with
//!   CloudWatch metric math. KEDA does the same division itself (`AverageValue` target).
//! - Every worker publishes every queue's depth with the same dimensions, so a period holds one
//!   data point per worker, all of about the same value: alarms and policies read gauges with
//!   `Maximum`, which makes the duplicates harmless without electing a publisher. The per-interval
//!   job counts are each worker's own share and are read with `Sum`.
//! - A queue paused for the fleet (`worker pause`) publishes [`PAUSED`] = 1 and a [`BACKLOG`] of
//!   0: its jobs wait on purpose, so they must not make the group grow, and the alarms on its
//!   depth and age read [`PAUSED`] to stay quiet while it lasts. The raw depths stay as they are.
//! - A failed publish is logged and counted, and the next attempt waits longer (exponential
//!   backoff in whole intervals). Nothing is buffered: gauges are read fresh, and job counters are
//!   deltas against the last *successful* publish, so a retry carries the missed jobs with it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use queues::{Broker, Depth};

use crate::stats::{PoolSnapshot, SnapshotSource};
use runtime::config::CloudWatchConfig;

/// Dimension carrying the queue name on every metric.
pub const QUEUE_DIMENSION: &str = "Queue";
/// Dimension added when `cloudwatch.per_instance` is on.
pub const INSTANCE_DIMENSION: &str = "InstanceId";

/// Prometheus counter of failed `PutMetricData` calls.
pub const PUBLISH_FAILURES_METRIC: &str = "jobfleet_cloudwatch_publish_failures_total";
/// Prometheus counter of successful `PutMetricData` calls.
pub const PUBLISHES_METRIC: &str = "jobfleet_cloudwatch_publishes_total";
/// Prometheus counter of queues whose depth could not be read for a publish.
pub const DEPTH_ERRORS_METRIC: &str = "jobfleet_cloudwatch_depth_errors_total";

/// `PutMetricData` accepts at most this many data per call.
pub const MAX_DATA_PER_CALL: usize = 1000;
/// Request size we stay under (the API limit is 1 MB); estimated per datum, with room to spare.
pub const MAX_BYTES_PER_CALL: usize = 900 * 1024;

/// How CloudWatch consumers should aggregate a metric across workers and over a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// A level every worker reads from the broker: identical duplicates, read with `Maximum`.
    Gauge,
    /// This worker's count in the interval: read with `Sum` for the fleet total.
    IntervalCount,
}

impl Aggregation {
    /// The CloudWatch statistic alarms and scaling policies must use.
    pub fn statistic(self) -> &'static str {
        match self {
            Aggregation::Gauge => "Maximum",
            Aggregation::IntervalCount => "Sum",
        }
    }
}

/// One metric the publisher emits for each queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    /// CloudWatch metric name.
    pub name: &'static str,
    /// CloudWatch unit name (`Count`, `Seconds`).
    pub unit: &'static str,
    /// How to aggregate it.
    pub aggregation: Aggregation,
    /// What it measures (for docs and dashboards).
    pub help: &'static str,
}

/// Messages ready to be received now.
pub const VISIBLE: &str = "VisibleMessages";
/// Messages received and not yet settled.
pub const IN_FLIGHT: &str = "InFlightMessages";
/// Messages waiting for their `run_at` or a retry delay.
pub const DELAYED: &str = "DelayedMessages";
/// Messages in the queue's DLQ.
pub const DLQ_DEPTH: &str = "DeadLetterMessages";
/// Age of the oldest visible message; left out when the broker cannot tell.
pub const OLDEST_AGE: &str = "OldestMessageAge";
/// Visible + in flight: the work not yet finished, divided by instances for scaling; 0 while
/// the queue is paused.
pub const BACKLOG: &str = "Backlog";
/// 1 while the queue is paused for the fleet, else 0.
pub const PAUSED: &str = "Paused";
/// Jobs that succeeded on this worker in the interval.
pub const SUCCEEDED: &str = "JobsSucceeded";
/// Attempts that failed on this worker in the interval.
pub const FAILED: &str = "JobsFailed";
/// Jobs this worker sent to the DLQ in the interval.
pub const DEAD_LETTERED: &str = "JobsDeadLettered";

/// Every metric the publisher emits per queue: the contract `deploy/` is tested against.
pub const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: VISIBLE,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "messages ready to be received",
    },
    MetricSpec {
        name: IN_FLIGHT,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "messages received and not yet settled",
    },
    MetricSpec {
        name: DELAYED,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "messages waiting for run_at or a retry delay",
    },
    MetricSpec {
        name: DLQ_DEPTH,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "messages in the queue's dead-letter queue",
    },
    MetricSpec {
        name: OLDEST_AGE,
        unit: "Seconds",
        aggregation: Aggregation::Gauge,
        help: "age of the oldest visible message (absent when unknown or empty)",
    },
    MetricSpec {
        name: BACKLOG,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "visible + in flight, 0 while paused; backlog per instance = Backlog / GroupInServiceInstances",
    },
    MetricSpec {
        name: PAUSED,
        unit: "Count",
        aggregation: Aggregation::Gauge,
        help: "1 while the queue is paused for the fleet (worker pause), else 0",
    },
    MetricSpec {
        name: SUCCEEDED,
        unit: "Count",
        aggregation: Aggregation::IntervalCount,
        help: "jobs that succeeded on this worker in the interval",
    },
    MetricSpec {
        name: FAILED,
        unit: "Count",
        aggregation: Aggregation::IntervalCount,
        help: "attempts that failed on this worker in the interval",
    },
    MetricSpec {
        name: DEAD_LETTERED,
        unit: "Count",
        aggregation: Aggregation::IntervalCount,
        help: "jobs this worker dead-lettered in the interval",
    },
];

/// The spec of a declared metric.
pub fn metric(name: &str) -> Option<&'static MetricSpec> {
    METRICS.iter().find(|m| m.name == name)
}

/// The dimension names every metric carries under `cfg`: `Queue`, the configured static ones,
/// and `InstanceId` when `per_instance` is on. CloudWatch identifies a metric by its full
/// dimension set, so an alarm must name exactly these.
pub fn dimension_names(cfg: &CloudWatchConfig) -> Vec<String> {
    let mut names = vec![QUEUE_DIMENSION.to_owned()];
    names.extend(cfg.dimensions.keys().cloned());
    if cfg.per_instance {
        names.push(INSTANCE_DIMENSION.to_owned());
    }
    names.sort();
    names
}

/// Why a publish (or setting up the publisher) failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `PutMetricData` was rejected or could not be sent.
    #[error("PutMetricData to namespace {namespace} failed: {message}")]
    Put { namespace: String, message: String },
    /// The call did not finish within its bound.
    #[error("PutMetricData to namespace {namespace} timed out after {}", humantime::format_duration(*.after))]
    Timeout { namespace: String, after: Duration },
    /// The configuration can't be published with.
    #[error("invalid cloudwatch config: {0}")]
    Config(String),
}

/// What one successful publish sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Data sent.
    pub data: usize,
    /// `PutMetricData` calls made (more than one only past the API limits).
    pub calls: usize,
    /// Queues whose depth could not be read (their gauges were left out).
    pub depth_errors: usize,
}

/// Cumulative counters of one queue at the last successful publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    succeeded: u64,
    failed: u64,
    dead_lettered: u64,
}

impl Counters {
    fn of(pools: &[PoolSnapshot], queue: &str) -> Counters {
        pools
            .iter()
            .filter(|p| p.queue == queue)
            .fold(Counters::default(), |acc, p| Counters {
                succeeded: acc.succeeded + p.succeeded,
                failed: acc.failed + p.failed,
                dead_lettered: acc.dead_lettered + p.dead_lettered,
            })
    }

    /// Counts since `prev`. A counter below its previous value means the pool restarted from
    /// zero, so everything it reports now is new.
    fn since(self, prev: Counters) -> Counters {
        let d = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        Counters {
            succeeded: d(self.succeeded, prev.succeeded),
            failed: d(self.failed, prev.failed),
            dead_lettered: d(self.dead_lettered, prev.dead_lettered),
        }
    }
}

/// A [`SnapshotSource`] with no pools: for the scheduler, which publishes depth only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPools;

impl SnapshotSource for NoPools {
    fn snapshot(&self) -> Vec<PoolSnapshot> {
        Vec::new()
    }
}

/// Publishes the queues' metrics to CloudWatch, on its own task.
pub struct Publisher {
    cfg: CloudWatchConfig,
    client: Client,
    broker: Arc<dyn Broker>,
    source: Arc<dyn SnapshotSource>,
    queues: Vec<String>,
    /// The fleet's pauses (nothing paused when detached).
    control: fleet::Control,
    instance_id: Option<String>,
    call_timeout: Duration,
    depth_timeout: Duration,
    /// Counters at the last successful publish; only a success moves them forward.
    published: Mutex<HashMap<String, Counters>>,
    failures: AtomicU64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("namespace", &self.cfg.namespace)
            .field("queues", &self.queues)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for `queues`, with an AWS client built from `cfg` (region, endpoint) and the
    /// SDK's default credential chain. The client makes one attempt per call with short
    /// timeouts: the publisher retries on its next interval instead, so a slow or dead endpoint
    /// costs at most one bounded call per interval.
    pub async fn new(
        cfg: &CloudWatchConfig,
        broker: Arc<dyn Broker>,
        source: Arc<dyn SnapshotSource>,
        queues: Vec<String>,
    ) -> Result<Publisher, PublishError> {
        let loader = Self::aws_loader(cfg);
        let client = Client::new(&loader.load().await);
        let instance_id = if cfg.per_instance {
            Some(resolve_instance_id().await)
        } else {
            None
        };
        Self::with_client(cfg, client, broker, source, queues, instance_id)
    }

    /// The SDK settings [`Publisher::new`] uses: region and endpoint from `cfg`, one attempt per
    /// call, timeouts within the interval. Public so that callers with their own credentials
    /// (tests) build the same client.
    pub fn aws_loader(cfg: &CloudWatchConfig) -> aws_config::ConfigLoader {
        let call_timeout = Self::call_timeout_for(cfg.interval);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2).min(call_timeout))
                    .operation_timeout(call_timeout)
                    .build(),
            );
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        loader
    }

    /// Like [`Publisher::new`] with a ready client and instance id (tests, custom credentials).
    pub fn with_client(
        cfg: &CloudWatchConfig,
        client: Client,
        broker: Arc<dyn Broker>,
        source: Arc<dyn SnapshotSource>,
        queues: Vec<String>,
        instance_id: Option<String>,
    ) -> Result<Publisher, PublishError> {
        if cfg.namespace.is_empty() || cfg.namespace.starts_with("AWS/") {
            return Err(PublishError::Config(format!(
                "namespace `{}` must be non-empty and not start with AWS/",
                cfg.namespace
            )));
        }
        if cfg.storage_resolution != 1 && cfg.storage_resolution != 60 {
            return Err(PublishError::Config(
                "storage_resolution must be 1 or 60".into(),
            ));
        }
        // CloudWatch allows 30 dimensions per metric.
        if dimension_names(cfg).len() > 30 {
            return Err(PublishError::Config(
                "more than 30 dimensions per metric".into(),
            ));
        }
        if cfg.dimensions.contains_key(QUEUE_DIMENSION)
            || cfg.dimensions.contains_key(INSTANCE_DIMENSION)
        {
            return Err(PublishError::Config(format!(
                "dimensions may not redefine `{QUEUE_DIMENSION}` or `{INSTANCE_DIMENSION}`"
            )));
        }
        let call_timeout = Self::call_timeout_for(cfg.interval);
        Ok(Publisher {
            cfg: cfg.clone(),
            client,
            broker,
            source,
            queues,
            control: fleet::Control::detached(),
            instance_id: if cfg.per_instance {
                instance_id.or_else(|| Some(runtime::host::hostname()))
            } else {
                None
            },
            call_timeout,
            depth_timeout: call_timeout,
            published: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        })
    }

    /// Bound of one call: the interval, within 5..=10 s. Calls never overlap (the loop waits for
    /// one before sleeping), so a short interval only needs a bound, not a tight one.
    fn call_timeout_for(interval: Duration) -> Duration {
        interval.clamp(Duration::from_secs(5), Duration::from_secs(10))
    }

    /// Follows the fleet's pauses in `control` (see the module doc).
    pub fn with_control(mut self, control: fleet::Control) -> Self {
        self.control = control;
        self
    }

    /// Failed publishes since start (also exported as [`PUBLISH_FAILURES_METRIC`]).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The client, e.g. to read metrics back in tests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads every queue's depth and the pools' counters and sends them, split only at the API
    /// limits. Bounded in time: each depth read and each call has a timeout.
    pub async fn publish_once(&self) -> Result<PublishReport, PublishError> {
        let now = SystemTime::now();
        let depths = futures::future::join_all(self.queues.iter().map(|q| async move {
            match tokio::time::timeout(self.depth_timeout, self.broker.depth(q)).await {
                Ok(Ok(d)) => Some(d),
                Ok(Err(e)) => {
                    tracing::warn!(queue = %q, error = %e, "cloudwatch: cannot read queue depth");
                    None
                }
                Err(_) => {
                    tracing::warn!(queue = %q, "cloudwatch: queue depth read timed out");
                    None
                }
            }
        }))
        .await;
        let pools = self.source.snapshot();
        let counters: HashMap<&str, Counters> = self
            .queues
            .iter()
            .map(|q| (q.as_str(), Counters::of(&pools, q)))
            .collect();

        let deltas: Vec<Counters> = {
            let published = self.published.lock().expect("not poisoned");
            self.queues
                .iter()
                .map(|q| counters[q.as_str()].since(published.get(q).copied().unwrap_or_default()))
                .collect()
        };
        let mut data = Vec::with_capacity(self.queues.len() * METRICS.len());
        let mut depth_errors = 0;
        let control = self.control.state();
        for ((queue, depth), delta) in self.queues.iter().zip(&depths).zip(&deltas) {
            if depth.is_none() {
                depth_errors += 1;
                metrics::counter!(DEPTH_ERRORS_METRIC, "queue" => queue.clone()).increment(1);
            }
            let paused = control.paused.contains_key(queue);
            for (name, value) in values(depth.as_ref(), *delta, paused) {
                data.push(self.datum(queue, name, value, now));
            }
        }

        let mut calls = 0;
        for chunk in split_at_limits(&data) {
            calls += 1;
            if let Err(e) = self.put(chunk).await {
                self.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(PUBLISH_FAILURES_METRIC).increment(1);
                return Err(e);
            }
        }
        metrics::counter!(PUBLISHES_METRIC).increment(1);
        // A partial success (an early chunk sent, a later one failed) returned above without
        // moving the counters, so the next publish resends those deltas: counts may be high for
        // one interval but never lost. That only happens past 1000 data per interval.
        let mut published = self.published.lock().expect("not poisoned");
        for q in &self.queues {
            published.insert(q.clone(), counters[q.as_str()]);
        }
        Ok(PublishReport {
            data: data.len(),
            calls,
            depth_errors,
        })
    }

    async fn put(&self, chunk: &[MetricDatum]) -> Result<(), PublishError> {
        let call = self
            .client
            .put_metric_data()
            .namespace(&self.cfg.namespace)
            .set_metric_data(Some(chunk.to_vec()))
            .send();
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Put {
                namespace: self.cfg.namespace.clone(),
                message: DisplayErrorContext(&e).to_string(),
            }),
            Err(_) => Err(PublishError::Timeout {
                namespace: self.cfg.namespace.clone(),
                after: self.call_timeout,
            }),
        }
    }

    fn datum(&self, queue: &str, name: &'static str, value: f64, at: SystemTime) -> MetricDatum {
        let spec = metric(name).expect("values() only yields declared metrics");
        let mut dims: BTreeMap<&str, &str> = self
            .cfg
            .dimensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        dims.insert(QUEUE_DIMENSION, queue);
        if let Some(id) = &self.instance_id {
            dims.insert(INSTANCE_DIMENSION, id);
        }
        MetricDatum::builder()
            .metric_name(name)
            .set_dimensions(Some(
                dims.into_iter()
                    .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                    .collect(),
            ))
            .value(value)
            .unit(StandardUnit::from(spec.unit))
            .timestamp(DateTime::from(at))
            .storage_resolution(self.cfg.storage_resolution as i32)
            .build()
    }

    /// Delay before the next publish after `failures` consecutive failures: one interval when
    /// healthy, doubling per failure up to 8 intervals (at most 5 minutes, never less than one
    /// interval), so a dead endpoint is not hammered and logs stay readable.
    pub fn next_delay(&self, failures: u32) -> Duration {
        let interval = self.cfg.interval;
        if failures == 0 {
            return interval;
        }
        let backoff = interval.saturating_mul(1 << (failures - 1).min(3));
        backoff.min(Duration::from_secs(300).max(interval))
    }

    /// Publishes every interval until `shutdown` completes, then once more (the final flush, so
    /// the jobs of the last partial interval are counted). Runs on the caller's task: spawn it
    /// ([`Publisher::spawn`]) so that job processing never waits for CloudWatch.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.next_delay(failures)) => {}
            }
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.publish_once() => match r {
                    Ok(report) => {
                        if failures > 0 {
                            tracing::info!(after_failures = failures, "cloudwatch: publishing again");
                        }
                        failures = 0;
                        tracing::debug!(data = report.data, calls = report.calls, "cloudwatch: published");
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            error = %e,
                            consecutive_failures = failures,
                            retry_in = ?self.next_delay(failures),
                            "cloudwatch: publish failed"
                        );
                    }
                },
            }
        }
        match self.publish_once().await {
            Ok(r) => tracing::info!(data = r.data, "cloudwatch: final flush published"),
            Err(e) => tracing::warn!(error = %e, "cloudwatch: final flush failed"),
        }
    }

    /// Runs [`Publisher::run`] on its own task.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }
}

/// The values of one queue, by metric name. Depth gauges are left out when the depth could not
/// be read (a missing point, not a false zero, so alarms don't clear on a broker outage). A
/// paused queue's backlog is published as 0, so it does not scale the group.
fn values(depth: Option<&Depth>, delta: Counters, paused: bool) -> Vec<(&'static str, f64)> {
    let mut v = Vec::with_capacity(METRICS.len());
    v.push((PAUSED, if paused { 1.0 } else { 0.0 }));
    if let Some(d) = depth {
        v.push((VISIBLE, d.visible as f64));
        v.push((IN_FLIGHT, d.in_flight as f64));
        v.push((DELAYED, d.delayed as f64));
        v.push((DLQ_DEPTH, d.dead_lettered as f64));
        let backlog = if paused { 0 } else { d.backlog() };
        v.push((BACKLOG, backlog as f64));
        if let Some(age) = d.oldest_age {
            v.push((OLDEST_AGE, age.as_secs_f64()));
        }
    }
    v.push((SUCCEEDED, delta.succeeded as f64));
    v.push((FAILED, delta.failed as f64));
    v.push((DEAD_LETTERED, delta.dead_lettered as f64));
    v
}

/// A generous upper bound of one datum's size on the wire.
fn estimated_size(d: &MetricDatum) -> usize {
    let dims: usize = d
        .dimensions()
        .iter()
        .map(|x| x.name().map_or(0, str::len) + x.value().map_or(0, str::len) + 64)
        .sum();
    256 + d.metric_name().map_or(0, str::len) + dims
}

/// Splits `data` into calls of at most [`MAX_DATA_PER_CALL`] data and [`MAX_BYTES_PER_CALL`].
pub fn split_at_limits(data: &[MetricDatum]) -> Vec<&[MetricDatum]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, d) in data.iter().enumerate() {
        let size = estimated_size(d);
        if i > start && (i - start == MAX_DATA_PER_CALL || bytes + size > MAX_BYTES_PER_CALL) {
            chunks.push(&data[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < data.len() {
        chunks.push(&data[start..]);
    }
    chunks
}

/// `JOBFLEET_INSTANCE_ID`, else the EC2 instance id from IMDS (bounded to about a second, as off
/// EC2 nothing answers), else the host name.
async fn resolve_instance_id() -> String {
    if let Ok(id) = std::env::var("JOBFLEET_INSTANCE_ID")
        && !id.is_empty()
    {
        return id;
    }
    let imds = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_millis(500))
        .build();
    match tokio::time::timeout(
        Duration::from_secs(2),
        imds.get("/latest/meta-data/instance-id"),
    )
    .await
    {
        Ok(Ok(id)) if !id.as_ref().is_empty() => id.as_ref().to_owned(),
        _ => runtime::host::hostname(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(name: &str) -> MetricDatum {
        MetricDatum::builder().metric_name(name).value(1.0).build()
    }

    #[test]
    fn cloudwatch_metric_names_are_unique_and_valid_units() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert!(StandardUnit::values().contains(&m.unit), "{}", m.unit);
        }
    }

    #[test]
    fn cloudwatch_dimensions_follow_config() {
        let mut cfg = CloudWatchConfig::default();
        assert_eq!(dimension_names(&cfg), vec!["Queue"]);
        cfg.per_instance = true;
        cfg.dimensions.insert("Environment".into(), "prod".into());
        assert_eq!(
            dimension_names(&cfg),
            vec!["Environment", "InstanceId", "Queue"]
        );
    }

    #[test]
    fn cloudwatch_counters_delta_and_reset() {
        let prev = Counters {
            succeeded: 10,
            failed: 2,
            dead_lettered: 1,
        };
        let now = Counters {
            succeeded: 15,
            failed: 2,
            dead_lettered: 0,
        };
        assert_eq!(
            now.since(prev),
            Counters {
                succeeded: 5,
                failed: 0,
                dead_lettered: 0
            }
        );
        let pools = vec![
            PoolSnapshot {
                queue: "a".into(),
                succeeded: 3,
                ..Default::default()
            },
            PoolSnapshot {
                queue: "a".into(),
                succeeded: 4,
                failed: 1,
                ..Default::default()
            },
            PoolSnapshot {
                queue: "b".into(),
                succeeded: 100,
                ..Default::default()
            },
        ];
        assert_eq!(Counters::of(&pools, "a").succeeded, 7);
        assert_eq!(Counters::of(&pools, "a").failed, 1);
    }

    #[test]
    fn cloudwatch_split_at_limits() {
        let data: Vec<_> = (0..2500).map(|i| datum(&format!("m{i}"))).collect();
        let chunks = split_at_limits(&data);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert!(split_at_limits(&[]).is_empty());
        let long = "x".repeat(250);
        let big: Vec<_> = (0..1000)
            .map(|_| {
                MetricDatum::builder()
                    .metric_name("m")
                    .set_dimensions(Some(
                        (0..5)
                            .map(|_| Dimension::builder().name(&long).value(&long).build())
                            .collect(),
                    ))
                    .build()
            })
            .collect();
        let chunks = split_at_limits(&big);
        assert!(chunks.len() > 1);
        assert!(
            chunks
                .iter()
                .all(|c| c.iter().map(estimated_size).sum::<usize>() <= MAX_BYTES_PER_CALL)
        );
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 1000);
    }

    #[test]
    fn cloudwatch_values_skip_unknown_age_and_failed_depth() {
        let d = Depth {
            visible: 3,
            in_flight: 2,
            ..Default::default()
        };
        let v = values(Some(&d), Counters::default(), false);
        assert!(v.contains(&(BACKLOG, 5.0)));
        assert!(v.contains(&(PAUSED, 0.0)));
        assert!(!v.iter().any(|(n, _)| *n == OLDEST_AGE));
        let v = values(None, Counters::default(), false);
        assert_eq!(
            v.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![PAUSED, SUCCEEDED, FAILED, DEAD_LETTERED]
        );
    }

    #[test]
    fn a_paused_queue_publishes_no_backlog_but_keeps_its_depth() {
        let d = Depth {
            visible: 1000,
            in_flight: 2,
            ..Default::default()
        };
        let v = values(Some(&d), Counters::default(), true);
        assert!(v.contains(&(PAUSED, 1.0)));
        assert!(v.contains(&(BACKLOG, 0.0)), "{v:?}");
        assert!(v.contains(&(VISIBLE, 1000.0)), "{v:?}");
    }
}
