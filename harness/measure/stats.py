"""Latency percentiles with distribution-free confidence intervals, and the sample counts they need.

Every percentile carries an interval built from two order statistics of the sample, chosen with the
binomial distribution (Hahn & Meeker, *Statistical Intervals*, 1991, sec. 5.2; David & Nagaraja,
*Order Statistics*, 3rd ed., sec. 7.1). If ``xi_q`` is the true q-quantile of a continuous latency
distribution, the number ``B`` of samples at or below it is ``Bin(n, q)``, so

    P(X_(r) <= xi_q) = P(B >= r)        and        P(X_(s) >= xi_q) = P(B <= s - 1),

with no assumption about the shape of the distribution. That matters here: device latencies are skewed,
multi-modal and spiky, and a normal-theory interval would lie about their tails.

We take the interval equal-tailed: ``r`` is the largest rank with ``P(B <= r - 1) <= alpha/2`` and ``s``
the smallest with ``P(B >= s) <= alpha/2``, so each side misses with probability at most ``alpha/2`` and
``P(X_(r) <= xi_q <= X_(s)) >= 1 - alpha``. Both ranks must lie in ``1..n``: the upper one exists only
once ``q**n <= alpha/2`` (before that even the sample maximum sits below ``xi_q`` too often), the lower
one once ``(1 - q)**n <= alpha/2``. For a 95% interval that is 368 samples for P99, 72 for P95 and 6 for
P50. A percentile with fewer samples is reported INVALID rather than quietly printed: MLPerf LoadGen's
early-stopping check rests on the same binomial argument (one-sided there) to decide when a
tail-latency claim is backed by enough queries.

The binomial argument assumes independent calls. When slow calls come in bursts, the samples are worth
fewer independent calls than their count (``harness.agent.dependence``), and the interval is built for
that effective count, then mapped back onto the samples held: wider, as the bursts warrant. VALID still
means enough calls for an interval (the count above); a percentile whose effective count is below that
minimum gets the widest interval the count allows and a ``dependence_reason`` that says its interval is
still too narrow, so the run is marked unstable instead of reported with false precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.stats import binom

from harness.agent.dependence import effective_sizes, scale_ranks

__all__ = [
    "REPORTED_PERCENTILES",
    "LatencySummary",
    "PercentileEstimate",
    "as_samples_ns",
    "dependent_interval",
    "half_width_ratio",
    "min_samples_for_interval",
    "order_statistic_interval",
    "percentile_label",
    "summarize",
]

_NS_PER_MS = 1e6


@dataclass(frozen=True)
class PercentileEstimate:
    """One sample percentile in milliseconds, with its order-statistic confidence interval."""

    q: float
    value_ms: float
    ci_low_ms: float | None
    ci_high_ms: float | None
    valid: bool
    reason: str | None
    # How many independent calls the interval rests on: n, unless slow calls came in bursts.
    effective_n: int | None = None
    # Set when even the widest interval the samples allow assumes more independent calls than they hold.
    dependence_reason: str | None = None


@dataclass(frozen=True)
class LatencySummary:
    """What a timed loop's per-iteration samples say about latency, in milliseconds."""

    n: int
    min_ms: float
    mean_ms: float
    std_ms: float
    max_ms: float
    p50: PercentileEstimate
    p90: PercentileEstimate
    p95: PercentileEstimate
    p99: PercentileEstimate
    confidence: float

    @property
    def valid(self) -> bool:
        """True when P50, P95 and P99 each have a two-sided interval (P90 is implied by P95)."""
        return all(p.valid for p in self._gating())

    @property
    def invalid_reasons(self) -> tuple[str, ...]:
        """One sentence per gating percentile that lacks samples; empty exactly when ``valid``."""
        return tuple(p.reason for p in self._gating() if p.reason is not None)

    @property
    def dependence_reasons(self) -> tuple[str, ...]:
        """One sentence per gating percentile whose interval is too narrow for its run's bursts of slow calls."""
        return tuple(p.dependence_reason for p in self._gating() if p.dependence_reason is not None)

    def _gating(self) -> tuple[PercentileEstimate, ...]:
        return (self.p50, self.p95, self.p99)


def percentile_label(q: float) -> str:
    """Name a quantile the way reports do: 0.99 -> "P99", 0.999 -> "P99.9"."""
    return f"P{round(q * 100, 6):g}"


def _check_q_confidence(q: float, confidence: float) -> None:
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q={q!r} must lie strictly between 0 and 1, e.g. 0.99 for P99")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1, e.g. 0.95")


def _lower_rank(n: int, q: float, tail: float) -> int | None:
    """Largest 1-based rank r with P(Bin(n, q) <= r - 1) <= tail, or None when even r = 1 fails."""
    # ppf gives the smallest k with cdf(k) >= tail; step to the exact boundary so floating-point
    # rounding inside ppf cannot hand us a rank whose tail is a hair over the limit.
    k = int(binom.ppf(tail, n, q))
    while k >= 0 and binom.cdf(k, n, q) > tail:
        k -= 1
    while k + 1 < n and binom.cdf(k + 1, n, q) <= tail:
        k += 1
    return None if k < 0 else k + 1


def _upper_rank(n: int, q: float, tail: float) -> int | None:
    """Smallest 1-based rank s with P(Bin(n, q) >= s) <= tail, or None when even s = n fails."""
    j = int(binom.isf(tail, n, q))
    while j > 0 and binom.sf(j - 1, n, q) <= tail:
        j -= 1
    while j < n and binom.sf(j, n, q) > tail:
        j += 1
    # sf(j) = P(B >= j + 1), so the rank is j + 1; it must be a real sample.
    return j + 1 if j + 1 <= n else None


@lru_cache(maxsize=4096)
def order_statistic_interval(n: int, q: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (lo, hi) of the equal-tailed distribution-free CI for the q-quantile, from the binomial.

    ``sorted(samples)[lo - 1] <= xi_q <= sorted(samples)[hi - 1]`` holds with probability at least
    ``confidence`` for any continuous distribution (see the module docstring). None when n is too small
    for either rank to exist.
    """
    _check_q_confidence(q, confidence)
    if n < 1:
        return None
    tail = (1.0 - confidence) / 2.0
    lo = _lower_rank(n, q, tail)
    hi = _upper_rank(n, q, tail)
    if lo is None or hi is None:
        return None
    return lo, hi


def min_samples_for_interval(q: float, confidence: float = 0.95) -> int:
    """Smallest n for which ``order_statistic_interval(n, q, confidence)`` exists (368 for P99 at 95%)."""
    _check_q_confidence(q, confidence)
    # Both extreme ranks must be allowed: (1 - q)**n <= alpha/2 and q**n <= alpha/2.
    tail = (1.0 - confidence) / 2.0
    n = max(1, math.ceil(math.log(tail) / math.log(max(q, 1.0 - q))))
    # The closed form can be off by one where a power lands on the limit; settle it on the binomial itself.
    while order_statistic_interval(n, q, confidence) is None:
        n += 1
    while n > 1 and order_statistic_interval(n - 1, q, confidence) is not None:
        n -= 1
    return n


def as_samples_ns(samples_ns: Sequence[int] | npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    """Validate per-iteration latencies in nanoseconds and return them as a 1-D float64 array."""
    arr = np.asarray(samples_ns, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"latency samples must be a flat sequence of nanoseconds; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("no latency samples: the timed loop recorded 0 iterations")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"latency samples must be positive finite nanoseconds; {int(bad.sum())} are not, "
            f"first at index {idx}: {float(arr[idx]):g}"
        )
    return arr


def dependent_interval(n: int, n_eff: int, q: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """Ranks of the q-quantile's interval for ``n`` samples worth ``n_eff`` independent calls, or None.

    The binomial interval for ``n_eff`` calls, mapped onto the n samples (``scale_ranks``); exactly
    ``order_statistic_interval(n, q)`` when ``n_eff >= n``. None when ``n_eff`` is too few for an interval.
    """
    return scale_ranks(order_statistic_interval(min(n_eff, n), q, confidence), n_eff, n)


def _estimate(
    sorted_ns: npt.NDArray[np.float64], q: float, value_ns: float, confidence: float, n_eff: int
) -> PercentileEstimate:
    n = int(sorted_ns.size)
    value_ms = value_ns / _NS_PER_MS
    label = percentile_label(q)
    need = min_samples_for_interval(q, confidence)
    if n < need:
        reason = f"{label} needs n >= {need} for a two-sided {confidence * 100:g}% interval; have {n}"
        return PercentileEstimate(q, value_ms, None, None, valid=False, reason=reason, effective_n=n_eff)
    dependence_reason = None
    if n_eff < need:
        # The widest interval the samples allow still assumes `need` independent calls: flag it.
        dependence_reason = (
            f"{label}: slow calls came in bursts, so its {n} calls count as about {n_eff} independent ones, "
            f"fewer than the {need} its {confidence * 100:g}% interval needs, and the interval is too narrow; "
            "measure longer (--min-duration) or on a quieter device"
        )
    ranks = dependent_interval(n, max(n_eff, need), q, confidence)
    assert ranks is not None  # n >= need and the effective count is at least need
    lo, hi = ranks
    return PercentileEstimate(
        q,
        value_ms,
        float(sorted_ns[lo - 1]) / _NS_PER_MS,
        float(sorted_ns[hi - 1]) / _NS_PER_MS,
        valid=True,
        reason=None,
        effective_n=n_eff,
        dependence_reason=dependence_reason,
    )


_REPORTED_QS = (0.5, 0.9, 0.95, 0.99)
# The same, by the names a summary and a flat record give them: {"p50": 0.5, ..., "p99": 0.99}.
REPORTED_PERCENTILES = {percentile_label(q).lower(): q for q in _REPORTED_QS}


def summarize(
    samples_ns: Sequence[int] | npt.NDArray[np.generic], confidence: float = 0.95
) -> LatencySummary:
    """Summarize per-iteration latencies (ns, in the order timed) into ms with P50/P90/P95/P99 and their intervals.

    Percentile values use numpy's default linear interpolation; ``std_ms`` is the sample standard
    deviation (ddof=1), 0 for a single sample.
    """
    _check_q_confidence(0.5, confidence)
    timed = as_samples_ns(samples_ns)
    sizes = effective_sizes(timed, _REPORTED_QS)  # needs the time order, so before sorting
    arr = np.sort(timed)
    n = int(arr.size)
    # One quantile call for all four: numpy's per-call overhead outweighs the work at typical n.
    p50, p90, p95, p99 = (
        _estimate(arr, q, float(v), confidence, n_eff)
        for q, v, n_eff in zip(_REPORTED_QS, np.quantile(arr, _REPORTED_QS), sizes, strict=True)
    )
    return LatencySummary(
        n=n,
        min_ms=float(arr[0]) / _NS_PER_MS,
        mean_ms=float(arr.mean()) / _NS_PER_MS,
        std_ms=float(arr.std(ddof=1)) / _NS_PER_MS if n > 1 else 0.0,
        max_ms=float(arr[-1]) / _NS_PER_MS,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        confidence=confidence,
    )


def half_width_ratio(p: PercentileEstimate) -> float | None:
    """The stop rule's precision: the interval's half-width over the estimate, ``(hi - lo) / 2 / value``.

    Half the interval's width, as in "P99 = 3.6 ms +- 5%". A tail percentile's interval is asymmetric
    (the upper order statistic sits further out), so the reported interval keeps both ends; the rule
    does not demand that the wider side alone be within target. None without an interval.
    """
    if p.ci_low_ms is None or p.ci_high_ms is None:
        return None
    return (p.ci_high_ms - p.ci_low_ms) / 2.0 / p.value_ms
