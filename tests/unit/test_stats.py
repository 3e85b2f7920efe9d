"""Latency statistics: sample counts behind P50/P95/P99, interval coverage, and summary properties."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy.stats import binom, lognorm

from harness.measure.stats import (
    LatencySummary,
    PercentileEstimate,
    half_width_ratio,
    min_samples_for_interval,
    order_statistic_interval,
    summarize,
)

MEDIAN_NS = 2.4e6  # a 2.4 ms model, the scale design.md measured


def _lognormal_ns(rng: np.random.Generator, n: int, sigma: float = 0.05) -> npt.NDArray[np.int64]:
    return np.ceil(rng.lognormal(math.log(MEDIAN_NS), sigma, n)).astype(np.int64)


def _percentiles(s: LatencySummary) -> tuple[PercentileEstimate, ...]:
    return (s.p50, s.p90, s.p95, s.p99)


# --- how many samples a percentile needs -------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [(0.99, 368), (0.95, 72), (0.5, 6)])
def test_min_samples_follow_from_the_binomial_definition(q: float, expected: int) -> None:
    # The sample maximum (or minimum) bounds the quantile at 95% only once q**n <= 0.025.
    tail = 0.025
    assert max(q, 1 - q) ** expected <= tail < max(q, 1 - q) ** (expected - 1)
    assert min_samples_for_interval(q) == expected


def test_p99_is_invalid_one_sample_short_and_names_the_count_it_needs() -> None:
    rng = np.random.default_rng(7)
    short = summarize(_lognormal_ns(rng, 367))
    assert not short.p99.valid
    assert short.p99.reason == "P99 needs n >= 368 for a two-sided 95% interval; have 367"
    assert (short.p99.ci_low_ms, short.p99.ci_high_ms) == (None, None)
    assert not short.valid
    assert short.invalid_reasons == (short.p99.reason,)

    enough = summarize(_lognormal_ns(rng, 368))
    assert enough.p99.valid and enough.p99.reason is None
    assert enough.valid and enough.invalid_reasons == ()
    assert enough.p99.ci_high_ms == enough.max_ms  # at n = 368 only the maximum is high enough


def test_a_short_run_lists_every_gating_percentile_it_cannot_back() -> None:
    s = summarize(_lognormal_ns(np.random.default_rng(3), 50))
    assert s.p50.valid and not s.p95.valid and not s.p99.valid
    assert s.invalid_reasons == (
        "P95 needs n >= 72 for a two-sided 95% interval; have 50",
        "P99 needs n >= 368 for a two-sided 95% interval; have 50",
    )


def test_a_stricter_confidence_needs_more_samples() -> None:
    assert min_samples_for_interval(0.99, 0.99) == 528
    s = summarize(_lognormal_ns(np.random.default_rng(5), 400), confidence=0.99)
    assert s.p99.reason == "P99 needs n >= 528 for a two-sided 99% interval; have 400"


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    q=st.one_of(st.sampled_from([0.5, 0.9, 0.95, 0.99]), st.floats(0.01, 0.99)),
    confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_ranks_are_the_tightest_equal_tailed_pair(n: int, q: float, confidence: float) -> None:
    tail = (1 - confidence) / 2
    ranks = order_statistic_interval(n, q, confidence)
    assert (ranks is not None) == (n >= min_samples_for_interval(q, confidence))
    if ranks is None:
        return
    lo, hi = ranks
    assert 1 <= lo < hi <= n
    # P(X_(lo) > xi_q) = P(B <= lo - 1) and P(X_(hi) < xi_q) = P(B >= hi): each within alpha/2 ...
    assert binom.cdf(lo - 1, n, q) <= tail
    assert binom.sf(hi - 1, n, q) <= tail
    # ... and neither rank could move inward without breaking that.
    assert lo == n or binom.cdf(lo, n, q) > tail
    assert binom.sf(hi - 2, n, q) > tail
    assert binom.cdf(hi - 1, n, q) - binom.cdf(lo - 1, n, q) >= confidence


@pytest.mark.parametrize(
    ("n", "q", "confidence"), [(0, 0.5, 0.95), (10, 0.0, 0.95), (10, 1.0, 0.95), (10, 0.5, 1.0)]
)
def test_degenerate_interval_requests(n: int, q: float, confidence: float) -> None:
    if 0 < q < 1 and 0 < confidence < 1:
        assert order_statistic_interval(n, q, confidence) is None
    else:
        with pytest.raises(ValueError, match="between 0 and 1"):
            order_statistic_interval(n, q, confidence)


# --- the intervals cover the truth on latency-like distributions ----------------------------------------

QS = (0.5, 0.95, 0.99)
Sampler = Callable[[np.random.Generator, tuple[int, int]], npt.NDArray[np.float64]]


def _lognormal(sigma: float) -> tuple[Sampler, Callable[[float], float]]:
    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
        return rng.lognormal(math.log(MEDIAN_NS), sigma, shape)

    return draw, lambda q: float(lognorm.ppf(q, sigma, scale=MEDIAN_NS))


def _pareto(alpha: float) -> tuple[Sampler, Callable[[float], float]]:
    floor = 2.0e6  # the fastest an iteration can go; the tail above it is heavy

    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
        return floor * (1.0 + rng.pareto(alpha, shape))

    return draw, lambda q: floor * (1.0 - q) ** (-1.0 / alpha)


def _spiky() -> tuple[Sampler, Callable[[float], float]]:
    sigma, share, factor = 0.05, 0.01, 10.0  # 1% of iterations hit a 10x stall

    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
        base = rng.lognormal(math.log(MEDIAN_NS), sigma, shape)
        return np.where(rng.random(shape) < share, base * factor, base)

    def cdf(x: float) -> float:
        return float(
            (1 - share) * lognorm.cdf(x, sigma, scale=MEDIAN_NS)
            + share * lognorm.cdf(x, sigma, scale=MEDIAN_NS * factor)
        )

    def quantile(q: float) -> float:
        return float(optimize.brentq(lambda x: cdf(x) - q, 1.0, MEDIAN_NS * factor * 10, xtol=1e-3))

    return draw, quantile


DISTRIBUTIONS = {
    "lognormal-0.5": _lognormal(0.5),
    "lognormal-1.0": _lognormal(1.0),
    "pareto-1.5": _pareto(1.5),
    "pareto-3": _pareto(3.0),
    "lognormal+1%-10x-spikes": _spiky(),
}


@pytest.mark.parametrize("n", [368, 1500])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_intervals_cover_the_true_percentile_at_the_nominal_rate(name: str, n: int) -> None:
    draw, true_quantile = DISTRIBUTIONS[name]
    reps = 2000
    # A seed per case: one shared seed would replay the same ranks through every monotone family.
    rng = np.random.default_rng([zlib.crc32(name.encode()), n])
    samples = np.ceil(draw(rng, (reps, n))).astype(np.int64)
    truth_ms = {q: true_quantile(q) / 1e6 for q in QS}
    hits = dict.fromkeys(QS, 0)
    for row in samples:
        s = summarize(row)
        for p in (s.p50, s.p95, s.p99):
            assert p.ci_low_ms is not None and p.ci_high_ms is not None
            hits[p.q] += p.ci_low_ms <= truth_ms[p.q] <= p.ci_high_ms
    for q in QS:
        coverage = hits[q] / reps
        assert coverage >= 0.94, f"{name} n={n} P{q * 100:g}: coverage {coverage:.3f}"
        # Not wastefully wide either: within noise of the construction's exact coverage.
        lo, hi = order_statistic_interval(n, q) or (0, 0)
        exact = binom.cdf(hi - 1, n, q) - binom.cdf(lo - 1, n, q)
        assert coverage <= exact + 4 * math.sqrt(exact * (1 - exact) / reps)


# --- summary properties ---------------------------------------------------------------------------------


@st.composite
def latency_samples(draw: st.DrawFn) -> npt.NDArray[np.int64]:
    """Small hand-built lists (ties, single values, extremes) or large seeded latency-like runs."""
    if draw(st.booleans()):
        return np.array(draw(st.lists(st.integers(1, 10**9), min_size=1, max_size=80)), dtype=np.int64)
    n = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    sigma = draw(st.floats(0.0, 1.5))
    rng = np.random.default_rng(seed)
    return np.ceil(rng.lognormal(math.log(MEDIAN_NS), sigma, n)).astype(np.int64)


@settings(max_examples=150, deadline=None)
@given(latency_samples())
def test_percentiles_are_ordered_and_inside_their_intervals(samples: npt.NDArray[np.int64]) -> None:
    s = summarize(samples)
    assert s.n == samples.size
    assert s.min_ms <= s.p50.value_ms <= s.p90.value_ms <= s.p95.value_ms <= s.p99.value_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms * (1 + 1e-12) and s.mean_ms <= s.max_ms * (1 + 1e-12)
    for p in _percentiles(s):
        assert p.valid == (s.n >= min_samples_for_interval(p.q))
        if p.valid:
            assert p.ci_low_ms is not None and p.ci_high_ms is not None
            assert s.min_ms <= p.ci_low_ms <= p.value_ms <= p.ci_high_ms <= s.max_ms
        else:
            assert p.ci_low_ms is None and p.ci_high_ms is None and p.reason is not None
    assert s.valid == (s.invalid_reasons == ())


@settings(max_examples=100, deadline=None)
@given(latency_samples(), st.integers(0, 2**32 - 1))
def test_only_the_intervals_depend_on_the_order_of_samples(samples: npt.NDArray[np.int64], seed: int) -> None:
    # Values are order-free; the intervals depend on order only through the effective count (bursts).
    shuffled = np.random.default_rng(seed).permutation(samples)
    a, b = summarize(samples), summarize(shuffled)
    for pa, pb in zip(_percentiles(a), _percentiles(b), strict=True):
        assert (pa.value_ms, pa.valid, pa.reason) == (pb.value_ms, pb.valid, pb.reason)
        if pa.effective_n == pb.effective_n:
            assert (pa.ci_low_ms, pa.ci_high_ms) == (pb.ci_low_ms, pb.ci_high_ms)
    assert (a.n, a.min_ms, a.max_ms) == (b.n, b.min_ms, b.max_ms)
    assert math.isclose(a.mean_ms, b.mean_ms, rel_tol=1e-12)
    assert math.isclose(a.std_ms, b.std_ms, rel_tol=1e-9, abs_tol=1e-12)


def _close(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(latency_samples(), st.integers(1, 1000))
def test_scaling_samples_scales_every_millisecond_value(samples: npt.NDArray[np.int64], k: int) -> None:
    a, b = summarize(samples), summarize(samples * k)
    for field in ("min_ms", "mean_ms", "std_ms", "max_ms"):
        assert _close(getattr(a, field) * k, getattr(b, field)), field
    for pa, pb in zip(_percentiles(a), _percentiles(b), strict=True):
        assert (pa.q, pa.valid, pa.reason) == (pb.q, pb.valid, pb.reason)
        for field in ("value_ms", "ci_low_ms", "ci_high_ms"):
            va = getattr(pa, field)
            assert _close(None if va is None else va * k, getattr(pb, field)), (pa.q, field)


def test_milliseconds_from_nanoseconds() -> None:
    s = summarize([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert (s.min_ms, s.mean_ms, s.max_ms) == (1.0, 2.5, 4.0)
    assert s.p50.value_ms == 2.5
    assert math.isclose(s.std_ms, math.sqrt(5 / 3))  # sample standard deviation, ddof=1
    assert summarize([5_000_000]).std_ms == 0.0


# --- the precision the stop rule reads --------------------------------------------------------------------


def test_half_width_ratio_is_half_the_interval_over_the_estimate() -> None:
    p = PercentileEstimate(0.5, 10.0, 9.0, 10.5, valid=True, reason=None)
    assert half_width_ratio(p) == pytest.approx(0.075)
    short = summarize(_lognormal_ns(np.random.default_rng(1), 100))
    assert half_width_ratio(short.p99) is None


def test_half_width_shrinks_as_samples_accumulate() -> None:
    rng = np.random.default_rng(11)
    ratios = []
    for n in (400, 4000, 40000):
        ratio = half_width_ratio(summarize(_lognormal_ns(rng, n, sigma=0.3)).p99)
        assert ratio is not None
        ratios.append(ratio)
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < ratios[0] / 4


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "0 iterations"),
        ([1_000_000, 0, 2_000_000], "first at index 1: 0$"),
        ([1_000_000, -5], "first at index 1: -5$"),
        ([1.0, float("nan")], "1 are not"),
        ([1.0, float("inf")], "first at index 1: inf$"),
        ([[1, 2], [3, 4]], "shape"),
    ],
)
def test_unusable_samples_are_refused_with_the_bad_value(samples: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(samples)  # type: ignore[arg-type]
