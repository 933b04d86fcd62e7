"""Pure helpers of bench/run.sh's harness: quantiles, medians, Prometheus text, the table.

Nothing here touches a broker or a process, so all of it is unit-tested (test_stats.py, run by
scripts/test.sh)."""

import math
import re


def quantile(sorted_values, q):
    """The q-quantile (0..1) of an ascending list by the nearest-rank rule; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values):
    """The median of a non-empty list (mean of the middle two for an even count)."""
    s = sorted(values)
    if not s:
        raise ValueError("median of nothing")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Prometheus text exposition -> list of (name, {label: value}, float)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def counter(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


def histogram_quantile(samples, name, q, **labels):
    """The q-quantile of a Prometheus histogram `name` (summed over the other labels), by
    linear interpolation inside the bucket it falls in, as PromQL's histogram_quantile does.
    None when the histogram has no observations."""
    buckets = {}
    for n, l, v in samples:
        if n != f"{name}_bucket" or not all(l.get(k) == x for k, x in labels.items()):
            continue
        le = math.inf if l["le"] == "+Inf" else float(l["le"])
        buckets[le] = buckets.get(le, 0.0) + v
    if not buckets or buckets.get(math.inf, 0.0) == 0:
        return None
    bounds = sorted(buckets)
    total = buckets[math.inf]
    target = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= target:
            if math.isinf(b):
                return lower
            if c == below:
                return b
            return lower + (b - lower) * (target - below) / (c - below)
        lower, below = b, c
    return lower


def rows_with_ratios(rows, ours="jobfleet"):
    """Median row per (system, broker, concurrency, job count) over the rounds, plus jobfleet's
    ratio to every peer on the same broker, concurrency and job count: the median of the
    per-round ratios (each round's pair ran back to back), so a machine slowed for one round
    moves both sides. The job count is part of the key because a peer that cannot take the full
    count is paired with a jobfleet run of its own size."""
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["broker"], r["concurrency"], r["jobs"]), []).append(r)
    out = []
    for (impl, broker, conc, jobs), rs in groups.items():
        row = {
            "impl": impl,
            "broker": broker,
            "concurrency": conc,
            "rounds": len(rs),
            "jobs": jobs,
            "jobs_per_s": median([r["jobs_per_s"] for r in rs]),
            "jobs_per_s_range": (min(r["jobs_per_s"] for r in rs), max(r["jobs_per_s"] for r in rs)),
            "p50_ms": median([r["p50_ms"] for r in rs]),
            "p99_ms": median([r["p99_ms"] for r in rs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in rs]),
            "ratio": None,
        }
        if impl != ours:
            mine = {r["round"]: r for r in groups.get((ours, broker, conc, jobs), [])}
            per_round = [mine[r["round"]]["jobs_per_s"] / r["jobs_per_s"] for r in rs if r["round"] in mine]
            if per_round:
                row["ratio"] = median(per_round)
                row["ratio_range"] = (min(per_round), max(per_round))
        out.append(row)
    order = {"redis": 0, "postgres": 1, "rabbitmq": 2}
    out.sort(key=lambda r: (order.get(r["broker"], 9), r["concurrency"], -r["jobs"], r["impl"] != ours,
                            -r["jobs_per_s"]))
    return out


def markdown_table(rows, ours="jobfleet"):
    """The one table: system x broker, jobs/s, p50/p99, RSS, and jobfleet's ratio to each peer."""
    lines = [
        "| broker | concurrency | system | jobs | jobs/s (median, range) | p50 / p99 enqueue→start | peak RSS | jobfleet ÷ this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["jobs_per_s_range"]
        if r["impl"] == ours:
            ratio = "—"
        elif r["ratio"] is None:
            ratio = "n/a"
        else:
            a, b = r["ratio_range"]
            ratio = f"**{r['ratio']:.2f}×** ({a:.2f}–{b:.2f})"
        name = f"**{r['impl']}**" if r["impl"] == ours else r["impl"]
        lines.append(
            f"| {r['broker']} | {r['concurrency']} | {name} | {r['jobs']:,} | "
            f"{round(r['jobs_per_s']):,} ({round(lo):,}–{round(hi):,}) | "
            f"{round(r['p50_ms']):,} / {round(r['p99_ms']):,} ms | {r['peak_rss_mb']:.1f} MB | {ratio} |"
        )
    return "\n".join(lines)
