//! A broker outage between a job's end and its ack (issue 15 item 3), on the real PostgreSQL:
//! the worker's connection goes through a TCP proxy that the handler cuts as it finishes and
//! that comes back 1.5 s later. The ack is retried while the lease holds, so the job runs once,
//! its ack lands well before the visibility timeout, and nothing is redelivered.

mod common;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Runs, fast_policy, real_configs};
use jobs::{Handler, JobContext, JobError, Outcome, Registry};
use queues::conformance::unique_queue;
use queues::{BackendKind, Envelope, QueueSpec};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use worker::runner::{Runner, Settled};

/// A TCP proxy to PostgreSQL. Cutting it closes every connection through it, and while it is
/// cut it accepts new connections and closes them at once, as a load balancer in front of a
/// restarting database does. (A plainly refused connect is waited out by sqlx's own pool for
/// its acquire timeout; a reset one is not, and that is the failure the ack must survive.)
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            conns,
            accept: accept.abort_handle(),
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `cut_after`: counts its run, cuts the proxy as it returns (first run only) and has it
/// restored `outage` later.
struct CutAfter {
    runs: Runs,
    proxy: Arc<Proxy>,
    outage: Duration,
    cut_at: Arc<Mutex<Option<Instant>>>,
}

#[async_trait]
impl Handler for CutAfter {
    fn kind(&self) -> &'static str {
        "cut_after"
    }
    fn validate(&self, _p: &Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, ctx: &JobContext, _p: &Value) -> Result<Outcome, JobError> {
        if self.runs.bump(&ctx.job_id) == 1 {
            self.proxy.cut();
            *self.cut_at.lock().unwrap() = Some(Instant::now());
            let (proxy, outage) = (self.proxy.clone(), self.outage);
            tokio::spawn(async move {
                tokio::time::sleep(outage).await;
                proxy.restore();
            });
        }
        Ok(Outcome::new("done"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_between_job_end_and_ack_runs_the_job_once() {
    let mut cfg = real_configs()
        .into_iter()
        .find(|c| c.backend == BackendKind::Postgres)
        .expect("postgres config");
    let direct_url = cfg.url.clone().unwrap();
    let opts = PgConnectOptions::from_str(&direct_url).unwrap();
    let proxy = Arc::new(Proxy::start((opts.get_host().to_owned(), opts.get_port())).await);
    cfg.url = Some(format!(
        "postgres://{}@127.0.0.1:{}/{}",
        opts.get_username(),
        proxy.port,
        opts.get_database().unwrap_or("postgres")
    ));
    // Through the proxy: the worker's side. Direct: the test's own view of the queue.
    let broker = queues::connect(&cfg).await.unwrap();
    let mut direct_cfg = cfg.clone();
    direct_cfg.url = Some(direct_url);
    let direct = queues::connect(&direct_cfg).await.unwrap();

    let visibility = Duration::from_secs(8);
    let q = unique_queue("outage");
    broker
        .declare(&QueueSpec::new(&q).with_visibility(visibility))
        .await
        .unwrap();
    let runs = Runs::default();
    let cut_at = Arc::new(Mutex::new(None));
    let mut registry = Registry::new();
    registry.register(
        Arc::new(CutAfter {
            runs: runs.clone(),
            proxy: proxy.clone(),
            outage: Duration::from_millis(1500),
            cut_at: cut_at.clone(),
        }),
        fast_policy(3),
    );
    let runner = Runner::new(Arc::new(registry), "outage-test");
    let env = Envelope::new("cut_after", &q, json!({}));
    direct.send(&env).await.unwrap();

    let mut got = broker.receive(&q, 1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1, "the job was not received");
    let received = Instant::now();
    let (_abort_tx, abort) = tokio::sync::watch::channel(false);
    let settled = runner.run(&q, visibility, got.remove(0), abort).await;
    let cut = cut_at
        .lock()
        .unwrap()
        .expect("the handler ran and cut the proxy");
    assert_eq!(
        settled,
        Settled::Succeeded {
            kind: "cut_after".into()
        },
        "the ack did not land after the outage"
    );
    // It landed once the proxy was back (1.5 s), well before the lease would have run out.
    let acked_after = cut.elapsed();
    assert!(
        acked_after >= Duration::from_millis(1400) && received.elapsed() < visibility / 2,
        "ack landed {acked_after:?} after the cut, {:?} after the receive",
        received.elapsed()
    );
    let d = direct.depth(&q).await.unwrap();
    assert_eq!(
        (d.visible, d.in_flight, d.delayed, d.dead_lettered),
        (0, 0, 0, 0),
        "queue and DLQ empty once the ack landed"
    );

    // Past the visibility timeout: nothing comes back, the job ran exactly once.
    tokio::time::sleep_until(received + visibility + Duration::from_secs(1)).await;
    let again = direct
        .receive(&q, 1, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(again.is_empty(), "the job was redelivered");
    assert_eq!(runs.get(&env.id), 1, "the job ran more than once");
}
