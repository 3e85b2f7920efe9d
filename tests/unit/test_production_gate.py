"""The budgets against the production model a candidate would replace (``production_top1_drop_pp``,
``production_p99_ratio``): judged on measured outputs and latency summaries."""

from __future__ import annotations

import numpy as np
import pytest

from harness.analyse import production_checks
from harness.catalog import Budgets
from harness.measure.stats import LatencySummary, summarize

LABELS = np.random.default_rng(3).integers(0, 10, 400)


def _logits(wrong: range) -> np.ndarray:
    """One-hot logits right on every input except ``wrong`` (the next class there)."""
    predicted = LABELS.copy()
    predicted[list(wrong)] = (LABELS[list(wrong)] + 1) % 10
    out: np.ndarray = np.eye(10, dtype=np.float32)[predicted]
    return out


def _latency(ms: float, n: int = 2000, seed: int = 0) -> LatencySummary:
    return summarize(np.ceil(np.random.default_rng(seed).lognormal(np.log(ms * 1e6), 0.02, n)).astype(np.int64))


PRODUCTION = _logits(range(20))  # 95.0% right
WORSE = _logits(range(60))  # 85.0% right: 10 pp below production


def test_without_production_budgets_the_comparison_fails_nothing() -> None:
    metrics, failures = production_checks(WORSE, PRODUCTION, LABELS, _latency(20.0), _latency(10.0, seed=1))
    assert failures == ()
    assert "production_gated" not in metrics
    assert metrics["production_acc_delta_pp"] == pytest.approx(-10.0)
    assert metrics["production_p99_ratio"] == pytest.approx(2.0, rel=0.05)


def test_a_candidate_further_below_production_than_its_budget_fails_naming_both_accuracies() -> None:
    budgets = Budgets(production_top1_drop_pp=2.0)
    metrics, failures = production_checks(WORSE, PRODUCTION, LABELS, None, None, budgets)
    (message,) = failures
    assert message.startswith("top-1 85.00% is 10.0 pp below production's 95.00% (95% CI ")
    assert message.endswith("pp), over budget production_top1_drop_pp 2.0 pp")
    assert metrics["production_gated"] == ["production_top1_drop_pp"]
    # Within the budget: gated, and passing.
    close = _logits(range(25))  # 93.75%: 1.25 pp below
    metrics, failures = production_checks(close, PRODUCTION, LABELS, None, None, budgets)
    assert failures == () and metrics["production_gated"] == ["production_top1_drop_pp"]


def test_an_accuracy_budget_on_an_unlabelled_eval_set_cannot_pass() -> None:
    budgets = Budgets(production_top1_drop_pp=1.0)
    _, failures = production_checks(WORSE, PRODUCTION, None, None, None, budgets)
    assert failures == (
        "top-1 drop vs production cannot be judged: the eval set has no labels (budget "
        "production_top1_drop_pp 1 pp; use a labelled eval: set, or drop the budget)",
    )


def test_a_p99_over_the_allowed_multiple_of_production_fails_only_when_the_intervals_show_it() -> None:
    production, candidate = _latency(10.0, seed=1), _latency(11.0, seed=2)
    strict = Budgets(production_p99_ratio=1.0)
    _, failures = production_checks(PRODUCTION, PRODUCTION, LABELS, candidate, production, strict)
    (message,) = failures
    assert "1.10x production's" in message and message.endswith("over budget production_p99_ratio 1x")
    # A ratio that would print as the budget gets the decimals to tell them apart.
    nearly, reference = _latency(10.04, n=200_000, seed=6), _latency(10.0, n=200_000, seed=5)
    (close,) = production_checks(PRODUCTION, PRODUCTION, LABELS, nearly, reference, strict)[1]
    assert " is 1.004x production's" in close, close
    # 1.1x against an allowance of 1.25x passes; so does 1.0x against 1.0x, however the noise fell.
    allowed = Budgets(production_p99_ratio=1.25)
    assert production_checks(PRODUCTION, PRODUCTION, LABELS, candidate, production, allowed)[1] == ()
    same = _latency(10.0, seed=3)
    assert production_checks(PRODUCTION, PRODUCTION, LABELS, same, production, strict)[1] == ()


def test_a_p99_budget_with_an_invalid_p99_says_it_cannot_be_judged() -> None:
    short = _latency(11.0, n=50)  # too few calls for a P99 interval
    budgets = Budgets(production_p99_ratio=1.5)
    (message,) = production_checks(PRODUCTION, PRODUCTION, LABELS, short, _latency(10.0), budgets)[1]
    assert message.startswith("P99 vs production cannot be judged: the candidate's P99 is INVALID (")
    (message,) = production_checks(PRODUCTION, PRODUCTION, LABELS, _latency(10.0), None, budgets)[1]
    assert "the production's P99 is INVALID (no latency measured)" in message


def test_production_budgets_are_validated_like_every_budget() -> None:
    with pytest.raises(ValueError, match="production_p99_ratio"):
        Budgets(production_p99_ratio=0.0)
    with pytest.raises(ValueError, match="production_top1_drop_pp"):
        Budgets(production_top1_drop_pp=-1.0)
