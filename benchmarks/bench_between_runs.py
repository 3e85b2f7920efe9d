"""What one job's interval says about the next job: back-to-back runs of one model on one device.

A job's 95% intervals are for the calls it timed, counted as the independent calls they are worth
(bursts inside the job widen them). They cannot see a change in the machine that is slower than the
job: the same artifact started in a new runner process a few seconds later can sit at another level.
This benchmark measures how far that goes here. Twelve jobs of the MobileNetV2-style model (OpenVINO
FP32, 2 threads, 600 calls each, about 7 s) run back to back on the local device, each in its own
runner process. The reference for each percentile is the same percentile of all 7,200 calls pooled:
what a user means by "this model's P99 on this device today". For every job it records whether the
harness's interval holds that reference, whether the interval that treats every call as independent
does, and how the spread of the jobs' P50s compares with one job's interval.

The answer decides how results are read (README, "From one run to the next"): a single job's interval
is a statement about its own minute on a shared machine; comparisons belong in interleaved rounds,
and night-to-night numbers need a tolerance of the between-run spread measured here.

The twelve jobs are also read as ``--repeats 3`` reads a job: four groups of three consecutive
runner processes, each combined by ``harness.measure.repeats.between_runs`` (the mean of the three
runs' percentiles, with a Student-t interval from their spread). Each group's interval is checked
against the pooled percentile of all twelve jobs and against that of the nine jobs outside the group,
the runs it did not see. (With ``--repeats`` only the first process runs the eval pass; here every
job does, so these runs are about a second further apart.) The same twelve jobs are also grouped
across the run, (0, 4, 8), (1, 5, 9) and so on: what three repeats spread over the whole run, rather
than back to back, would report, on the same samples. Each group also records the runs ``--repeats``
would name as at another level (``level_shifts``: a P50 1.25x the group's median or more, or 0.8x or less).

pytest-benchmark times the host summary (all percentiles, intervals and effective counts) of one job.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.conftest import save_numbers
from harness.catalog import load_catalog
from harness.lab.inventory import Device, Lab
from harness.measure.repeats import between_runs, level_shifts
from harness.measure.stats import PercentileEstimate, half_width_ratio, order_statistic_interval, summarize
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import Job, JobResult, Variant
from harness.store import Store

THREADS = 2
JOBS = 12
CALLS = 600
REPEATS = 3
# A fixed count per job, so every job weighs the same in the pooled reference; no throttle retries
# (a retry would replace a job's samples) and no calibration loop (not needed for the question).
SETTINGS = MeasureSettings(iterations=CALLS, throttle_retries=0, calibration_reps=0)


def _holds(low: float | None, high: float | None, reference: float) -> bool:
    return low is not None and high is not None and low <= reference <= high


def _job_row(result: JobResult, references: dict[float, float]) -> dict[str, Any]:
    """One job's percentiles, intervals and effective counts, and which intervals hold the pooled value."""
    assert result.latency is not None and result.samples_ns is not None
    ordered = np.sort(np.asarray(result.samples_ns, dtype=np.float64) / 1e6)
    row: dict[str, Any] = {}
    estimates: dict[float, PercentileEstimate] = {
        0.5: result.latency.p50,
        0.95: result.latency.p95,
        0.99: result.latency.p99,
    }
    for q, estimate in estimates.items():
        ranks = order_statistic_interval(ordered.size, q)
        assert ranks is not None
        independent = (float(ordered[ranks[0] - 1]), float(ordered[ranks[1] - 1]))
        label = f"p{round(q * 100)}"
        row[label] = {
            "ms": estimate.value_ms,
            "interval_ms": [estimate.ci_low_ms, estimate.ci_high_ms],
            "effective_n": estimate.effective_n,
            "holds_pooled": _holds(estimate.ci_low_ms, estimate.ci_high_ms, references[q]),
            "independent_interval_ms": list(independent),
            "independent_holds_pooled": _holds(*independent, references[q]),
        }
    return row


def _consecutive(jobs: int) -> list[list[int]]:
    """Groups of REPEATS jobs one after another, as ``--repeats`` runs them: (0, 1, 2), (3, 4, 5), ..."""
    return [list(range(start, start + REPEATS)) for start in range(0, jobs - REPEATS + 1, REPEATS)]


def _spread(jobs: int) -> list[list[int]]:
    """Groups of REPEATS jobs spread across the whole run: (0, 4, 8), (1, 5, 9), ... for twelve jobs."""
    stride = jobs // REPEATS
    return [[first + k * stride for k in range(REPEATS)] for first in range(stride)]


def _repeat_groups(
    results: list[JobResult], references: dict[float, float], memberships: list[list[int]]
) -> list[dict[str, Any]]:
    """Each group of jobs read as one repeated job: its between-run intervals, and what they hold."""
    summaries = [r.latency for r in results if r.latency is not None]
    samples = [np.asarray(r.samples_ns) for r in results if r.samples_ns is not None]
    assert len(summaries) == len(samples) == len(results), "every job measured"
    groups = []
    for members in memberships:
        combined = between_runs([summaries[i] for i in members], np.concatenate([samples[i] for i in members])).summary
        rest = np.concatenate([s for i, s in enumerate(samples) if i not in members]).astype(np.float64) / 1e6
        # What --repeats would mark unstable: a run at another level from the group's others.
        row: dict[str, Any] = {"jobs": list(members), "level_shifts": level_shifts([summaries[i] for i in members])}
        for q, estimate in ((0.5, combined.p50), (0.95, combined.p95), (0.99, combined.p99)):
            others = float(np.quantile(rest, q))
            row[f"p{round(q * 100)}"] = {
                "ms": estimate.value_ms,
                "interval_ms": [estimate.ci_low_ms, estimate.ci_high_ms],
                "half_width": half_width_ratio(estimate),
                "holds_pooled": _holds(estimate.ci_low_ms, estimate.ci_high_ms, references[q]),
                "others_ms": others,
                "holds_others": _holds(estimate.ci_low_ms, estimate.ci_high_ms, others),
            }
        groups.append(row)
    return groups


def test_how_far_one_jobs_interval_carries_to_the_next_job(benchmark: Any, tmp_path: Path) -> None:
    entry = load_catalog(Path("models"), "mobilenetv2-style")[0]
    device = Device(name="local", platform="generic-linux", transport="local", threads=THREADS)
    lab = Lab(name="between-runs", devices=(device,))
    pipeline = Pipeline(lab, [entry], Store(tmp_path / "runs.sqlite"), settings=SETTINGS)
    job = Job(entry, Variant("openvino", "fp32", threads=THREADS), device)
    pipeline.run_job(job)  # compile, deploy, host reference: the jobs that follow only measure
    results = [pipeline.run_job(job) for _ in range(JOBS)]
    pipeline.finish()
    assert all(r.status == "passed" and r.samples_ns is not None for r in results), [r.message for r in results]

    pooled = np.concatenate([np.asarray(r.samples_ns, dtype=np.float64) for r in results]) / 1e6
    references = {q: float(np.quantile(pooled, q)) for q in (0.5, 0.95, 0.99)}
    rows = [_job_row(r, references) for r in results]
    samples = results[0].samples_ns
    benchmark(summarize, samples)

    p50s = [row["p50"]["ms"] for row in rows]
    half_widths = [half_width_ratio(r.latency.p50) for r in results if r.latency is not None]
    numbers: dict[str, Any] = {
        "model": "mobilenetv2-style",
        "variant": job.variant.id,
        "jobs": JOBS,
        "calls_per_job": CALLS,
        "pooled_ms": {f"p{round(q * 100)}": v for q, v in references.items()},
        "job_p50_cv_across_jobs": statistics.stdev(p50s) / statistics.mean(p50s),
        "job_p50_range_ms": [min(p50s), max(p50s)],
        # Each job's P50 over the twelve's median: a job at another level for its whole process stands out.
        "job_p50_over_median": [p / statistics.median(p50s) for p in p50s],
        "median_p50_half_width": statistics.median(h for h in half_widths if h is not None),
        "host_summary_ms": benchmark.stats.stats.median * 1e3,
        "jobs_detail": rows,
    }
    for label in ("p50", "p95", "p99"):
        numbers[f"{label}_holds_pooled"] = sum(row[label]["holds_pooled"] for row in rows)
        numbers[f"{label}_independent_holds_pooled"] = sum(row[label]["independent_holds_pooled"] for row in rows)
    # "repeats3_*": consecutive groups, as --repeats 3 runs today; "spread3_*": the same jobs grouped
    # across the whole run, what repeats spread over a run's passes would give.
    for prefix, memberships in (("repeats", _consecutive(JOBS)), ("spread", _spread(JOBS))):
        groups = _repeat_groups(results, references, memberships)
        numbers[f"{prefix}_groups"] = groups
        for label in ("p50", "p95", "p99"):
            numbers[f"{prefix}{REPEATS}_{label}_holds_pooled"] = sum(g[label]["holds_pooled"] for g in groups)
            numbers[f"{prefix}{REPEATS}_{label}_holds_others"] = sum(g[label]["holds_others"] for g in groups)
            numbers[f"{prefix}{REPEATS}_{label}_median_half_width"] = statistics.median(
                g[label]["half_width"] for g in groups
            )
        numbers[f"{prefix}{REPEATS}_level_shift_groups"] = sum(bool(g["level_shifts"]) for g in groups)
    save_numbers("between-runs-mobilenetv2-style", numbers)

    # The experiment is only read if every job measured what it was asked to.
    assert all(row["p99"]["interval_ms"][0] is not None for row in rows), "a job's P99 had no interval"
    assert pooled.size == JOBS * CALLS
