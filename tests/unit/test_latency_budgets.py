"""Latency budgets fail a release only when the data show the budget is broken, and say so in one line."""

from __future__ import annotations

import numpy as np

from harness.catalog import Budgets
from harness.gate.budgets import check_latency
from harness.measure.stats import summarize


def _samples(n: int, seed: int = 0) -> np.ndarray:
    """Independent latencies around 10 ms (lognormal, 10% spread), in ns as the runner reports them."""
    rng = np.random.default_rng(seed)
    return (10e6 * np.exp(rng.normal(0.0, 0.1, n))).astype(np.int64)


def test_a_p99_whose_interval_straddles_the_budget_passes_and_one_wholly_above_fails() -> None:
    summary = summarize(_samples(2000))
    p99 = summary.p99
    assert p99.valid and p99.ci_low_ms is not None and p99.ci_high_ms is not None
    inside = (p99.ci_low_ms + p99.value_ms) / 2  # below the estimate, above the interval's lower end
    assert check_latency(summary, Budgets(p99_ms=inside)) == (), "noise alone must not fail a release"
    below = p99.ci_low_ms * 0.99
    (failure,) = check_latency(summary, Budgets(p99_ms=below))
    assert failure.startswith(f"P99 {p99.value_ms:.3f} ms (95% CI {p99.ci_low_ms:.3f}..")
    assert failure.endswith(f"exceeds budget {below:g} ms")


def test_every_broken_percentile_is_named_and_unset_budgets_are_not_checked() -> None:
    summary = summarize(_samples(2000, seed=1))
    failures = check_latency(summary, Budgets(p50_ms=1.0, p95_ms=1.0))
    assert [f.split()[0] for f in failures] == ["P50", "P95"]
    assert check_latency(summary, Budgets()) == ()


def test_a_p99_from_too_few_calls_cannot_be_judged_and_says_why() -> None:
    summary = summarize(_samples(100))
    (failure,) = check_latency(summary, Budgets(p99_ms=1000.0))
    assert failure.startswith("P99 budget 1000 ms cannot be judged: ")
    assert "368" in failure and "\n" not in failure
