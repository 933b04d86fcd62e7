// BullMQ peer of bench/run.sh: fills a fresh queue with N no-op jobs through BullMQ's own
// producer (addBulk, 1,000 a call), then drains it with one Worker at the given concurrency.
// Throughput settings from BullMQ's docs: `concurrency` on the worker (jobs are async no-ops),
// `removeOnComplete`/`removeOnFail` so finished jobs are deleted instead of kept in sets.
import { Queue, Worker } from "bullmq";
import { flags, Probe } from "./common.mjs";

const a = flags({ jobs: 200000, concurrency: 50, url: "redis://127.0.0.1:6379" });
const url = new URL(a.url);
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const name = `jfbench-${process.pid}-${Date.now()}`;

const queue = new Queue(name, { connection });
const t0 = performance.now();
for (let i = 0; i < a.jobs; i += 1000) {
  const n = Math.min(1000, a.jobs - i);
  await queue.addBulk(
    Array.from({ length: n }, () => ({
      name: "noop",
      data: { t: Date.now() },
      opts: { removeOnComplete: true, removeOnFail: true },
    })),
  );
}
const enqueueS = (performance.now() - t0) / 1000;

const probe = new Probe(a.jobs);
const worker = new Worker(
  name,
  async (job) => {
    probe.start(job.data.t);
  },
  { connection, concurrency: a.concurrency },
);
worker.on("completed", () => probe.end());
worker.on("error", (e) => console.error(`bullmq worker error: ${e}`));
await probe.finished;
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
probe.report({ impl: "bullmq", version: "6.7.0", broker: "redis", concurrency: a.concurrency, enqueue_s: +enqueueS.toFixed(3) });
