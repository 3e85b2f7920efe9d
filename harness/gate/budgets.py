"""Latency budgets: a check per configured percentile, each failure a sentence a release engineer can act on."""

from __future__ import annotations

from ..catalog import Budgets
from ..measure.stats import LatencySummary, PercentileEstimate


def check_latency(summary: LatencySummary, budgets: Budgets) -> tuple[str, ...]:
    """Messages for every latency budget the summary breaks; empty when within budget.

    A budget is judged on the percentile's lower confidence bound when it is VALID, so a run only
    fails when the data show the budget is exceeded, not when noise might have pushed it over.
    """
    failures: list[str] = []
    checks: list[tuple[str, float | None, PercentileEstimate]] = [
        ("P50", budgets.p50_ms, summary.p50),
        ("P95", budgets.p95_ms, summary.p95),
        ("P99", budgets.p99_ms, summary.p99),
    ]
    for label, budget, estimate in checks:
        if budget is None:
            continue
        if not estimate.valid:
            failures.append(f"{label} budget {budget:g} ms cannot be judged: {estimate.reason}")
            continue
        assert estimate.ci_low_ms is not None and estimate.ci_high_ms is not None
        if estimate.ci_low_ms > budget:
            failures.append(
                f"{label} {estimate.value_ms:.3f} ms (95% CI {estimate.ci_low_ms:.3f}..{estimate.ci_high_ms:.3f}) "
                f"exceeds budget {budget:g} ms"
            )
    return tuple(failures)
