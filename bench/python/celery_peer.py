"""Celery peer of bench/run.sh: N no-op tasks published through Celery's own producer onto a
fresh queue of the same RabbitMQ, then drained by one Celery worker in this process, timed the
same way as every other system (first task start .. last task end; latency = the producer's
enqueue time .. task start). Prints one JSON line.

Throughput settings from Celery's docs ("Optimizing" and the worker guide): no result backend
(`task_ignore_result`), no gossip/mingle/heartbeat, a thread pool of `--concurrency` (the same
number of jobs at once as every other system; no-op tasks are not CPU-bound), and a prefetch
multiplier of 16 ("a higher value for many short tasks"). Celery's default early ack is kept:
it acks a task before running it, which is less safe than jobfleet's ack after the run, and
faster.

    python celery_peer.py --jobs 50000 --concurrency 50 [--url amqp://guest:guest@127.0.0.1:5672//]
"""

import argparse
import json
import os
import threading
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun

ap = argparse.ArgumentParser()
ap.add_argument("--jobs", type=int, default=50000)
ap.add_argument("--concurrency", type=int, default=50)
ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
ap.add_argument("--queue", default=f"jfbench_celery_{os.getpid()}")
args = ap.parse_args()

QUEUE = args.queue
app = Celery("jfbench", broker=args.url)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=16,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_redirect_stdouts=False,
)


@app.task(name="noop")
def noop(enqueued_ms):
    return None


class Probe:
    def __init__(self, jobs):
        self.jobs = jobs
        self.lock = threading.Lock()
        self.lat = []
        self.done = 0
        self.first = None
        self.last = None
        self.peak_rss = 0
        self.finished = threading.Event()

    def start(self, enqueued_ms):
        now_ms = time.time() * 1000
        with self.lock:
            if self.first is None:
                self.first = time.perf_counter()
            self.lat.append(now_ms - enqueued_ms)

    def end(self):
        with self.lock:
            self.done += 1
            if self.done == self.jobs:
                self.last = time.perf_counter()
                self.finished.set()


probe = Probe(args.jobs)


@task_prerun.connect
def _prerun(task=None, args=None, **_):
    probe.start(args[0])


@task_postrun.connect
def _postrun(**_):
    probe.end()


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sample_rss():
    while not probe.finished.wait(0.1):
        probe.peak_rss = max(probe.peak_rss, rss_mb())


def report_and_exit(enqueue_s):
    probe.finished.wait()
    lat = sorted(probe.lat)
    drain = probe.last - probe.first

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    print(json.dumps({
        "impl": "celery", "version": __import__("celery").__version__, "broker": "rabbitmq",
        "concurrency": args.concurrency, "enqueue_s": round(enqueue_s, 3), "jobs": args.jobs,
        "drain_s": round(drain, 3), "jobs_per_s": round(args.jobs / drain),
        "p50_ms": round(q(0.5)), "p99_ms": round(q(0.99)), "peak_rss_mb": round(probe.peak_rss, 1),
    }), flush=True)
    # The worker owns the main thread, and its warm shutdown would wait for nothing useful. The
    # queue (auto-created, durable) is the harness's to delete.
    os._exit(0)


def main():
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(args.jobs):
            noop.apply_async(args=(time.time() * 1000,), producer=producer)
    enqueue_s = time.perf_counter() - t0
    threading.Thread(target=sample_rss, daemon=True).start()
    threading.Thread(target=report_and_exit, args=(enqueue_s,), daemon=True).start()
    app.worker_main(argv=[
        "worker", "--pool=threads", f"--concurrency={args.concurrency}", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", QUEUE,
    ])


if __name__ == "__main__":
    main()
