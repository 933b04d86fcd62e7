// pg-boss peer of bench/run.sh: N no-op jobs inserted through pg-boss's own bulk producer
// (`insert`, 1,000 a call) into a fresh schema, then drained by `work` handlers.
// Throughput settings from its docs: `batchSize` (one fetch and one completion per batch of
// jobs), the shortest polling interval it allows (0.5 s, only felt when the queue runs dry),
// and `concurrency` workers. A pg-boss worker sleeps out the polling interval after every fetch,
// so with `concurrency` jobs in flight it could never pass 2 x concurrency jobs/s; it is given
// more than the others instead: `concurrency` workers, each fetching batches of 50.
// Completed jobs are archived and deleted by pg-boss's own maintenance.
import PgBoss from "pg-boss";
import { flags, Probe } from "./common.mjs";

const a = flags({ jobs: 50000, concurrency: 50, url: "postgres://postgres@127.0.0.1:5432/postgres" });
const schema = `jfbench_pgboss_${process.pid}`;
const batchSize = 50;
const workers = a.concurrency;
const boss = new PgBoss({ connectionString: a.url, schema, max: workers + 4, supervise: false, schedule: false });
boss.on("error", (e) => console.error(`pg-boss error: ${e}`));
await boss.start();
const queue = "noop";
await boss.createQueue(queue);
const t0 = performance.now();
for (let i = 0; i < a.jobs; i += 1000) {
  const n = Math.min(1000, a.jobs - i);
  await boss.insert(Array.from({ length: n }, () => ({ name: queue, data: { t: Date.now() } })));
}
const enqueueS = (performance.now() - t0) / 1000;

const probe = new Probe(a.jobs);
for (let w = 0; w < workers; w += 1) {
  await boss.work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, async (jobs) => {
    for (const job of jobs) probe.start(job.data.t);
    // The batch completes when this returns; count its ends after that.
    setImmediate(() => jobs.forEach(() => probe.end()));
  });
}
await probe.finished;
await boss.stop({ graceful: true, wait: true, timeout: 5000 });
const { Client } = (await import("pg")).default;
const c = new Client({ connectionString: a.url });
await c.connect();
await c.query(`drop schema if exists ${schema} cascade`);
await c.end();
probe.report({ impl: "pg-boss", version: "10.4.2", broker: "postgres", concurrency: a.concurrency, enqueue_s: +enqueueS.toFixed(3) });
// pg-boss 10's stop() leaves a handle open (its pool or a timer) and the process would never
// end, which the harness saw as a hang: the result is printed, so end here.
process.exit(0);
