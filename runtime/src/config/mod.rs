//! The one TOML config file shared by `worker` and `scheduler` (path from `--config` or
//! `JOBFLEET_CONFIG`), as plain data, with environment overrides for URLs and secrets. Every section has
//! defaults that run locally with no file at all: the PostgreSQL queue backend on the same
//! database the jobs use. Unknown keys are errors that name the key, so a typo never silently
//! falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use queues::{BackendKind, BrokerConfig};
use serde::{Deserialize, Serialize};

mod scheduler;

pub use scheduler::{CatchUp, Schedule, SchedulerConfig, default_schedules};

/// Why the config can't be used. The text names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("invalid config: `{key}` {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which broker carries the jobs. Default: PostgreSQL, on `database.url`.
    pub broker: BrokerConfig,
    /// The application database the jobs work on.
    pub database: DatabaseConfig,
    /// Worker process settings.
    pub worker: WorkerConfig,
    /// One pool per queue: `[queues.<name>]`.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Which queue a kind goes to when the producer does not say: `[routes] kind = "queue"`.
    pub routes: BTreeMap<String, String>,
    /// Per-kind overrides of the retry policy: `[retry.<kind>]`, kept as TOML; the worker
    /// decodes it with the job crate's `RetryPolicy` (this crate does not know job code).
    pub retry: BTreeMap<String, toml::Table>,
    /// Handler settings (`[jobs]`), kept as TOML; the worker decodes it with `JobsConfig`.
    pub jobs: toml::Table,
    /// CloudWatch publisher.
    pub cloudwatch: CloudWatchConfig,
    /// The cron scheduler.
    pub scheduler: SchedulerConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL (env `JOBFLEET_DATABASE_URL` or `DATABASE_URL` overrides).
    pub url: String,
    /// Connections the jobs may hold: part of the process budget.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            max_connections: 16,
        }
    }
}

/// `[worker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs this process runs at once across all pools (the shared budget).
    pub budget: usize,
    /// How often each pool looks at its queue depth to resize.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// How long a pool waits after the backlog drops before it gives slots back.
    #[serde(with = "humantime_serde")]
    pub scale_down_cooldown: Duration,
    /// On SIGTERM, how long in-flight jobs get to finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Long-poll wait of one receive call.
    #[serde(with = "humantime_serde")]
    pub receive_wait: Duration,
    /// Admin HTTP address: `/healthz`, `/readyz`, `/metrics` (env `JOBFLEET_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// How long `worker run` waits at start for the broker and the database to answer before
    /// it exits 1 naming the one that did not; also the bound of each health probe while
    /// running (every `sample_interval`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Worker id in error history and logs; default `hostname/pid`.
    pub id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            budget: 64,
            sample_interval: Duration::from_secs(2),
            scale_down_cooldown: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            receive_wait: Duration::from_secs(5),
            admin_addr: "127.0.0.1:9090".parse().expect("valid literal"),
            connect_timeout: Duration::from_secs(5),
            id: None,
        }
    }
}

/// Priority class of a queue: who gets budget first when it is contended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first (partition maintenance, view refresh).
    Critical,
    /// The normal class.
    Default,
    /// Served last, but never starved below its `min`.
    Bulk,
}

impl Priority {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Bulk => "bulk",
        }
    }
}

/// `[queues.<name>]`: one pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Priority class.
    pub priority: Priority,
    /// Slots the pool keeps even when idle or contended.
    pub min: usize,
    /// Slots the pool may grow to.
    pub max: usize,
    /// Backlog one slot is expected to absorb: target = ceil(backlog / jobs_per_slot).
    pub jobs_per_slot: usize,
    /// How long a received job stays invisible to other workers (heartbeats extend it).
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            priority: Priority::Default,
            min: 1,
            max: 16,
            jobs_per_slot: 10,
            visibility_timeout: Duration::from_secs(60),
        }
    }
}

/// `[cloudwatch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchConfig {
    /// Publish queue metrics to CloudWatch.
    pub enabled: bool,
    /// Metric namespace.
    pub namespace: String,
    /// One `PutMetricData` call per interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// 1 (high resolution) or 60 seconds.
    pub storage_resolution: u32,
    /// Add an `InstanceId` dimension (each custom metric is billed: off by default).
    pub per_instance: bool,
    /// Extra dimensions on every metric, e.g. `{ Environment = "prod" }`.
    pub dimensions: BTreeMap<String, String>,
    /// Endpoint override (moto, LocalStack); env `JOBFLEET_CLOUDWATCH_ENDPOINT`.
    pub endpoint_url: Option<String>,
    /// AWS region; the SDK's default chain when left out.
    pub region: Option<String>,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        CloudWatchConfig {
            enabled: false,
            namespace: "Jobfleet".into(),
            interval: Duration::from_secs(60),
            storage_resolution: 60,
            per_instance: false,
            dimensions: BTreeMap::new(),
            endpoint_url: None,
            region: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (env `JOBFLEET_LOG_FORMAT`).
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info,worker=debug` (env `RUST_LOG` wins).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let database = DatabaseConfig::default();
        let queue = |priority, min, max| QueueConfig {
            priority,
            min,
            max,
            ..QueueConfig::default()
        };
        Config {
            broker: BrokerConfig {
                backend: BackendKind::Postgres,
                url: None,
                region: None,
                namespace: queues::config::default_namespace(),
                dedup_url: None,
            },
            database,
            worker: WorkerConfig::default(),
            queues: BTreeMap::from([
                ("maintenance".to_owned(), queue(Priority::Critical, 1, 4)),
                ("embeddings".to_owned(), queue(Priority::Default, 1, 32)),
                ("analytics".to_owned(), queue(Priority::Bulk, 1, 8)),
            ]),
            routes: BTreeMap::from([
                ("embed_document".to_owned(), "embeddings".to_owned()),
                ("rollup_analytics".to_owned(), "analytics".to_owned()),
                (
                    "refresh_materialized_view".to_owned(),
                    "maintenance".to_owned(),
                ),
                ("ensure_partitions".to_owned(), "maintenance".to_owned()),
                ("noop".to_owned(), "embeddings".to_owned()),
            ]),
            retry: BTreeMap::new(),
            jobs: toml::Table::new(),
            cloudwatch: CloudWatchConfig::default(),
            scheduler: SchedulerConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Where the config comes from: `--config`, else `JOBFLEET_CONFIG`, else defaults.
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("JOBFLEET_CONFIG").map(PathBuf::from))
}

impl Config {
    /// Reads the file (or the defaults when `path` is `None`), applies the environment
    /// overrides, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message,
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text; the error names the key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the environment overrides (`get` reads a variable; injectable for tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = get("JOBFLEET_DATABASE_URL").or_else(|| get("DATABASE_URL")) {
            self.database.url = url;
        }
        if let Some(b) = get("JOBFLEET_BROKER_BACKEND") {
            self.broker.backend = serde_json::from_value(serde_json::Value::String(b.clone()))
                .map_err(|_| ConfigError::Env {
                    var: "JOBFLEET_BROKER_BACKEND",
                    message: format!(
                        "`{b}` is not a backend (memory, sqs, rabbitmq, redis, postgres)"
                    ),
                })?;
        }
        if let Some(u) = get("JOBFLEET_BROKER_URL") {
            self.broker.url = Some(u);
        }
        if let Some(a) = get("JOBFLEET_ADMIN_ADDR") {
            self.worker.admin_addr = a.parse().map_err(|e| ConfigError::Env {
                var: "JOBFLEET_ADMIN_ADDR",
                message: format!("`{a}` is not host:port: {e}"),
            })?;
        }
        if let Some(f) = get("JOBFLEET_LOG_FORMAT") {
            self.log.format = match f.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => {
                    return Err(ConfigError::Env {
                        var: "JOBFLEET_LOG_FORMAT",
                        message: format!("`{f}` must be text or json"),
                    });
                }
            };
        }
        if let Some(e) = get("JOBFLEET_CLOUDWATCH_ENDPOINT") {
            self.cloudwatch.endpoint_url = Some(e);
        }
        Ok(())
    }

    /// The broker settings with the URLs filled in: the PostgreSQL backend, and the store of
    /// unique jobs' keys of the brokers that have none (RabbitMQ, SQS), default to the jobs'
    /// database.
    pub fn broker(&self) -> BrokerConfig {
        let mut b = self.broker.clone();
        if b.url.is_none() && b.backend == BackendKind::Postgres {
            b.url = Some(self.database.url.clone());
        }
        if b.dedup_url.is_none() && matches!(b.backend, BackendKind::Rabbitmq | BackendKind::Sqs) {
            b.dedup_url = Some(self.database.url.clone());
        }
        b
    }

    /// The queue a job of `kind` goes to when the producer names none.
    pub fn route(&self, kind: &str) -> Option<&str> {
        self.routes.get(kind).map(String::as_str)
    }

    /// Checks values serde can't: ranges, names, references between sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker()
            .validate()
            .map_err(|e| invalid("broker", e.to_string()))?;
        if self.queues.is_empty() {
            return Err(invalid("queues", "must configure at least one queue"));
        }
        if self.worker.budget == 0 {
            return Err(invalid("worker.budget", "must be at least 1"));
        }
        for (d, key) in [
            (self.worker.sample_interval, "worker.sample_interval"),
            (self.worker.receive_wait, "worker.receive_wait"),
            (self.worker.connect_timeout, "worker.connect_timeout"),
            (self.scheduler.connect_timeout, "scheduler.connect_timeout"),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be more than 0s"));
            }
        }
        let mut mins = 0;
        for (name, q) in &self.queues {
            let key = |k: &str| format!("queues.{name}.{k}");
            queues::QueueName::new(name.as_str())
                .map_err(|e| invalid(format!("queues.{name}"), e.to_string()))?;
            if q.max == 0 {
                return Err(invalid(key("max"), "must be at least 1"));
            }
            if q.min > q.max {
                return Err(invalid(
                    key("min"),
                    format!("({}) is above max ({})", q.min, q.max),
                ));
            }
            if q.jobs_per_slot == 0 {
                return Err(invalid(key("jobs_per_slot"), "must be at least 1"));
            }
            if q.visibility_timeout < Duration::from_secs(1) {
                return Err(invalid(key("visibility_timeout"), "must be at least 1s"));
            }
            mins += q.min;
        }
        if mins > self.worker.budget {
            return Err(invalid(
                "worker.budget",
                format!(
                    "({}) is below the sum of the queues' min ({mins})",
                    self.worker.budget
                ),
            ));
        }
        for (kind, queue) in &self.routes {
            if !self.queues.contains_key(queue) {
                return Err(invalid(
                    format!("routes.{kind}"),
                    format!("names queue `{queue}`, which is not under [queues]"),
                ));
            }
        }
        // `[retry]` and `[jobs]` are checked by the worker, which knows their types.
        let cw = &self.cloudwatch;
        if cw.storage_resolution != 1 && cw.storage_resolution != 60 {
            return Err(invalid("cloudwatch.storage_resolution", "must be 1 or 60"));
        }
        if cw.interval < Duration::from_secs(1) {
            return Err(invalid("cloudwatch.interval", "must be at least 1s"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.scheduler.schedules.iter().enumerate() {
            let key = format!("scheduler.schedules[{i}] ({})", s.name);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid(key, "needs a unique, non-empty name"));
            }
            // Whether each schedule has a queue is the scheduler's check (it compiles the
            // schedules at start): a worker-only config with its own [routes] must not fail on
            // the built-in schedules it never runs.
        }
        if self.scheduler.lease < Duration::from_secs(2) {
            return Err(invalid("scheduler.lease", "must be at least 2s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_postgres_on_the_database() {
        let cfg = Config::default();
        cfg.validate().unwrap();
        let b = cfg.broker();
        assert_eq!(b.backend, BackendKind::Postgres);
        assert_eq!(b.url.as_deref(), Some(cfg.database.url.as_str()));
        assert_eq!(cfg.route("embed_document"), Some("embeddings"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[worker]\nbudgett = 3\n").unwrap_err();
        assert!(err.contains("unknown field `budgett`"), "{err}");
        let err = Config::parse("[queues.embeddings]\nmaxx = 3\n").unwrap_err();
        assert!(err.contains("maxx"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cfg = Config::parse("[queues.q]\nmin = 5\nmax = 2\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("queues.q.min"), "{err}");
        let mut cfg = Config::default();
        cfg.routes.insert("x".into(), "nope".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("routes.x"), "{err}");
        let cfg = Config::parse("[cloudwatch]\nstorage_resolution = 5\n").unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("storage_resolution")
        );
        let cfg = Config::parse("[worker]\nconnect_timeout = \"0s\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("worker.connect_timeout"), "{err}");
        let cfg = Config::parse("[scheduler]\nconnect_timeout = \"2s\"\n").unwrap();
        assert_eq!(cfg.scheduler.connect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn env_overrides() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "JOBFLEET_BROKER_BACKEND" => Some("redis".into()),
            "JOBFLEET_BROKER_URL" => Some("redis://h:1".into()),
            "DATABASE_URL" => Some("postgres://db/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.broker().backend, BackendKind::Redis);
        assert_eq!(cfg.broker().url.as_deref(), Some("redis://h:1"));
        assert_eq!(cfg.database.url, "postgres://db/x");
        let err = cfg
            .apply_env(|k| (k == "JOBFLEET_BROKER_BACKEND").then(|| "kafka".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("JOBFLEET_BROKER_BACKEND") && err.contains("kafka"),
            "{err}"
        );
    }

    #[test]
    fn built_in_schedules_are_the_default_and_a_listed_one_replaces_them() {
        let cfg = Config::default();
        let names: Vec<_> = cfg
            .scheduler
            .schedules
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ensure_partitions_events",
                "refresh_dashboard_stats",
                "rollup_hourly",
                "rollup_daily"
            ]
        );
        let cfg = Config::parse("[scheduler]\nschedules = []\n").unwrap();
        assert!(cfg.scheduler.schedules.is_empty());
    }

    #[test]
    fn schedules_parse() {
        let cfg = Config::parse(
            r#"
            [[scheduler.schedules]]
            name = "partitions"
            cron = "0 0 3 * * *"
            kind = "ensure_partitions"
            payload = { table = "jobfleet.events", months_ahead = 3 }
            run_at_start = true
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let s = &cfg.scheduler.schedules[0];
        assert_eq!(s.catch_up, CatchUp::Latest);
        assert_eq!(s.timezone, "UTC");
    }
}
