//! `worker run` on a Redis Cluster whose topology changes under it: a master failed over to
//! its replica in the middle of a drain, and a master that is down when the worker starts and
//! comes back later. Each test starts a cluster of its own on free ports
//! (`scripts/redis-cluster.sh`, the same script that starts the shared one on 7000-7005), so
//! the conformance suite running in parallel on the shared cluster never sees a failover, and
//! removes it at the end. Jobs are `diag_record`, so PostgreSQL counts how often each ran:
//! nothing lost = every key there.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{FreshDb, Proc, wait_until};
use queues::backends::redis::RedisBroker;
use queues::conformance::unique_queue;
use queues::{BackendKind, BrokerConfig, Envelope, Inspector, Producer};
use serde_json::json;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster.sh");

fn pg_base() -> String {
    std::env::var("JOBFLEET_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether `port` and its cluster bus port are free.
fn free(port: u16) -> bool {
    [port, port + 10_000]
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Master port → (its slot ranges, its replicas' ports).
type Topology = BTreeMap<u16, (Vec<(u16, u16)>, Vec<u16>)>;

/// A Redis Cluster of this test's own, torn down on drop.
struct TestCluster {
    base: u16,
    nodes: u16,
    masters: u16,
    replicas: u16,
    dir: tempfile::TempDir,
}

impl TestCluster {
    fn start(masters: u16, replicas: u16) -> TestCluster {
        let nodes = masters * (1 + replicas);
        let mut base = 17_000 + (std::process::id() % 400) as u16 * 20;
        while !(0..nodes).all(|i| free(base + i)) {
            base += 20;
            assert!(base < 26_000, "no free ports for a test cluster");
        }
        let c = TestCluster {
            base,
            nodes,
            masters,
            replicas,
            dir: tempfile::tempdir().unwrap(),
        };
        c.up();
        c
    }

    /// Starts every node that is not running and waits for `cluster_state:ok` on all.
    fn up(&self) {
        let out = Command::new(SCRIPT)
            .args(["up", &self.base.to_string(), &self.masters.to_string()])
            .arg(self.replicas.to_string())
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, first: u16) -> String {
        let mut ports: Vec<u16> = (self.base..self.base + self.nodes).collect();
        ports.retain(|p| *p != first);
        ports.insert(0, first);
        let list: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", list.join(","))
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `CLUSTER NODES` as seen from `port`: master port → (slot ranges, replica ports).
    fn topology(&self, port: u16) -> Topology {
        let text = self.cli(port, &["CLUSTER", "NODES"]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .filter(|f: &Vec<&str>| f.len() >= 8)
            .collect();
        let port_of = |f: &Vec<&str>| -> u16 {
            let addr = f[1].split('@').next().unwrap();
            addr.rsplit_once(':').unwrap().1.parse().unwrap()
        };
        let mut out = BTreeMap::new();
        for f in rows
            .iter()
            .filter(|f| f[2].contains("master") && !f[2].contains("fail"))
        {
            let ranges = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            let replicas = rows
                .iter()
                .filter(|r| r[3] == f[0] && !r[2].contains("fail"))
                .map(port_of)
                .collect();
            out.insert(port_of(f), (ranges, replicas));
        }
        out
    }

    /// The master serving `queue`'s hash tag, as seen from `port`.
    fn master_of(&self, port: u16, queue: &str) -> Option<u16> {
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", queue])
            .trim()
            .parse()
            .unwrap();
        self.topology(port)
            .into_iter()
            .find(|(_, (ranges, _))| ranges.iter().any(|(a, z)| (*a..=*z).contains(&slot)))
            .map(|(m, _)| m)
    }

    /// A replica of `master` that has caught up with it, waited for: `cluster_state:ok` (what
    /// `up` waits for) says every slot is served, not that every replica has joined and synced,
    /// and a manual failover needs a synced replica.
    fn synced_replica_of(&self, master: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replica = self
                .topology(self.base)
                .get(&master)
                .and_then(|(_, replicas)| replicas.first().copied());
            if let Some(r) = replica
                && self
                    .cli(r, &["INFO", "replication"])
                    .contains("master_link_status:up")
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no synced replica of master {master} within 30 s: {:?}",
                self.topology(self.base)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Two queue names whose slots are on two different masters.
    fn queues_on_two_masters(&self) -> [(String, u16); 2] {
        let a = unique_queue("cla");
        let ma = self.master_of(self.base, &a).unwrap();
        loop {
            let b = unique_queue("clb");
            let mb = self.master_of(self.base, &b).unwrap();
            if mb != ma {
                return [(a, ma), (b, mb)];
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .args(["down", &self.base.to_string(), &self.nodes.to_string()])
            .arg(self.dir.path())
            .status();
    }
}

fn write_config(dir: &Path, url: &str, ns: &str, db: &str, admin: u16, queues: &[&str]) -> PathBuf {
    let mut text = format!(
        r#"
[broker]
backend = "redis"
url = "{url}"
namespace = "{ns}"

[database]
url = "{db}"

[worker]
admin_addr = "127.0.0.1:{admin}"
sample_interval = "300ms"
receive_wait = "300ms"
connect_timeout = "10s"
shutdown_grace = "2s"

[routes]
diag_record = "{}"
"#,
        queues[0]
    );
    for q in queues {
        text += &format!("\n[queues.{q}]\nmin = 8\nmax = 8\nvisibility_timeout = \"10s\"\n");
    }
    let path = dir.join(format!("worker-{admin}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_worker(config: &Path, log: &Path) -> Proc {
    Proc(
        common::worker_cmd()
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn the worker binary"),
    )
}

/// Distinct keys recorded for `run`, and all runs of them.
async fn recorded(db: &sqlx::PgPool, run: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(DISTINCT key), count(*) FROM jobfleet_diag.runs WHERE run = $1")
        .bind(run)
        .fetch_one(db)
        .await
        .unwrap_or((0, 0))
}

fn jobs(queue: &str, run: &str, n: usize, prefix: &str) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            Envelope::new(
                "diag_record",
                queue,
                json!({"run": run, "key": format!("{prefix}-{i}")}),
            )
        })
        .collect()
}

fn assert_running(workers: &mut [Proc], logs: &[PathBuf]) {
    for (w, log) in workers.iter_mut().zip(logs) {
        if let Some(status) = w.0.try_wait().unwrap() {
            panic!(
                "a worker exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// 10,000 jobs over two queues on different masters, drained by two `worker run` processes;
/// when about a third are done, the master holding the first queue is failed over to its
/// replica (`CLUSTER FAILOVER` on the replica). Every job completes, no worker exits, and the
/// lost count is printed and must be 0 (a manual failover waits for the replica to catch up).
/// The cluster is this test's own and is removed at the end, so there is no topology to give
/// back to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_mid_drain_loses_nothing_and_workers_stay_up() {
    const TOTAL: usize = 10_000;
    let cluster = TestCluster::start(3, 1);
    let [(qa, master_a), (qb, _)] = cluster.queues_on_two_masters();
    let replica_a = cluster.synced_replica_of(master_a);
    let fresh = FreshDb::create(&pg_base(), "jft_cluster").await;
    let db = sqlx::PgPool::connect(&fresh.url).await.unwrap();
    let ns = format!("jft{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let run = uuid::Uuid::new_v4().to_string();

    let mut bcfg = BrokerConfig::new(BackendKind::Redis, cluster.url(cluster.base));
    bcfg.namespace = ns.clone();
    let broker = RedisBroker::connect(&bcfg).await.unwrap();
    let mut all = jobs(&qa, &run, TOTAL / 2, "a");
    all.extend(jobs(&qb, &run, TOTAL / 2, "b"));
    for chunk in all.chunks(500) {
        broker.send_batch(chunk).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("w{i}.log")))
        .collect();
    let mut workers: Vec<Proc> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            // Each worker is told a different first seed node.
            let url = cluster.url(cluster.base + i as u16);
            let cfg = write_config(
                dir.path(),
                &url,
                &ns,
                &fresh.url,
                common::free_port(),
                &[&qa, &qb],
            );
            spawn_worker(&cfg, log)
        })
        .collect();

    let t0 = Instant::now();
    loop {
        assert_running(&mut workers, &logs);
        if recorded(&db, &run).await.0 >= (TOTAL / 3) as i64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the drain did not get going"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = recorded(&db, &run).await.0;
    let reply = cluster.cli(replica_a, &["CLUSTER", "FAILOVER"]);
    assert_eq!(reply.trim(), "OK", "CLUSTER FAILOVER on :{replica_a}");
    wait_until(Duration::from_secs(30), "the replica took over", || async {
        cluster.cli(replica_a, &["ROLE"]).starts_with("master")
    })
    .await;
    let failed_over = Instant::now();
    eprintln!("failed over :{master_a} -> :{replica_a} with {before} of {TOTAL} jobs done");

    let deadline = Instant::now() + Duration::from_secs(180);
    let (done, runs) = loop {
        assert_running(&mut workers, &logs);
        let (done, runs) = recorded(&db, &run).await;
        if done == TOTAL as i64 || Instant::now() > deadline {
            break (done, runs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lost = TOTAL as i64 - done;
    eprintln!(
        "failover drill: {done} of {TOTAL} jobs completed, lost {lost}, ran twice {} \
         (drain finished {:?} after the failover)",
        runs - done,
        failed_over.elapsed()
    );
    assert_eq!(lost, 0, "jobs lost in a manual failover");
    // Nothing left behind either: no job waits, none is in flight or dead-lettered.
    for q in [&qa, &qb] {
        let d = broker.depth(q).await.unwrap();
        assert_eq!(
            (d.backlog(), d.dead_lettered),
            (0, 0),
            "{q} after the drain: {d:?}"
        );
    }
    assert!(
        cluster.topology(replica_a).contains_key(&replica_a),
        "the cluster agrees :{replica_a} is a master"
    );
    assert_running(&mut workers, &logs);
    drop(workers);
    db.close().await;
    fresh.drop_it().await;
}

/// One master (with no replica) is down when the worker starts, and is its first seed node:
/// the worker comes up, `/readyz` is 503 naming the queue on that master and the node, and the
/// queue on a live master is served meanwhile. The master comes back: `/readyz` turns 200 and
/// its queue is served too, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_down_at_start_serves_the_other_queues() {
    let cluster = TestCluster::start(3, 0);
    let [(q_down, dead), (q_up, _)] = cluster.queues_on_two_masters();
    let fresh = FreshDb::create(&pg_base(), "jft_cluster").await;
    let db = sqlx::PgPool::connect(&fresh.url).await.unwrap();
    let ns = format!("jft{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let run = uuid::Uuid::new_v4().to_string();

    cluster.cli(dead, &["SHUTDOWN", "NOSAVE"]);
    let alive = (cluster.base..cluster.base + 3)
        .find(|p| *p != dead)
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the cluster marks the master failed",
        || async {
            cluster
                .cli(alive, &["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.contains(&format!(":{dead}@")) && l.contains("master,fail "))
        },
    )
    .await;

    let url = cluster.url(dead);
    let admin = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let cfg = write_config(dir.path(), &url, &ns, &fresh.url, admin, &[&q_up, &q_down]);
    let mut worker = vec![spawn_worker(&cfg, &log)];
    let logs = [log];

    let mut bcfg = BrokerConfig::new(BackendKind::Redis, url);
    bcfg.namespace = ns.clone();
    let broker = RedisBroker::connect(&bcfg).await.unwrap();
    broker
        .send_batch(&jobs(&q_up, &run, 50, "up"))
        .await
        .unwrap();

    let t0 = Instant::now();
    let body = loop {
        assert_running(&mut worker, &logs);
        if let Some((503, body)) = common::http_get(admin, "/readyz").await
            && body.contains(&q_down)
        {
            break body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "/readyz never named {q_down}: {:?}",
            common::http_get(admin, "/readyz").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("/readyz with :{dead} down: {body}");
    assert!(
        !body.contains(&q_up),
        "the live queue is reported too: {body}"
    );
    assert!(
        body.contains(&format!("127.0.0.1:{dead}")),
        "/readyz does not name the node: {body}"
    );
    wait_until(
        Duration::from_secs(60),
        "the live queue's jobs ran",
        || async { recorded(&db, &run).await.0 == 50 },
    )
    .await;
    let err = broker.send(&jobs(&q_down, &run, 1, "early")[0]).await;
    let err = err.expect_err("a send to the down master succeeded");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{dead}")),
        "{err}"
    );

    cluster.up();
    wait_until(
        Duration::from_secs(60),
        "/readyz 200 once the master is back",
        || async { matches!(common::http_get(admin, "/readyz").await, Some((200, _))) },
    )
    .await;
    let mut back = jobs(&q_down, &run, 20, "down");
    back.extend(jobs(&q_up, &run, 20, "up2"));
    let t0 = Instant::now();
    loop {
        match broker.send_batch(&back).await {
            Ok(_) => break,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("send after the master came back: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("the master came back but sends still fail: {e}"),
        }
    }
    wait_until(Duration::from_secs(60), "both queues' jobs ran", || async {
        recorded(&db, &run).await.0 == 90
    })
    .await;
    assert_running(&mut worker, &logs);
    drop(worker);
    db.close().await;
    fresh.drop_it().await;
}
