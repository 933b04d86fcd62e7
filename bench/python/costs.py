"""What one job costs `worker run` on Redis, in counts that a busy machine does not blur:
CPU instructions of the worker process (valgrind's callgrind) and Redis commands it sends.

Two drains of a pre-filled queue under callgrind, SMALL and BIG jobs; the difference divided
by BIG - SMALL is the per-job cost without start-up and shutdown. During the BIG drain
`redis-cli MONITOR` counts the commands that name the run's keys, by command.

    .venv/bin/python bench/python/costs.py --worker target/release/worker [--small 2000 --big 20000]

Writes the BIG run's callgrind file next to the figures (see --out) for `callgrind_annotate`.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import threading

import harness


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise harness.BenchError(f"no totals in {path}")


def monitor(ns, counts, stop):
    p = subprocess.Popen(["redis-cli", "MONITOR"], stdout=subprocess.PIPE, text=True)
    cmd = re.compile(r'\] "([A-Za-z]+)"')
    for line in p.stdout:
        if ns in line:
            m = cmd.search(line)
            if m:
                counts[m.group(1).upper()] += 1
        if stop.is_set():
            break
    p.terminate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--big", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--out", default="/tmp/jobfleet-profile")
    ap.add_argument("--timeout", type=int, default=900)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    # Rendering /metrics is work the worker would not do in production this often.
    harness.POLL = 0.5
    side = harness.RedisSide(a.redis_url)
    irs = {}
    cmds = collections.Counter()
    for rnd, jobs in ((90, a.small), (91, a.big)):
        out = os.path.join(a.out, f"callgrind.{jobs}.out")
        wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q")
        stop = threading.Event()
        mon = None
        if jobs == a.big:
            ns = f"jfb{os.getpid()}r{rnd}c{a.concurrency}:"
            mon = threading.Thread(target=monitor, args=(ns, cmds, stop), daemon=True)
            mon.start()
        harness.say(f"callgrind: draining {jobs} jobs")
        harness.run_jobfleet(a, side, "redis", a.redis_url, jobs, a.concurrency, rnd, wrap=wrap)
        stop.set()
        irs[jobs] = total_ir(out)
    per_job = (irs[a.big] - irs[a.small]) / (a.big - a.small)
    print(f"instructions per job: {per_job:,.0f}  (totals {irs[a.small]:,} for {a.small}, {irs[a.big]:,} for {a.big})")
    # The fill's LPUSHes and the harness's own polling are not the worker's.
    worker_cmds = {k: v for k, v in cmds.items() if k not in ("LPUSH", "LLEN", "SCAN", "DEL")}
    total = sum(worker_cmds.values())
    detail = ", ".join(f"{k} {v / a.big:.3f}" for k, v in sorted(worker_cmds.items(), key=lambda kv: -kv[1]))
    print(f"redis commands per job: {total / a.big:.3f}  ({detail})")
    print(f"callgrind file of the {a.big}-job run: {os.path.join(a.out, f'callgrind.{a.big}.out')}")


if __name__ == "__main__":
    try:
        main()
    except harness.BenchError as e:
        print(f"profile FAILED: {e}", file=sys.stderr)
        sys.exit(1)
