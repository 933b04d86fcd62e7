// What every Node peer of bench/run.sh shares: its flags, the probe that times the drain the
// same way for every system (first handler start .. last handler end; latency = the
// producer's enqueue time `t` in the payload .. handler start) and the one JSON line it prints.
export function flags(defaults) {
  const a = { ...defaults };
  for (const arg of process.argv.slice(2)) {
    const [k, v] = arg.replace(/^--/, "").split("=");
    a[k] = v ?? true;
  }
  a.jobs = Number(a.jobs);
  a.concurrency = Number(a.concurrency);
  return a;
}

export class Probe {
  constructor(jobs) {
    this.jobs = jobs;
    this.lat = new Float64Array(jobs);
    this.started = 0;
    this.done = 0;
    this.first = 0;
    this.last = 0;
    this.peakRss = 0;
    this.finished = new Promise((resolve) => (this.resolve = resolve));
    this.rssTimer = setInterval(() => {
      this.peakRss = Math.max(this.peakRss, process.memoryUsage().rss);
    }, 100);
  }

  start(enqueuedMs) {
    if (this.started === 0) this.first = performance.now();
    if (this.started < this.jobs) this.lat[this.started] = Date.now() - enqueuedMs;
    this.started += 1;
  }

  end() {
    this.done += 1;
    if (this.done === this.jobs) {
      this.last = performance.now();
      clearInterval(this.rssTimer);
      this.resolve();
    }
  }

  report(fields) {
    const drainS = (this.last - this.first) / 1000;
    const sorted = Array.from(this.lat.subarray(0, Math.min(this.started, this.jobs))).sort((a, b) => a - b);
    const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
    console.log(
      JSON.stringify({
        ...fields,
        jobs: this.jobs,
        drain_s: +drainS.toFixed(3),
        jobs_per_s: Math.round(this.jobs / drainS),
        p50_ms: Math.round(q(0.5)),
        p99_ms: Math.round(q(0.99)),
        peak_rss_mb: +(this.peakRss / 1048576).toFixed(1),
      }),
    );
  }
}
