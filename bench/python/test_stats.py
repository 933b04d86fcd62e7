"""Unit tests of the bench harness's pure helpers (python3 -m unittest discover bench/python)."""

import math
import unittest

from harness import PEER_MAX_JOBS, round_runs
from stats import (counter, histogram_quantile, markdown_table, median, parse_prometheus,
                   quantile, rows_with_ratios)

PAGE = """# TYPE jobfleet_jobs_started_total counter
jobfleet_jobs_started_total{queue="bench",kind="noop"} 150
jobfleet_jobs_started_total{queue="other",kind="noop"} 7
jobfleet_job_wait_seconds_bucket{queue="bench",kind="noop",le="0.1"} 0
jobfleet_job_wait_seconds_bucket{queue="bench",kind="noop",le="0.2"} 50
jobfleet_job_wait_seconds_bucket{queue="bench",kind="noop",le="0.4"} 100
jobfleet_job_wait_seconds_bucket{queue="bench",kind="noop",le="+Inf"} 100
jobfleet_job_wait_seconds_sum{queue="bench",kind="noop"} 25
"""


class Quantiles(unittest.TestCase):
    def test_nearest_rank(self):
        v = list(range(1, 101))
        self.assertEqual(quantile(v, 0.5), 50)
        self.assertEqual(quantile(v, 0.99), 99)
        self.assertEqual(quantile(v, 1.0), 100)
        self.assertEqual(quantile(v, 0.0), 1)
        self.assertIsNone(quantile([], 0.5))

    def test_median(self):
        self.assertEqual(median([3, 1, 2]), 2)
        self.assertEqual(median([4, 1, 2, 3]), 2.5)
        with self.assertRaises(ValueError):
            median([])


class Prometheus(unittest.TestCase):
    def test_counter_filters_by_label(self):
        s = parse_prometheus(PAGE)
        self.assertEqual(counter(s, "jobfleet_jobs_started_total", queue="bench"), 150)
        self.assertEqual(counter(s, "jobfleet_jobs_started_total"), 157)
        self.assertEqual(counter(s, "jobfleet_jobs_succeeded_total", queue="bench"), 0)

    def test_histogram_quantile_interpolates_inside_the_bucket(self):
        s = parse_prometheus(PAGE)
        # 50 of 100 fall in (0.1, 0.2]: the median is that bucket's top; p75 is halfway up the next.
        self.assertAlmostEqual(histogram_quantile(s, "jobfleet_job_wait_seconds", 0.5, queue="bench"), 0.2)
        self.assertAlmostEqual(histogram_quantile(s, "jobfleet_job_wait_seconds", 0.75, queue="bench"), 0.3)
        self.assertAlmostEqual(histogram_quantile(s, "jobfleet_job_wait_seconds", 0.25, queue="bench"), 0.15)
        self.assertIsNone(histogram_quantile(s, "jobfleet_job_wait_seconds", 0.5, queue="none"))

    def test_observations_past_the_last_bound_report_that_bound(self):
        s = parse_prometheus('h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 4\n')
        self.assertEqual(histogram_quantile(s, "h", 0.99), 1.0)


def row(impl, rnd, jps, broker="redis", conc=50, jobs=1000):
    return {"impl": impl, "broker": broker, "concurrency": conc, "round": rnd, "jobs": jobs,
            "jobs_per_s": jps, "p50_ms": 10, "p99_ms": 20, "peak_rss_mb": 12.5}


class Table(unittest.TestCase):
    def test_ratio_is_the_median_of_per_round_ratios(self):
        rows = [row("jobfleet", 0, 300), row("bullmq", 0, 100),
                row("jobfleet", 1, 200), row("bullmq", 1, 100),
                row("jobfleet", 2, 100), row("bullmq", 2, 20)]
        out = {r["impl"]: r for r in rows_with_ratios(rows)}
        self.assertEqual(out["bullmq"]["ratio"], 3.0)  # per round 3, 2, 5
        self.assertEqual(out["bullmq"]["ratio_range"], (2.0, 5.0))
        self.assertEqual(out["jobfleet"]["jobs_per_s"], 200)
        self.assertIsNone(out["jobfleet"]["ratio"])

    def test_peers_are_compared_on_their_own_broker_and_concurrency(self):
        rows = [row("jobfleet", 0, 300, conc=50), row("bullmq", 0, 100, conc=200),
                row("celery", 0, 10, broker="rabbitmq")]
        out = {r["impl"]: r for r in rows_with_ratios(rows)}
        self.assertIsNone(out["bullmq"]["ratio"])
        self.assertIsNone(out["celery"]["ratio"])
        table = markdown_table(rows_with_ratios(rows))
        self.assertIn("n/a", table)
        self.assertEqual(table.count("\n"), 4)

    def test_table_names_every_system_once_per_group(self):
        rows = [row("jobfleet", 0, 250), row("bullmq", 0, 100)]
        t = markdown_table(rows_with_ratios(rows))
        self.assertIn("| redis | 50 | **jobfleet** | 1,000 | 250 (250–250)", t)
        self.assertIn("**2.50×** (2.50–2.50)", t)
        self.assertTrue(math.isclose(rows_with_ratios(rows)[1]["ratio"], 2.5))

    def test_a_capped_peer_is_compared_with_jobfleet_at_its_own_count(self):
        rows = [row("jobfleet", 0, 300, jobs=200_000), row("bullmq", 0, 100, jobs=200_000),
                row("jobfleet", 0, 80, jobs=5_000), row("apalis-redis", 0, 40, jobs=5_000)]
        out = {(r["impl"], r["jobs"]): r for r in rows_with_ratios(rows)}
        self.assertEqual(out[("bullmq", 200_000)]["ratio"], 3.0)
        self.assertEqual(out[("apalis-redis", 5_000)]["ratio"], 2.0)
        self.assertEqual(len(out), 4)


class Rounds(unittest.TestCase):
    def test_every_system_runs_once_at_the_full_count_unless_capped(self):
        runs = round_runs(["bullmq", "apalis-redis"], 200_000, 0)
        cap = PEER_MAX_JOBS["apalis-redis"]
        self.assertEqual(runs, [("jobfleet", 200_000), ("bullmq", 200_000),
                                ("jobfleet", cap), ("apalis-redis", cap)])

    def test_odd_rounds_start_from_the_other_end(self):
        self.assertEqual(round_runs(["bullmq"], 1_000, 1), [("bullmq", 1_000), ("jobfleet", 1_000)])

    def test_a_cap_above_the_count_changes_nothing(self):
        self.assertEqual(round_runs(["apalis-redis"], 1_000, 0), [("jobfleet", 1_000), ("apalis-redis", 1_000)])


if __name__ == "__main__":
    unittest.main()
