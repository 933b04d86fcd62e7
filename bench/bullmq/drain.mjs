// BullMQ side of bench/worker.sh: enqueue N no-op jobs onto a fresh queue, then drain them with
// one worker at the given concurrency and print one JSON line of figures, measured the same way
// as the jobfleet side (pre-filled backlog; drain = first job start .. last job done;
// latency = enqueue time .. handler start).
import { Queue, Worker } from "bullmq";

const args = Object.fromEntries(
  process.argv.slice(2).map((a) => a.replace(/^--/, "").split("=")),
);
const jobs = Number(args.jobs ?? 50000);
const concurrency = Number(args.concurrency ?? 50);
const url = new URL(args.redis ?? "redis://127.0.0.1:6379");
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const name = `bench-${process.pid}-${Date.now()}`;

const queue = new Queue(name, { connection });
const t0 = performance.now();
for (let i = 0; i < jobs; i += 1000) {
  const n = Math.min(1000, jobs - i);
  await queue.addBulk(
    Array.from({ length: n }, (_, k) => ({
      name: "noop",
      data: { n: i + k },
      opts: { removeOnComplete: true, removeOnFail: true },
    })),
  );
}
const enqueueS = (performance.now() - t0) / 1000;

const lat = new Float64Array(jobs);
let started = 0;
let done = 0;
let first = 0;
let peakRss = 0;
const finished = new Promise((resolve) => {
  const worker = new Worker(
    name,
    async (job) => {
      const now = Date.now();
      if (started === 0) first = performance.now();
      lat[started++] = now - job.timestamp;
    },
    { connection, concurrency },
  );
  worker.on("completed", () => {
    done += 1;
    if (done % 5000 === 0) peakRss = Math.max(peakRss, process.memoryUsage().rss);
    if (done === jobs) resolve(worker);
  });
});
const worker = await finished;
const drainS = (performance.now() - first) / 1000;
await worker.close();
await queue.obliterate({ force: true });
await queue.close();

const sorted = Array.from(lat.subarray(0, started)).sort((a, b) => a - b);
const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
console.log(
  JSON.stringify({
    impl: "bullmq",
    version: "5.81.5",
    jobs,
    concurrency,
    enqueue_s: +enqueueS.toFixed(3),
    drain_s: +drainS.toFixed(3),
    jobs_per_s: Math.round(jobs / drainS),
    p50_ms: q(0.5),
    p99_ms: q(0.99),
    peak_rss_mb: +(peakRss / 1048576).toFixed(1),
  }),
);
