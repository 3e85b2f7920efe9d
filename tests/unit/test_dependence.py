"""Bursts of slow calls: the effective count of independent calls, and intervals that stay honest with them."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.stats import norm

from harness.agent.dependence import effective_sizes, integrated_autocorrelation
from harness.agent.loop import converged as runner_converged
from harness.agent.protocol import StopSpec
from harness.analyse import stability_metrics
from harness.measure.stability import StopRule, stop_decision
from harness.measure.stats import order_statistic_interval, summarize

MEDIAN_NS = 10e6
SIGMA = 0.03
SLOW = 1.3  # a burst slows calls by 30%
CALM_CALLS, BURST_CALLS = 500, 20  # mean lengths of the calm and slow stretches


def bursty(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    """Calm stretches and 30% slower bursts of geometric length, as a noisy neighbour or hypervisor makes them."""
    factor = np.empty(n)
    i, slow = 0, False
    while i < n:
        j = min(n, i + int(rng.geometric(1.0 / (BURST_CALLS if slow else CALM_CALLS))))
        factor[i:j] = SLOW if slow else 1.0
        i, slow = j, not slow
    return np.ceil(MEDIAN_NS * factor * rng.lognormal(0.0, SIGMA, n)).astype(np.int64)


def true_p99() -> float:
    """The P99 of the calm/burst mixture in the long run (bursts hold 20 / 520 of the calls)."""
    share = BURST_CALLS / (CALM_CALLS + BURST_CALLS)

    def cdf(x: float) -> float:
        calm = norm.cdf(math.log(x / MEDIAN_NS) / SIGMA)
        slow = norm.cdf(math.log(x / (MEDIAN_NS * SLOW)) / SIGMA)
        return float((1 - share) * calm + share * slow - 0.99)

    return float(brentq(cdf, MEDIAN_NS, 2 * MEDIAN_NS))


def test_the_estimator_recovers_the_known_autocorrelation_time_of_an_ar1_series() -> None:
    # For an AR(1) series with coefficient phi the variance of the mean grows by (1 + phi) / (1 - phi): 9 at 0.8.
    rng = np.random.default_rng(0)
    phi, n = 0.8, 200_000
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    tau, lags = integrated_autocorrelation(x)
    assert abs(tau - 9.0) / 9.0 < 0.1, tau
    assert lags > 1


def test_p99_intervals_cover_the_true_p99_of_a_bursty_machine_as_often_as_they_claim() -> None:
    """The independent-call interval held the true P99 in about half of 300 simulated runs; the
    effective-count interval in 95% (nominal 95%). Here 200 runs: binomial noise about +-1.5 points."""
    rng = np.random.default_rng(3)
    truth, n, runs = true_p99(), 10_000, 200
    naive = honest = 0
    lo, hi = order_statistic_interval(n, 0.99) or (0, 0)
    for _ in range(runs):
        samples = bursty(rng, n)
        p99 = summarize(samples).p99
        assert p99.ci_low_ms is not None and p99.ci_high_ms is not None and p99.dependence_reason is None
        assert p99.effective_n is not None and p99.effective_n < n / 3, "bursts are worth fewer calls"
        honest += p99.ci_low_ms * 1e6 <= truth <= p99.ci_high_ms * 1e6
        ordered = np.sort(samples)
        naive += ordered[lo - 1] <= truth <= ordered[hi - 1]
    assert naive / runs < 0.75, f"the independent-call interval covered {naive}/{runs}"
    assert honest / runs >= 0.9, f"the effective-count interval covered only {honest}/{runs}"


def test_independent_calls_keep_exactly_the_binomial_interval() -> None:
    for n in (400, 2000):
        for seed in range(40):
            samples = np.ceil(np.random.default_rng(seed).lognormal(math.log(MEDIAN_NS), 0.1, n)).astype(np.int64)
            assert effective_sizes(samples, (0.5, 0.9, 0.95, 0.99)) == (n, n, n, n), (n, seed)
            ordered = np.sort(samples) / 1e6
            p99 = summarize(samples).p99
            lo, hi = order_statistic_interval(n, 0.99) or (0, 0)
            assert (p99.ci_low_ms, p99.ci_high_ms) == (ordered[lo - 1], ordered[hi - 1])


def test_a_run_whose_bursts_leave_too_few_independent_calls_is_marked_unstable() -> None:
    # 1,000 calls, one stall of 15 slow calls in a row: P99 rests on far fewer than the 368 independent
    # calls its interval needs.
    samples = np.full(1000, MEDIAN_NS)
    samples[500:515] *= 1.5
    samples = np.ceil(samples * np.random.default_rng(1).lognormal(0.0, SIGMA, samples.size)).astype(np.int64)
    summary = summarize(samples)
    p99 = summary.p99
    assert p99.valid and p99.effective_n is not None and p99.effective_n < 368
    assert p99.dependence_reason is not None and "slow calls came in bursts" in p99.dependence_reason
    assert f"about {p99.effective_n} independent ones" in p99.dependence_reason
    # Still a number with the widest interval the samples allow, and the run says not to trust it.
    assert p99.ci_high_ms == samples.max() / 1e6
    metrics = stability_metrics(samples, summary)
    assert metrics["unstable"] and p99.dependence_reason in metrics["unstable_reasons"]
    assert stop_decision(samples, elapsed_s=1.0, rule=StopRule(min_duration_s=0.0)) is None


def test_bursts_keep_the_stop_rule_measuring_past_where_independent_calls_would_stop() -> None:
    samples = bursty(np.random.default_rng(5), 40_000)
    spec = StopSpec(max_half_width=0.01)
    rule = StopRule(max_half_width=0.01, min_iterations=400, min_duration_s=0.0)
    naive = 400
    while naive < samples.size and not runner_converged(samples[:naive].tolist(), spec, dependence=False):
        naive += max(int(naive * 0.02), 50)
    assert naive < 5_000, "independent-call intervals get within 1% early"
    # With the bursts counted, neither the host's rule nor the runner's stops at twice that.
    assert stop_decision(samples[: 2 * naive], elapsed_s=1.0, rule=rule) is None
    assert not runner_converged(samples[: 2 * naive].tolist(), spec)
