"""bench/run.sh's harness: every system x broker pair, interleaved, one table.

jobfleet is measured as operators run it: the real `worker run` binary, its queue filled
beforehand by a client of another language (redis-py LPUSH, psycopg COPY into
jobfleet.messages, pika publishes), and the drain timed from outside by watching the worker's
own /metrics counters (first `jobfleet_jobs_started_total` .. `jobfleet_jobs_succeeded_total`
= N) every 20 ms; p50/p99 enqueue->start come from its `jobfleet_job_wait_seconds` histogram,
peak RSS from /proc. Each peer runs as a process of its own (bench/node/*.mjs, the apalis bench
binary, bench/python/celery_peer.py), fills its queue with its own producer, times the same
interval with in-process hooks and prints one JSON line.

Every failure is loud: a peer or worker that exits non-zero, prints no result, or does not
finish within its time limit stops the run with what failed and why (its stderr is passed
through, never swallowed).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUEUE = "bench"
# How often the drain watcher scrapes /metrics: often enough that the drain is timed to ~0.3 %,
# rarely enough that rendering the page costs the worker little (callgrind: ~2 %).
POLL = 0.02
CELERY_QUEUE = f"jfbench_celery_{os.getpid()}"


class BenchError(Exception):
    pass


def say(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso_now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope_template():
    # Everything but enqueued_at is fixed; ids only need to be unique.
    return '{"v":1,"id":"%s","kind":"noop","queue":"' + QUEUE + '","payload":{},"enqueued_at":"%s"}'


def bodies(n, start, tmpl, run):
    at = iso_now()
    return [tmpl % (f"{run}-{start + k}", at) for k in range(n)]


# ---------------------------------------------------------------- native producers (jobfleet)

class RedisSide:
    def __init__(self, url):
        import redis

        self.r = redis.Redis.from_url(url)
        self.url = url

    def fill(self, ns, jobs, run):
        tmpl, key = envelope_template(), f"{ns}:{QUEUE}:ready"
        for i in range(0, jobs, 1000):
            self.r.lpush(key, *bodies(min(1000, jobs - i), i, tmpl, run))
        got = self.r.llen(key)
        if got != jobs:
            raise BenchError(f"redis fill: {key} holds {got} items, expected {jobs}")

    def cleanup(self, ns):
        keys = list(self.r.scan_iter(f"{ns}:*", count=1000))
        if keys:
            self.r.delete(*keys)


class PostgresSide:
    def __init__(self, url):
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.url = url

    def fill(self, ns, jobs, run):
        tmpl = envelope_template()
        with self.conn.cursor() as cur:
            with cur.copy("COPY jobfleet.messages (ns, queue, body) FROM STDIN") as cp:
                for i in range(0, jobs, 1000):
                    for b in bodies(min(1000, jobs - i), i, tmpl, run):
                        cp.write_row((ns, QUEUE, b))
            cur.execute("SELECT count(*) FROM jobfleet.messages WHERE ns = %s AND queue = %s", (ns, QUEUE))
            got = cur.fetchone()[0]
        if got != jobs:
            raise BenchError(f"postgres fill: jobfleet.messages holds {got} rows of {ns}/{QUEUE}, expected {jobs}")

    def cleanup(self, ns):
        with self.conn.cursor() as cur:
            cur.execute("DELETE FROM jobfleet.messages WHERE ns = %s", (ns,))
            cur.execute("DELETE FROM jobfleet.queues WHERE ns = %s", (ns,))


class RabbitSide:
    def __init__(self, url):
        self.url = url

    def _channel(self):
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        return conn, conn.channel()

    def fill(self, ns, jobs, run):
        import pika

        conn, ch = self._channel()
        name = f"{ns}.{QUEUE}"
        # The worker declares the same quorum queue at start; it must exist before publishing.
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        tmpl = envelope_template()
        # No publisher confirms (one round trip each would make the fill the slow part); the
        # queue's own count below says whether every message arrived.
        for i in range(0, jobs, 1000):
            for b in bodies(min(1000, jobs - i), i, tmpl, run):
                ch.basic_publish("", name, b.encode(), props)
        deadline = time.monotonic() + 300
        while (got := ch.queue_declare(name, passive=True).method.message_count) < jobs:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        conn.close()
        if got != jobs:
            raise BenchError(f"rabbitmq fill: {name} holds {got} messages, expected {jobs}")

    def cleanup(self, ns):
        conn, ch = self._channel()
        for q in (f"{ns}.{QUEUE}", f"{ns}.{QUEUE}.dlq"):
            ch.queue_delete(q)
        conn.close()

    def delete_queue(self, name):
        conn, ch = self._channel()
        ch.queue_delete(name)
        ch.exchange_delete(name)
        conn.close()


# ---------------------------------------------------------------- jobfleet through `worker run`

def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return stats.parse_prometheus(r.read().decode())


def jobfleet_config(broker, url, ns, port, conc, db):
    """A `worker run` config: one queue of a fixed pool of `conc`, no-op jobs routed to it."""
    return f"""[broker]
backend = "{broker}"
url = "{url}"
namespace = "{ns}"
[database]
url = "{db}"
[worker]
budget = {conc}
admin_addr = "127.0.0.1:{port}"
receive_wait = "1s"
[queues.{QUEUE}]
min = {conc}
max = {conc}
visibility_timeout = "60s"
[routes]
noop = "{QUEUE}"
[scheduler]
schedules = []
[log]
level = "warn"
"""


def run_jobfleet(a, side, broker, url, jobs, conc, rnd, wrap=()):
    ns = f"jfb{os.getpid()}r{rnd}c{conc}"
    run = uuid.uuid4().hex[:8]
    port = free_port()
    cfg = jobfleet_config(broker, url, ns, port, conc, a.postgres_url)
    tmp = tempfile.mkdtemp(prefix="jfbench")
    path = os.path.join(tmp, "worker.toml")
    with open(path, "w") as f:
        f.write(cfg)
    env = dict(os.environ, RUST_LOG="warn")
    try:
        side.cleanup(ns)
        t0 = time.perf_counter()
        side.fill(ns, jobs, run)
        enqueue_s = time.perf_counter() - t0
        proc = subprocess.Popen([*wrap, a.worker, "--config", path, "run"], env=env)
        try:
            return watch_drain(proc, port, jobs, conc, broker, enqueue_s, a.timeout)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(120 if wrap else 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise BenchError("jobfleet `worker run` did not exit in time after SIGTERM")
                if code != 0:
                    raise BenchError(f"jobfleet `worker run` exited {code} after SIGTERM (expected 0)")
    finally:
        side.cleanup(ns)


def watch_drain(proc, port, jobs, conc, broker, enqueue_s, limit):
    started_at = time.perf_counter()
    first = last = None
    peak = 0.0
    samples = []
    while True:
        now = time.perf_counter()
        if now - started_at > limit:
            raise BenchError(f"jobfleet/{broker}: drain of {jobs} jobs not done after {limit} s")
        if proc.poll() is not None:
            raise BenchError(f"jobfleet `worker run` exited {proc.returncode} before the drain was done (its log is above)")
        try:
            samples = scrape(port)
        except OSError:
            time.sleep(0.05)  # admin HTTP not up yet
            continue
        now = time.perf_counter()
        if first is None and stats.counter(samples, "jobfleet_jobs_started_total", queue=QUEUE) > 0:
            first = now
        if first is not None:
            peak = max(peak, rss_mb(proc.pid))
        done = stats.counter(samples, "jobfleet_jobs_succeeded_total", queue=QUEUE)
        if done >= jobs:
            last = now
            break
        time.sleep(POLL)
    failed = stats.counter(samples, "jobfleet_jobs_failed_total", queue=QUEUE)
    if failed:
        raise BenchError(f"jobfleet/{broker}: {failed:.0f} jobs failed in a no-op drain")
    q = lambda p: stats.histogram_quantile(samples, "jobfleet_job_wait_seconds", p, queue=QUEUE)
    p50, p99 = q(0.5), q(0.99)
    drain = last - first
    return {
        "impl": "jobfleet", "broker": broker, "concurrency": conc, "jobs": jobs,
        "enqueue_s": round(enqueue_s, 3), "drain_s": round(drain, 3),
        "jobs_per_s": round(jobs / drain), "peak_rss_mb": round(peak, 1),
        "p50_ms": round(p50 * 1000) if p50 is not None else float("nan"),
        "p99_ms": round(p99 * 1000) if p99 is not None else float("nan"),
    }


# ---------------------------------------------------------------- peers

def run_peer(name, cmd, limit, cwd=None):
    try:
        out = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name}: no result within {limit} s ({' '.join(cmd)})")
    if out.returncode != 0:
        raise BenchError(f"{name} exited {out.returncode} ({' '.join(cmd)}); its stderr is above")
    for line in reversed(out.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise BenchError(f"{name} printed no JSON result; it printed:\n{out.stdout[-2000:]}")


def peer_cmd(a, impl, broker, jobs, conc):
    node = ["node"]
    if impl == "bullmq":
        return node + ["bullmq.mjs", f"--jobs={jobs}", f"--concurrency={conc}", f"--url={a.redis_url}"], os.path.join(ROOT, "bench/node")
    if impl == "graphile-worker":
        return node + ["graphile.mjs", f"--jobs={jobs}", f"--concurrency={conc}", f"--url={a.postgres_url}"], os.path.join(ROOT, "bench/node")
    if impl == "pg-boss":
        return node + ["pgboss.mjs", f"--jobs={jobs}", f"--concurrency={conc}", f"--url={a.postgres_url}"], os.path.join(ROOT, "bench/node")
    if impl in ("apalis-redis", "apalis-postgres"):
        url = a.redis_url if broker == "redis" else apalis_db_url(a.postgres_url)
        return [a.apalis, "--backend", broker, "--jobs", str(jobs), "--concurrency", str(conc), "--url", url], None
    if impl == "celery":
        return [sys.executable, os.path.join(ROOT, "bench/python/celery_peer.py"), "--jobs", str(jobs),
                "--concurrency", str(conc), "--queue", CELERY_QUEUE,
                "--url", a.amqp_url.replace("%2f", "").rstrip("/") + "//"], None
    raise BenchError(f"unknown system {impl}")


APALIS_DB = "jfbench_apalis"


def apalis_db_url(url):
    """apalis-postgres keeps its migrations in sqlx's `_sqlx_migrations`, as jobfleet does: in
    the same database each would find the other's rows and refuse. So it gets its own."""
    return url.rsplit("/", 1)[0] + "/" + APALIS_DB


def ensure_apalis_db(url):
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APALIS_DB,)).fetchone():
            say(f"creating database {APALIS_DB} for apalis-postgres")
            c.execute(f"CREATE DATABASE {APALIS_DB}")


PEERS = {
    "redis": ["bullmq", "apalis-redis"],
    "postgres": ["graphile-worker", "pg-boss", "apalis-postgres"],
    "rabbitmq": ["celery"],
}


# The most jobs a peer can drain from a pre-filled queue. apalis-redis 1.0's fetch script
# unpacks every queued id at once and fails on 8,000 or more (`too many results to unpack`, Lua's
# stack limit), so it is measured at 5,000, next to a jobfleet run of the same size in the same
# round; its row and ratio say so by their job count.
PEER_MAX_JOBS = {"apalis-redis": 5_000}


def round_runs(peers, jobs, rnd):
    """The (system, job count) runs of one round, back to back: jobfleet and every peer at the
    full count, a capped peer next to a jobfleet run of its size; every other round starts from
    the other end, so a slow minute hits both sides."""
    runs = [("jobfleet", jobs)]
    for p in peers:
        n = min(jobs, PEER_MAX_JOBS.get(p, jobs))
        runs += [("jobfleet", n), (p, n)] if n < jobs else [(p, jobs)]
    return list(reversed(runs)) if rnd % 2 else runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", required=True, help="the release `worker` binary")
    ap.add_argument("--apalis", required=True, help="the apalis bench binary")
    ap.add_argument("--brokers", default="redis,postgres,rabbitmq")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per broker and concurrency")
    ap.add_argument("--postgres-rounds", type=int, help="rounds on PostgreSQL (default: --rounds)")
    ap.add_argument("--rabbitmq-rounds", type=int, help="rounds on RabbitMQ (default: --rounds)")
    ap.add_argument("--redis-jobs", type=int, default=200_000)
    ap.add_argument("--redis-concurrency", default="50,200")
    ap.add_argument("--postgres-jobs", type=int, default=20_000)
    ap.add_argument("--postgres-concurrency", default="50")
    ap.add_argument("--rabbitmq-jobs", type=int, default=10_000)
    ap.add_argument("--rabbitmq-concurrency", default="50")
    ap.add_argument("--skip", default="", help="peers to leave out, comma-separated")
    ap.add_argument("--timeout", type=int, default=600, help="seconds one drain may take")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--results", help="append every run's JSON line to this file")
    a = ap.parse_args()
    skip = {s for s in a.skip.split(",") if s}

    if "postgres" in a.brokers.split(","):
        say("jobfleet tables: worker migrate")
        subprocess.run([a.worker, "migrate"], check=True, env=dict(os.environ, JOBFLEET_DATABASE_URL=a.postgres_url,
                                                                   JOBFLEET_BROKER_BACKEND="postgres",
                                                                   JOBFLEET_BROKER_URL=a.postgres_url),
                       stdout=sys.stderr)
        if "apalis-postgres" not in skip:
            ensure_apalis_db(a.postgres_url)
    rows = []
    results = open(a.results, "a") if a.results else None
    for broker in a.brokers.split(","):
        url = {"redis": a.redis_url, "postgres": a.postgres_url, "rabbitmq": a.amqp_url}[broker]
        side = {"redis": RedisSide, "postgres": PostgresSide, "rabbitmq": RabbitSide}[broker](url)
        jobs = getattr(a, f"{broker}_jobs")
        peers = [p for p in PEERS[broker] if p not in skip]
        for conc in [int(c) for c in getattr(a, f"{broker}_concurrency").split(",")]:
            rounds = getattr(a, f"{broker}_rounds", None) or a.rounds
            for rnd in range(rounds):
                for impl, n in round_runs(peers, jobs, rnd):
                    say(f"{broker} c={conc} round {rnd + 1}/{rounds}: {impl}, {n:,} jobs")
                    if impl == "jobfleet":
                        r = run_jobfleet(a, side, broker, url, n, conc, rnd)
                    else:
                        cmd, cwd = peer_cmd(a, impl, broker, n, conc)
                        try:
                            r = run_peer(impl, cmd, a.timeout + 300, cwd)
                        finally:
                            if impl == "celery":
                                side.delete_queue(CELERY_QUEUE)
                    r.update(round=rnd, broker=broker, concurrency=conc)
                    say(f"   {r['jobs_per_s']:,} jobs/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, RSS {r['peak_rss_mb']} MB")
                    rows.append(r)
                    if results:
                        results.write(json.dumps(r) + "\n")
                        results.flush()
    print(stats.markdown_table(stats.rows_with_ratios(rows)))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        print(f"bench FAILED: {' '.join(map(str, e.cmd))} exited {e.returncode}", file=sys.stderr)
        sys.exit(1)
