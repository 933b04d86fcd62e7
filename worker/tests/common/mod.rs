//! Shared test helpers: the brokers to run against, a fast config, test handlers, and polling.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobs::{Handler, JobContext, JobError, Outcome, RetryPolicy};
use queues::backends::memory::MemoryBroker;
use queues::{BackendKind, Broker, BrokerConfig};
use runtime::config::{Priority, QueueConfig};
use serde_json::Value;
use worker::Config;

/// A broker under test.
pub struct TestBroker {
    pub name: &'static str,
    pub broker: Arc<dyn Broker>,
    pub config: BrokerConfig,
    /// Memory backend handle, for writing bodies that are not envelopes.
    pub raw: Option<MemoryBroker>,
}

impl TestBroker {
    /// Writes `body` to `queue` as a foreign client would, bypassing the envelope. Returns
    /// false where this harness has no way to (the test then leaves that case out).
    pub async fn send_raw(&self, queue: &str, body: &str) -> bool {
        if let Some(m) = &self.raw {
            m.push_raw(queue, body.as_bytes());
            return true;
        }
        if self.config.backend == BackendKind::Postgres {
            let pool = sqlx::PgPool::connect(self.config.url.as_deref().unwrap())
                .await
                .unwrap();
            sqlx::query("INSERT INTO jobfleet.messages (ns, queue, body) VALUES ($1, $2, $3)")
                .bind(&self.config.namespace)
                .bind(queue)
                .bind(body)
                .execute(&pool)
                .await
                .unwrap();
            return true;
        }
        false
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The real backends, with their URLs from `JOBFLEET_TEST_<BACKEND>_URL` or the local default.
pub fn real_configs() -> Vec<BrokerConfig> {
    let mut sqs = BrokerConfig::new(
        BackendKind::Sqs,
        env_or("JOBFLEET_TEST_SQS_URL", "http://127.0.0.1:5000"),
    );
    sqs.region = Some("us-east-1".into());
    [
        BrokerConfig::new(
            BackendKind::Postgres,
            std::env::var("JOBFLEET_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                env_or("JOBFLEET_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
            }),
        ),
        BrokerConfig::new(
            BackendKind::Redis,
            env_or("JOBFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        ),
        BrokerConfig::new(
            BackendKind::Rabbitmq,
            env_or(
                "JOBFLEET_TEST_RABBITMQ_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
        ),
        sqs,
    ]
    .into_iter()
    .map(|mut c| {
        // A namespace per test run, so runs never see each other's leftovers.
        c.namespace = format!("jft{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        // Where RabbitMQ and SQS keep unique jobs' keys (the binaries default it to the jobs'
        // database, as the test configs do).
        if matches!(c.backend, BackendKind::Rabbitmq | BackendKind::Sqs) {
            c.dedup_url = Some(env_or(
                "JOBFLEET_PG_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ));
        }
        c
    })
    .collect()
}

/// Connects to every real backend; one that can't be used (service down, not compiled in)
/// fails the test rather than being skipped.
pub async fn real_brokers() -> Vec<TestBroker> {
    let mut out = Vec::new();
    for cfg in real_configs() {
        match queues::connect(&cfg).await {
            Ok(broker) => out.push(TestBroker {
                name: cfg.backend.as_str(),
                broker,
                config: cfg,
                raw: None,
            }),
            Err(e) => panic!("backend {} is not usable: {e}", cfg.backend),
        }
    }
    out
}

/// The memory backend plus every real one available.
pub async fn all_brokers() -> Vec<TestBroker> {
    let mem = MemoryBroker::new();
    let mut v = vec![TestBroker {
        name: "memory",
        broker: Arc::new(mem.clone()),
        config: BrokerConfig::new(BackendKind::Memory, "memory://"),
        raw: Some(mem),
    }];
    v.extend(real_brokers().await);
    v
}

/// A config with one pool per `(queue, priority, min, max)`, tuned for fast tests.
pub fn config(queues: &[(&str, Priority, usize, usize)]) -> Config {
    let mut cfg = Config::default();
    cfg.queues.clear();
    cfg.routes.clear();
    for (name, priority, min, max) in queues {
        cfg.queues.insert(
            (*name).to_owned(),
            QueueConfig {
                priority: *priority,
                min: *min,
                max: *max,
                jobs_per_slot: 10,
                visibility_timeout: Duration::from_secs(5),
            },
        );
    }
    cfg.worker.sample_interval = Duration::from_millis(200);
    cfg.worker.receive_wait = Duration::from_millis(200);
    cfg.worker.scale_down_cooldown = Duration::from_secs(2);
    cfg.worker.shutdown_grace = Duration::from_secs(5);
    cfg.worker.admin_addr = "127.0.0.1:0".parse().unwrap();
    cfg.worker.id = Some("test-worker".into());
    cfg
}

/// A fast retry policy.
pub fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
    }
}

/// Runs of each job id, shared by the test handlers.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, usize>>>);

impl Runs {
    pub fn bump(&self, id: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(id.to_owned()).or_default();
        *n += 1;
        *n
    }
    pub fn get(&self, id: &str) -> usize {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// `flaky {"fail": N}`: fails its first N runs (per job id), then succeeds.
pub struct Flaky(pub Runs);

#[async_trait]
impl Handler for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn validate(&self, p: &Value) -> Result<(), JobError> {
        p.get("fail")
            .and_then(Value::as_u64)
            .map(|_| ())
            .ok_or_else(|| JobError::bad_payload("flaky", "needs {\"fail\": N}"))
    }
    async fn run(&self, ctx: &JobContext, p: &Value) -> Result<Outcome, JobError> {
        let n = self.0.bump(&ctx.job_id);
        let fail = p["fail"].as_u64().unwrap_or(0) as usize;
        if n <= fail {
            Err(JobError::Retry(format!("flaky failure #{n}")))
        } else {
            Ok(Outcome::new("ok"))
        }
    }
}

/// `sleep {"ms": N}`: sleeps, counts, succeeds.
pub struct Sleep(pub Runs);

#[async_trait]
impl Handler for Sleep {
    fn kind(&self) -> &'static str {
        "sleep"
    }
    fn validate(&self, p: &Value) -> Result<(), JobError> {
        p.get("ms")
            .and_then(Value::as_u64)
            .map(|_| ())
            .ok_or_else(|| JobError::bad_payload("sleep", "needs {\"ms\": N}"))
    }
    async fn run(&self, ctx: &JobContext, p: &Value) -> Result<Outcome, JobError> {
        self.0.bump(&ctx.job_id);
        tokio::time::sleep(Duration::from_millis(p["ms"].as_u64().unwrap_or(0))).await;
        Ok(Outcome::new("slept"))
    }
}

/// `panic`: panics.
pub struct Panic;

#[async_trait]
impl Handler for Panic {
    fn kind(&self) -> &'static str {
        "panic"
    }
    fn validate(&self, _p: &Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, _ctx: &JobContext, _p: &Value) -> Result<Outcome, JobError> {
        panic!("handler blew up")
    }
}

/// `count`: counts and succeeds at once.
pub struct Count(pub Arc<AtomicUsize>);

#[async_trait]
impl Handler for Count {
    fn kind(&self) -> &'static str {
        "count"
    }
    fn validate(&self, _p: &Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, _ctx: &JobContext, _p: &Value) -> Result<Outcome, JobError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::default())
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A spawned `worker` process, killed if the test fails before it exited, so no worker outlives
/// its test.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A database of its own for one test, on the server of a URL naming an existing database
/// there; [`FreshDb::drop_it`] removes it at the end.
pub struct FreshDb {
    admin: sqlx::PgPool,
    name: String,
    /// The new database's URL.
    pub url: String,
}

impl FreshDb {
    /// Creates `<prefix>_<random>` next to the database `base` names.
    pub async fn create(base: &str, prefix: &str) -> FreshDb {
        use sqlx::Executor;
        let admin = sqlx::PgPool::connect(base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {base}: {e} (scripts/services.sh up starts it)")
        });
        let name = format!(
            "{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let (server, _) = base.rsplit_once('/').unwrap();
        let url = format!("{server}/{name}");
        FreshDb { admin, name, url }
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_it(self) {
        use sqlx::Executor;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.name
            )))
            .await
            .unwrap();
    }
}

/// The `worker` binary with the diagnostic kinds on and none of the environment overrides
/// (`JOBFLEET_CONFIG`, `JOBFLEET_DATABASE_URL`, `DATABASE_URL`, `JOBFLEET_BROKER_*`,
/// `JOBFLEET_ADMIN_ADDR`) a developer's shell may set: a test's config file is all it reads.
pub fn worker_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
    c.env("JOBFLEET_DIAGNOSTIC_KINDS", "1");
    for var in [
        "JOBFLEET_CONFIG",
        "JOBFLEET_DATABASE_URL",
        "DATABASE_URL",
        "JOBFLEET_BROKER_URL",
        "JOBFLEET_BROKER_BACKEND",
        "JOBFLEET_ADMIN_ADDR",
    ] {
        c.env_remove(var);
    }
    c
}

/// A TCP port free on loopback now (for a child's admin address).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET http://127.0.0.1:<port><path>`: status and body, or `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .unwrap();
    let r = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}
