#!/usr/bin/env python3
"""Native producer for bench/drill.sh: enqueues drill jobs the way another language's API
would (docs/backends/*.md), not through jobfleet's own client.

  redis     RESP `LPUSH <ns>:<queue>:ready` piped into `redis-cli --pipe`
  postgres  `COPY jobfleet.messages (ns, queue, body)` through `psql`
  rabbitmq  pika, publisher confirms, mandatory, persistent, to the default exchange

Good jobs are `diag_record {"run": RUN, "ms": MS}` with ids RUN-000000 ... ; --poison K mixes
in K bodies the worker must dead-letter (not JSON, envelope version 2, unknown kind, payload
that fails validation), spread evenly. Prints the number of bodies sent; exits non-zero
with the broker's message when anything was not accepted.
"""

import argparse
import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timezone

POISON = [
    lambda i, q: "this is not json %d" % i,
    lambda i, q: json.dumps(envelope("poison-v2-%d" % i, "diag_record", q, {"run": "x"}) | {"v": 2}),
    lambda i, q: json.dumps(envelope("poison-kind-%d" % i, "no_such_kind", q, {})),
    lambda i, q: json.dumps(envelope("poison-payload-%d" % i, "diag_record", q, {"ms": "soon"})),
]


def envelope(job_id, kind, queue, payload):
    return {
        "v": 1,
        "id": job_id,
        "kind": kind,
        "queue": queue,
        "payload": payload,
        "enqueued_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def bodies(args):
    good = [
        json.dumps(envelope("%s-%06d" % (args.run, i), "diag_record", args.queue, {"run": args.run, "ms": args.ms}))
        for i in range(args.jobs)
    ]
    out = list(good)
    step = len(good) / args.poison if args.poison else 0
    for p in reversed(range(args.poison)):
        out.insert(int(p * step), POISON[p % len(POISON)](p, args.queue))
    return out


def resp(*parts):
    out = ["*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode()
        out.append("$%d\r\n" % len(b))
        out.append(p + "\r\n")
    return "".join(out)


def send_redis(args, items):
    key = "%s:%s:ready" % (args.namespace, args.queue)
    batch = 500
    cmds = [resp("LPUSH", key, *items[i : i + batch]) for i in range(0, len(items), batch)]
    r = subprocess.run(["redis-cli", "-u", args.url, "--pipe"], input="".join(cmds), capture_output=True, text=True)
    # --pipe prints "errors: N, replies: M" and exits 0 only when every command succeeded.
    if r.returncode != 0 or "errors: 0" not in r.stdout:
        sys.exit("redis-cli --pipe to %s failed (exit %d): %s %s" % (args.url, r.returncode, r.stdout, r.stderr))


def send_postgres(args, items):
    buf = io.StringIO()
    w = csv.writer(buf)
    for b in items:
        w.writerow([args.namespace, args.queue, b])
    r = subprocess.run(
        ["psql", args.url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
         "\\copy jobfleet.messages (ns, queue, body) FROM STDIN WITH (FORMAT csv)"],
        input=buf.getvalue(), capture_output=True, text=True,
    )
    if r.returncode != 0:
        sys.exit("psql COPY into jobfleet.messages on %s failed (exit %d): %s" % (args.url, r.returncode, r.stderr))


def send_rabbitmq(args, items):
    # A confirmed publish is one round trip; a few connections in parallel keep 10,000 jobs
    # to seconds without giving up the per-message confirm.
    from concurrent.futures import ThreadPoolExecutor

    import pika

    rk = "%s.%s" % (args.namespace, args.queue)

    def publish(chunk):
        conn = pika.BlockingConnection(pika.URLParameters(args.url))
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        try:
            for b in chunk:
                ch.basic_publish(exchange="", routing_key=rk, mandatory=True, body=b.encode(), properties=props)
        finally:
            conn.close()

    n = args.connections
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(publish, items[i::n]) for i in range(n)]:
            try:
                f.result()
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
                sys.exit("RabbitMQ %s did not accept a publish to %s: %s" % (args.url, rk, e))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", required=True, choices=["redis", "postgres", "rabbitmq"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--queue", default="drill")
    ap.add_argument("--run", required=True, help="drill run tag, recorded by diag_record")
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--ms", type=int, default=20, help="how long each job sleeps")
    ap.add_argument("--poison", type=int, default=0)
    ap.add_argument("--connections", type=int, default=8, help="parallel publishers (rabbitmq)")
    args = ap.parse_args()
    items = bodies(args)
    {"redis": send_redis, "postgres": send_postgres, "rabbitmq": send_rabbitmq}[args.backend](args, items)
    print(len(items))


if __name__ == "__main__":
    main()
