"""Is a timed run trustworthy, and when may it stop: run-stability checks and the stop rule.

``stop_decision`` is the host-side reference for the stop check. The on-device runner
(``harness.agent.loop.converged``) cannot import the rest of harness or scipy, so it carries its own
small copy: binomial ranks from the standard library, the effective count from
``harness.agent.dependence`` (which this side imports too), one partial sort, linear interpolation and
a comparison per percentile. Keep this function's maths plain enough to mirror there; the tests hold
the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from harness.agent.dependence import effective_sizes
from harness.measure.repeats import LEVEL_SHIFT
from harness.measure.stats import as_samples_ns, dependent_interval

__all__ = [
    "StabilityLimits",
    "StabilityVerdict",
    "StopRule",
    "TwoSpeeds",
    "assess_stability",
    "stop_decision",
    "two_speeds",
    "warmup_stable",
]


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


@dataclass(frozen=True)
class StabilityLimits:
    """Upper limits beyond which a run is called unstable (fractions, not percent)."""

    max_cv: float = 0.15
    max_drift: float = 0.05
    max_outlier_share: float = 0.02
    # Two speeds: window medians this many times apart or more, as for a level shift between runs.
    max_speed_ratio: float = LEVEL_SHIFT

    def __post_init__(self) -> None:
        for name in ("max_cv", "max_drift", "max_outlier_share"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"StabilityLimits.{name}={value!r} must be a non-negative fraction, e.g. 0.05"
                )
        if not (math.isfinite(self.max_speed_ratio) and self.max_speed_ratio > 1):
            raise ValueError(
                f"StabilityLimits.max_speed_ratio={self.max_speed_ratio!r} must be a finite ratio above 1 "
                "(slow over fast), e.g. 1.25"
            )


@dataclass(frozen=True)
class StabilityVerdict:
    """How noisy, drifting and spiky a run's samples are, and which limits they broke."""

    cv: float
    drift: float
    outlier_share: float
    unstable: bool
    reasons: tuple[str, ...]
    speeds: TwoSpeeds | None = None


# Windows for the two-speed check: consecutive calls adding up to this much time, and at least this many.
SPEED_WINDOW_S = 0.25
SPEED_WINDOW_CALLS = 20
# Each speed must hold this share of the windows (and two windows at least) to count as a speed.
MIN_SPEED_SHARE = 0.10


@dataclass(frozen=True)
class TwoSpeeds:
    """A run that went at two speeds: its windows' medians fall into a fast and a slow group."""

    fast_ms: float  # the median of the fast windows' medians
    slow_ms: float
    slow_share: float  # of the windows
    switches: int  # how often consecutive windows changed group
    windows: int

    @property
    def ratio(self) -> float:
        return self.slow_ms / self.fast_ms

    def reason(self) -> str:
        return (
            f"ran at two speeds: {SPEED_WINDOW_S:g} s windows had medians near {self.fast_ms:.3f} ms "
            f"({1 - self.slow_share:.0%} of {self.windows}) and {self.slow_ms:.3f} ms ({self.slow_share:.0%}), "
            f"{self.ratio:.2f}x apart, switching {self.switches} time{'s' if self.switches != 1 else ''} "
            "(the CPUs were shared at times: another process, or the hypervisor's other guests; compare "
            "variants in interleaved rounds)"
        )


def window_medians(arr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Medians of consecutive windows of at least SPEED_WINDOW_S and SPEED_WINDOW_CALLS (a short tail dropped)."""
    elapsed = np.cumsum(arr)
    medians: list[float] = []
    start = 0
    while True:
        began = float(elapsed[start - 1]) if start else 0.0
        # The window ends with the call at which it has lasted SPEED_WINDOW_S.
        end = max(int(np.searchsorted(elapsed, began + SPEED_WINDOW_S * 1e9)) + 1, start + SPEED_WINDOW_CALLS)
        if end > arr.size:
            return np.asarray(medians, dtype=np.float64)
        medians.append(float(np.median(arr[start:end])))
        start = end


def two_speeds(
    samples_ns: Sequence[int] | npt.NDArray[np.generic], max_ratio: float = LEVEL_SHIFT
) -> TwoSpeeds | None:
    """The run's two speeds, when its window medians split into two groups ``max_ratio`` apart or more.

    On the reference VM a 2-thread model sometimes runs 1.45x slower for seconds at a time and then
    fast again, while a single thread keeps its speed: most likely the host runs the two virtual
    CPUs on shared cores at times (README, "Two speeds within one run"). Such a run's percentiles mix
    the two speeds in whatever share the run happened to catch. The other checks do not say so: the
    drift between halves cancels out when the speeds alternate, a high CV or outlier share says the
    run was noisy but not how, and no guest counter (steal time, other processes) moves. The windows
    are of timed call time (the samples' own sums). The split is the exact least-squares one of the
    sorted medians (Fisher's 1-D optimal partition for two groups, a cumulative sum; a k-means would
    be randomised and can stop at a worse split).
    """
    medians = window_medians(as_samples_ns(samples_ns))
    n = int(medians.size)
    least = max(2, math.ceil(MIN_SPEED_SHARE * n))
    if n < 2 * least:
        return None
    order = np.sort(medians)
    k = np.arange(1, n)
    total, squares = np.cumsum(order), np.cumsum(order**2)
    left = squares[:-1] - total[:-1] ** 2 / k
    right = (squares[-1] - squares[:-1]) - (total[-1] - total[:-1]) ** 2 / (n - k)
    # The best split among those that leave each group its least share (cost index i splits at i + 1),
    # so a few far-out windows (a stall) cannot take the split for themselves.
    split = int(np.argmin((left + right)[least - 1 : n - least])) + least  # the fast group is order[:split]
    fast, slow = float(np.median(order[:split])), float(np.median(order[split:]))
    if slow < max_ratio * fast:
        return None
    slow_window = medians >= order[split]
    switches = int(np.count_nonzero(slow_window[1:] != slow_window[:-1]))
    return TwoSpeeds(fast / 1e6, slow / 1e6, (n - split) / n, switches, n)


def assess_stability(
    samples_ns: Sequence[int] | npt.NDArray[np.generic], limits: StabilityLimits = StabilityLimits()
) -> StabilityVerdict:
    """Judge a run by its spread (CV), the median shift between its halves, and far-out spikes.

    Drift compares the medians of the first and second half in time order, so a thermal throttle or a
    neighbour starting mid-run shows up even when the overall spread looks fine. Outliers use Tukey's
    far-out fence (Q3 + 3 IQR), which ordinary tail latency rarely crosses but scheduler stalls do.
    """
    arr = as_samples_ns(samples_ns)
    n = int(arr.size)
    if n < 2:
        raise ValueError(f"stability needs at least 2 samples to compare halves; have {n}")
    mean = float(arr.mean())
    cv = float(arr.std(ddof=1)) / mean
    half = n // 2
    m1 = float(np.median(arr[:half]))
    m2 = float(np.median(arr[half:]))
    drift = (m2 - m1) / m1
    q1, q3 = (float(v) for v in np.quantile(arr, [0.25, 0.75]))
    fence = q3 + 3.0 * (q3 - q1)
    outlier_share = float(np.count_nonzero(arr > fence)) / n

    speeds = two_speeds(arr, limits.max_speed_ratio)
    reasons: list[str] = []
    if cv > limits.max_cv:
        reasons.append(f"CV {cv * 100:.1f}% exceeds {_pct(limits.max_cv)}")
    if abs(drift) > limits.max_drift:
        reasons.append(f"drift {drift * 100:+.1f}% between halves exceeds {_pct(limits.max_drift)}")
    if outlier_share > limits.max_outlier_share:
        reasons.append(
            f"outlier share {outlier_share * 100:.1f}% above Q3 + 3 IQR "
            f"exceeds {_pct(limits.max_outlier_share)}"
        )
    if speeds is not None:
        reasons.append(speeds.reason())
    return StabilityVerdict(cv, drift, outlier_share, bool(reasons), tuple(reasons), speeds)


@dataclass(frozen=True)
class StopRule:
    """When a timed loop has measured enough: every requested percentile pinned down, or out of time."""

    percentiles: tuple[float, ...] = (0.5, 0.95, 0.99)
    max_half_width: float = 0.05
    min_iterations: int = 400
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not self.percentiles or not all(0.0 < q < 1.0 for q in self.percentiles):
            raise ValueError(
                f"StopRule.percentiles={self.percentiles!r} must be non-empty quantiles in (0, 1), "
                "e.g. (0.5, 0.99)"
            )
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"StopRule.confidence={self.confidence!r} must lie in (0, 1), e.g. 0.95")
        if not self.max_half_width > 0:
            raise ValueError(f"StopRule.max_half_width={self.max_half_width!r} must be > 0, e.g. 0.05")
        if self.min_iterations < 0:
            raise ValueError(f"StopRule.min_iterations={self.min_iterations!r} must be >= 0")
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(
                f"StopRule durations min={self.min_duration_s!r} s, max={self.max_duration_s!r} s "
                "must satisfy 0 <= min_duration_s <= max_duration_s"
            )


def _converged(arr: npt.NDArray[np.float64], rule: StopRule, dependence: bool) -> bool:
    n = int(arr.size)
    plans: list[tuple[int, int, float, int, int]] = []
    # The interval for the calls the samples are worth: bursts of slow calls widen it (stats docstring).
    sizes = effective_sizes(arr, rule.percentiles) if dependence else tuple(n for _ in rule.percentiles)
    for q, n_eff in zip(rule.percentiles, sizes, strict=True):
        ranks = dependent_interval(n, n_eff, q, rule.confidence)
        if ranks is None:
            return False
        # numpy's default ("linear") quantile sits between 0-based positions floor(h) and ceil(h).
        h = (n - 1) * q
        below = math.floor(h)
        plans.append((below, min(below + 1, n - 1), h - below, ranks[0] - 1, ranks[1] - 1))
    # One partial sort places every needed order statistic; a full sort of 1e6 samples costs ~4x more.
    kth = sorted({i for plan in plans for i in (plan[0], plan[1], plan[3], plan[4])})
    part = np.partition(arr, kth)
    for below, above, frac, lo, hi in plans:
        value = float(part[below]) + (float(part[above]) - float(part[below])) * frac
        half_width = (float(part[hi]) - float(part[lo])) / 2.0
        if half_width > rule.max_half_width * value:
            return False
    return True


def stop_decision(
    samples_ns: Sequence[int] | npt.NDArray[np.generic], elapsed_s: float, rule: StopRule, dependence: bool = True
) -> str | None:
    """Host-side reference stop check: None to keep measuring, else "converged" or "time_cap".

    "converged" needs at least ``min_iterations`` samples and ``min_duration_s`` elapsed, and for every
    requested percentile a two-sided interval, for as many independent calls as the samples (in time
    order) are worth, whose half-width, ``(hi - lo) / 2``, is within ``max_half_width`` of the estimate.
    "time_cap" means ``max_duration_s`` passed first. One ``np.partition`` and one FFT per percentile
    (the effective count): tens of milliseconds on 1e5 samples. Pass a numpy array, since converting a
    long list costs more than the check itself. ``dependence=False`` counts every call as independent
    (no FFT), as the runner's cheap first check does.
    """
    if not math.isfinite(elapsed_s) or elapsed_s < 0:
        raise ValueError(f"elapsed_s={elapsed_s!r} must be a non-negative number of seconds")
    timed_out = elapsed_s >= rule.max_duration_s
    n = len(samples_ns)
    enough = n >= max(rule.min_iterations, 1) and elapsed_s >= rule.min_duration_s
    # The cheap count and clock checks come first so early calls cost nothing.
    if enough and _converged(as_samples_ns(samples_ns), rule, dependence):
        return "converged"
    return "time_cap" if timed_out else None


def warmup_stable(window_medians: Sequence[float], tolerance: float = 0.02, windows: int = 3) -> bool:
    """True when the last ``windows`` window medians agree within ``tolerance`` (max/min - 1).

    Triton's perf_analyzer calls a measurement stable when its last 3 windows agree within 10%. We
    report latency changes of a few percent (in-process repeats agree within 0.1-0.3%, docs/measurements.md), so
    a 10% band would end warm-up while clocks and caches are still settling; we use 2%.
    """
    if windows < 1:
        raise ValueError(f"windows={windows!r} must be >= 1")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r} must be a non-negative fraction, e.g. 0.02")
    if len(window_medians) < windows:
        return False
    last = [float(m) for m in window_medians[-windows:]]
    if not all(math.isfinite(m) and m > 0 for m in last):
        raise ValueError(f"window medians must be positive finite latencies; got {last!r}")
    return max(last) / min(last) - 1.0 <= tolerance
