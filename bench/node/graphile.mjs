// graphile-worker peer of bench/run.sh: N no-op jobs added through graphile-worker's own
// producer (`addJobs`, 1,000 a call) into a fresh schema, then drained by one runner.
// Throughput settings from its performance docs (worker.graphile.org/docs/performance):
// `concurrentJobs` = the concurrency, a `localQueue` of that size (jobs are fetched and locked
// in batches instead of one round trip each), `completeJobBatchDelay` 0 (completions of one
// tick are written together), a pool large enough for the concurrency, prepared statements on.
// Completed jobs are deleted by graphile-worker itself.
import { run, makeWorkerUtils, Logger } from "graphile-worker";
import { flags, Probe } from "./common.mjs";

const a = flags({ jobs: 50000, concurrency: 50, url: "postgres://postgres@127.0.0.1:5432/postgres" });
const schema = `jfbench_graphile_${process.pid}`;
const preset = {
  worker: {
    connectionString: a.url,
    schema,
    concurrentJobs: a.concurrency,
    maxPoolSize: a.concurrency + 2,
    localQueue: { size: a.concurrency },
    completeJobBatchDelay: 0,
    pollInterval: 2000,
  },
};

const utils = await makeWorkerUtils({ connectionString: a.url, schema });
await utils.migrate();
const t0 = performance.now();
for (let i = 0; i < a.jobs; i += 1000) {
  const n = Math.min(1000, a.jobs - i);
  await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: { t: Date.now() } })));
}
const enqueueS = (performance.now() - t0) / 1000;

const probe = new Probe(a.jobs);
const runner = await run({
  preset,
  noHandleSignals: true,
  // Only warnings and errors: its default logs a line per job, which no one benchmarks with.
  logger: new Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
  }),
  taskList: {
    noop: async (payload) => {
      probe.start(payload.t);
      // graphile-worker has no per-job "completed" hook; the handler's end is the job's end.
      queueMicrotask(() => probe.end());
    },
  },
});
await probe.finished;
await runner.stop();
await utils.withPgClient((c) => c.query(`drop schema if exists ${schema} cascade`));
await utils.release();
probe.report({ impl: "graphile-worker", version: "0.17.3", broker: "postgres", concurrency: a.concurrency, enqueue_s: +enqueueS.toFixed(3) });
