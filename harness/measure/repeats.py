"""One job run several times in separate runner processes: percentiles with a between-run interval.

A timed loop's order-statistic interval says where the percentile of *that loop's minutes* lies. On
a shared device the next loop lands outside it far more often than 5% of the time. Twelve
back-to-back jobs on the reference VM (``benchmarks/bench_between_runs.py``) had job P50s with a
2.3-4.1% CV across jobs, while one job's P50 interval was +-0.2% to +-1.2%, and it held the twelve
jobs' pooled P50 in only 3 or 4 of them. What a nightly comparison needs is the spread between runs,
and only separate runs measure it: each repeat here is its own runner process (load, compile,
warm-up, adaptive loop).

Each percentile's estimate is then the mean of the K runs' percentiles, and its interval the
Student-t interval of that mean with K - 1 degrees of freedom. That is how pyperf reports values from
separate worker processes (mean and standard deviation over processes) and Google Benchmark its
repetitions (mean, median, stddev, cv across repetitions). The t interval assumes the run-level
estimates scatter roughly normally: each is a quantile of hundreds of calls, close to normal by the
central limit theorem for quantiles, plus a run-level offset. Three runs are the fewest for which it
means anything (with two, t is 12.7 and the interval nearly unbounded), so a job runs once or at
least three times.

Written here rather than taken from a library: scipy gives the t quantile, the rest is a mean and a
standard deviation over a handful of numbers; what needs care is which per-run facts carry over
(validity) and which do not (the within-run interval and its burst correction, which the between-run
spread replaces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import t as student_t

from .stats import REPORTED_PERCENTILES, LatencySummary, PercentileEstimate, as_samples_ns

__all__ = [
    "HISTORY_RUNS",
    "LEVEL_SHIFT",
    "MIN_HISTORY",
    "MIN_REPEATS",
    "RepeatedRuns",
    "between_runs",
    "check_repeats",
    "history_shift",
    "level_shifts",
]

MIN_REPEATS = 3
_NS_PER_MS = 1e6
# A run whose P50 is this many times the runs' median P50 (or below its inverse) ran at another speed from
# the other runner processes. Twelve back-to-back jobs of MobileNetV2-style on the reference VM
# (bench_between_runs, 2026-12-01): nine P50s within 0.89-1.07x of the twelve's median, three at
# 1.42-1.53x. The between-run CV away from such states is 2.3-4.1%, so 1.25 is six to eleven of those apart.
LEVEL_SHIFT = 1.25


def check_repeats(repeats: int) -> str | None:
    """Why ``repeats`` is not a usable count (None when it is): 1 run, or at least MIN_REPEATS."""
    if repeats == 1 or repeats >= MIN_REPEATS:
        return None
    return f"repeats {repeats} cannot give a between-run interval (it needs at least {MIN_REPEATS} runs)"


@dataclass(frozen=True)
class RepeatedRuns:
    """The combined summary of K runs and the per-run facts a user reads beside it."""

    summary: LatencySummary
    runs: tuple[LatencySummary, ...]

    def metrics(self) -> dict[str, Any]:
        """Per-run percentiles and counts, and the between-run CV of each percentile (JSON-ready)."""
        out: dict[str, Any] = {"repeats": len(self.runs), "repeat_n": [r.n for r in self.runs]}
        for name in REPORTED_PERCENTILES:
            values = [getattr(r, name).value_ms for r in self.runs]
            out[f"repeat_{name}_ms"] = values
            out[f"repeat_{name}_effective_n"] = [getattr(r, name).effective_n for r in self.runs]
            out[f"repeat_{name}_cv"] = float(np.std(values, ddof=1) / np.mean(values))
        return out


def level_shifts(runs: Sequence[LatencySummary]) -> list[str]:
    """Unstable reasons for the runs whose P50 is LEVEL_SHIFT or more away from the runs' median P50.

    Within-run checks cannot see such a run: it is steady, just steady at another level. The median is
    the middle run's for three runs, so a single odd run is named whichever way it is off.
    """
    p50s = [r.p50.value_ms for r in runs]
    middle = float(np.median(p50s))
    reasons = []
    for i, value in enumerate(p50s, 1):
        ratio = value / middle if middle > 0 else 1.0
        if ratio >= LEVEL_SHIFT or ratio <= 1.0 / LEVEL_SHIFT:
            reasons.append(
                f"run {i} of {len(p50s)}: P50 {value:.4g} ms is {ratio:.2f}x the runs' median {middle:.4g} ms "
                "(the device ran at another speed in that runner process; rerun, or compare variants "
                "in interleaved rounds)"
            )
    return reasons


# A job is compared with the same artifact's last HISTORY_RUNS valid runs under the same conditions on the
# same device, once there are MIN_HISTORY of them: the median of three is the fewest that one odd run
# cannot move.
HISTORY_RUNS = 5
MIN_HISTORY = 3


def history_shift(p50_ms: float, earlier: Sequence[tuple[str, float]]) -> tuple[float | None, str | None]:
    """A job's P50 against the median P50 of the same artifact's last HISTORY_RUNS earlier runs
    (``(run_id, p50_ms)``, newest first): the ratio (None under MIN_HISTORY runs) and an unstable
    reason when it is LEVEL_SHIFT or more away (else None).

    The single-run view of ``level_shifts``: the artifact, device, threads and runtime settings are the
    same, so a P50 at another level says the device ran at another speed than it usually does (the
    reference VM's slow state, a background load, an OS or firmware change), not that the model changed.
    """
    recent = earlier[:HISTORY_RUNS]
    if len(recent) < MIN_HISTORY:
        return None, None
    p50s = [p50 for _, p50 in recent]
    middle = float(np.median(p50s))
    ratio = p50_ms / middle if middle > 0 else 1.0
    if 1.0 / LEVEL_SHIFT < ratio < LEVEL_SHIFT:
        return ratio, None
    runs = ", ".join(run_id[:8] for run_id, _ in recent)
    # Some artifacts have no single usual speed (a tiny model under LiteRT ran at 0.014 or 0.023 ms,
    # run by run, on the reference VM): say so, so the reader weighs the flag.
    spread = (
        f"; those runs themselves range from {min(p50s):.4g} to {max(p50s):.4g} ms, so this artifact runs at "
        "more than one speed on this device"
        if max(p50s) >= LEVEL_SHIFT * min(p50s)
        else ""
    )
    return ratio, (
        f"P50 {p50_ms:.4g} ms is {ratio:.2f}x the median {middle:.4g} ms of the same artifact's last "
        f"{len(recent)} runs on this device (runs {runs}): the device ran at another speed than it usually "
        f"does{spread}; rerun, and check the device if it stays so"
    )


def _combined(name: str, runs: Sequence[LatencySummary], confidence: float) -> PercentileEstimate:
    estimates = [getattr(r, name) for r in runs]
    values = np.array([e.value_ms for e in estimates], dtype=float)
    k = len(values)
    mean = float(values.mean())
    half = float(student_t.ppf(0.5 + confidence / 2.0, k - 1) * values.std(ddof=1) / math.sqrt(k))
    invalid = next(((i, e) for i, e in enumerate(estimates) if not e.valid), None)
    reason = None if invalid is None else f"run {invalid[0] + 1} of {k}: {invalid[1].reason}"
    return PercentileEstimate(
        q=estimates[0].q,
        value_ms=mean,
        # A latency is not negative, however few runs and however far apart.
        ci_low_ms=max(mean - half, 0.0),
        ci_high_ms=mean + half,
        valid=invalid is None,
        reason=reason,
        # The interval rests on K runs, not on independent calls: each run's count is in the metrics.
        effective_n=None,
    )


def between_runs(
    runs: Sequence[LatencySummary], pooled_ns: Sequence[int] | npt.NDArray[np.generic], confidence: float = 0.95
) -> RepeatedRuns:
    """K runs' summaries -> one summary whose percentiles are the runs' mean with a between-run t interval.

    ``pooled_ns`` are every run's samples in the order timed: the count, fastest, slowest, mean and
    standard deviation are theirs. A percentile is VALID when it is VALID in every run; the reason
    names the first run where it is not.
    """
    if len(runs) < MIN_REPEATS:
        raise ValueError(f"between_runs needs at least {MIN_REPEATS} runs, got {len(runs)}")
    pooled = as_samples_ns(pooled_ns)
    if pooled.size != sum(r.n for r in runs):
        raise ValueError(f"pooled samples ({pooled.size}) are not the runs' samples ({sum(r.n for r in runs)})")
    p50, p90, p95, p99 = (_combined(name, runs, confidence) for name in REPORTED_PERCENTILES)
    summary = LatencySummary(
        n=int(pooled.size),
        min_ms=float(pooled.min()) / _NS_PER_MS,
        mean_ms=float(pooled.mean()) / _NS_PER_MS,
        std_ms=float(pooled.std(ddof=1)) / _NS_PER_MS,
        max_ms=float(pooled.max()) / _NS_PER_MS,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        confidence=confidence,
    )
    return RepeatedRuns(summary, tuple(runs))
