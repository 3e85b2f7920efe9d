"""A job measured in several runner processes: percentiles with an interval that holds from one run to the next."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from harness.analyse import history_metrics, latency_checks
from harness.catalog import Budgets
from harness.errors import ConfigError
from harness.lab.inventory import load_lab
from harness.measure.repeats import between_runs
from harness.measure.stats import summarize
from harness.measure.throttle import assess_runs
from harness.pipeline import measure_settings
from tests.unit.test_inventory import _measure_lab
from tests.unit.test_throttle import facts


def _run(level_ms: float, n: int = 2000, seed: int = 0) -> np.ndarray:
    """One run's latencies (ns) around ``level_ms``: independent, lognormal with a 5% spread."""
    rng = np.random.default_rng(seed)
    return (level_ms * 1e6 * np.exp(rng.normal(0.0, 0.05, n))).astype(np.int64)


def test_three_runs_at_different_levels_give_their_mean_and_a_t_interval_from_their_spread() -> None:
    runs = [_run(level, seed=i) for i, level in enumerate((10.0, 10.6, 10.3))]
    each = [summarize(r) for r in runs]
    repeated = between_runs(each, np.concatenate(runs))
    p50 = repeated.summary.p50
    values = np.array([s.p50.value_ms for s in each])
    assert p50.value_ms == pytest.approx(values.mean())
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert p50.ci_low_ms == pytest.approx(low) and p50.ci_high_ms == pytest.approx(high)
    # A 6% spread between runs gives an interval far wider than any one run's: that is the point.
    assert p50.ci_high_ms - p50.ci_low_ms > 5 * max(s.p50.ci_high_ms - s.p50.ci_low_ms for s in each)  # type: ignore[operator]
    assert repeated.summary.n == 6000 and repeated.summary.valid
    metrics = repeated.metrics()
    assert metrics["repeats"] == 3 and metrics["repeat_n"] == [2000, 2000, 2000]
    assert metrics["repeat_p50_ms"] == pytest.approx(list(values))
    assert metrics["repeat_p50_cv"] == pytest.approx(values.std(ddof=1) / values.mean())
    assert metrics["repeat_p99_effective_n"] == [s.p99.effective_n for s in each]
    assert p50.effective_n is None, "a between-run interval rests on runs, not on a count of calls"


def test_a_p99_invalid_in_one_run_is_invalid_for_the_job_naming_the_run() -> None:
    runs = [_run(10.0, seed=1), _run(10.0, n=100, seed=2), _run(10.0, seed=3)]
    summary = between_runs([summarize(r) for r in runs], np.concatenate(runs)).summary
    assert not summary.p99.valid and summary.p50.valid
    assert summary.invalid_reasons[0].startswith("run 2 of 3: ")
    assert "368" in summary.invalid_reasons[0]
    _, failures = latency_checks(summary, np.concatenate(runs), Budgets())
    assert any(f.startswith("statistics INVALID: run 2 of 3") for f in failures)


def test_a_budget_inside_the_between_run_interval_passes_and_one_below_it_fails() -> None:
    runs = [_run(level, seed=i) for i, level in enumerate((10.0, 10.8, 10.4))]
    summary = between_runs([summarize(r) for r in runs], np.concatenate(runs)).summary
    p50 = summary.p50
    assert p50.ci_low_ms is not None
    budget = Budgets(p50_ms=p50.ci_low_ms + 0.01)
    # The first run alone fails this budget: its own interval is narrow and sits above it. Three runs
    # 0.8 ms apart cannot rule out a long-run P50 that low, so the job does not fail on it; the gate
    # fails a release only when the data show the budget broken, and one run's minute does not.
    assert latency_checks(summarize(runs[0]), runs[0], budget)[1]
    assert latency_checks(summary, np.concatenate(runs), budget)[1] == ()
    (failure,) = latency_checks(summary, np.concatenate(runs), Budgets(p50_ms=p50.ci_low_ms * 0.99))[1]
    assert failure.startswith("P50 ")


def test_stability_is_judged_run_by_run_and_each_reason_names_its_run() -> None:
    steady = _run(10.0, seed=4)
    drifting = np.concatenate([_run(10.0, n=1000, seed=5), _run(11.5, n=1000, seed=6)])
    runs = [steady, drifting, _run(10.0, seed=7)]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    metrics, _ = latency_checks(summary, np.concatenate(runs), Budgets(), list(zip(runs, each, strict=True)))
    assert metrics["unstable"]
    assert {r.split(":")[0] for r in metrics["unstable_reasons"]} == {"run 2 of 3"}, "the steady runs are not blamed"
    assert any("drift" in r for r in metrics["unstable_reasons"])
    assert metrics["drift"] == pytest.approx(0.15, abs=0.02), "the worst run's drift"


def test_a_run_steady_at_another_level_is_marked_unstable_naming_it_and_close_runs_are_not() -> None:
    # The reference VM's slow state: one runner process at about 1.45x for its whole life (steady, so no
    # within-run check sees it), beside two at the usual level (bench_between_runs, 2026-12-01).
    runs = [_run(12.8, seed=10), _run(13.3, seed=11), _run(19.0, seed=12)]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    metrics, _ = latency_checks(summary, np.concatenate(runs), Budgets(), list(zip(runs, each, strict=True)))
    assert metrics["unstable"]
    (reason,) = metrics["unstable_reasons"]
    shape = r"run 3 of 3: P50 1[89]\.\d\d ms is 1\.4\dx the runs' median 13\.\d\d ms \(.*interleaved rounds\)"
    assert re.fullmatch(shape, reason), reason
    # Two runs slow and one fast: the median is a slow run's, and the fast one is named.
    runs = [_run(18.5, seed=13), _run(12.5, seed=14), _run(17.6, seed=15)]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    metrics, _ = latency_checks(summary, np.concatenate(runs), Budgets(), list(zip(runs, each, strict=True)))
    assert [r.split(":")[0] for r in metrics["unstable_reasons"]] == ["run 2 of 3"]
    # The spread measured between ordinary runs (about 0.9-1.1x) is not a level shift.
    runs = [_run(level, seed=20 + i) for i, level in enumerate((11.1, 12.3, 13.3, 12.1))]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    metrics, _ = latency_checks(summary, np.concatenate(runs), Budgets(), list(zip(runs, each, strict=True)))
    assert not metrics["unstable"], metrics["unstable_reasons"]


def test_fewer_than_three_runs_or_mismatched_samples_are_refused() -> None:
    runs = [_run(10.0, seed=i) for i in range(2)]
    with pytest.raises(ValueError, match="at least 3 runs"):
        between_runs([summarize(r) for r in runs], np.concatenate(runs))
    three = [*runs, _run(10.0, seed=9)]
    with pytest.raises(ValueError, match="pooled samples"):
        between_runs([summarize(r) for r in three], np.concatenate(runs))


@settings(max_examples=40, deadline=None)
@given(
    levels=st.lists(st.floats(min_value=0.5, max_value=50.0), min_size=3, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_the_between_run_estimate_lies_among_the_runs_and_its_interval_around_it(
    levels: list[float], seed: int
) -> None:
    runs = [_run(level, n=400, seed=seed + i) for i, level in enumerate(levels)]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    for name in ("p50", "p90", "p95", "p99"):
        estimate = getattr(summary, name)
        values = [getattr(s, name).value_ms for s in each]
        assert min(values) - 1e-9 <= estimate.value_ms <= max(values) + 1e-9
        assert estimate.ci_low_ms is not None and estimate.ci_high_ms is not None
        assert 0.0 <= estimate.ci_low_ms <= estimate.value_ms <= estimate.ci_high_ms


def test_one_throttled_run_makes_the_job_throttled_and_says_which() -> None:
    quiet, hot = facts(), facts(after_ns=[12_500] * 7)
    verdict = assess_runs({**quiet, "repeat_facts": [quiet, hot]})
    assert verdict.throttled and verdict.calibration_slowdown == pytest.approx(0.25)
    assert verdict.reasons[0].startswith("run 3 of 3: calibration workload 25% slower")
    contended = facts(foreign=[0.6, 0.6, 0.6])
    verdict = assess_runs({**contended, "repeat_facts": [quiet, quiet]})
    assert not verdict.throttled and verdict.contention and verdict.contention.startswith("run 1 of 3: ")
    assert not assess_runs({**quiet, "repeat_facts": [quiet, quiet]}).throttled


def test_two_repeats_are_refused_naming_the_flag_or_the_lab_key_and_the_fix(tmp_path: Path) -> None:
    lab = load_lab(_measure_lab(tmp_path, "repeats: 3\n"))
    assert measure_settings(lab).repeats == 3
    assert measure_settings(lab, repeats=1).repeats == 1, "the flag beats the lab file"
    with pytest.raises(ConfigError) as flag:
        measure_settings(lab, repeats=2)
    assert flag.value.key == "--repeats" and flag.value.file is None
    assert "use 1 (one run) or 3 or more" in flag.value.one_line()
    path = _measure_lab(tmp_path, "repeats: 2\n")
    with pytest.raises(ConfigError) as key:
        measure_settings(load_lab(path))
    assert key.value.key == "measure.repeats" and key.value.file == path.resolve()
    assert "needs at least 3 runs" in str(key.value)


# ---- against the same artifact's earlier runs ----------------------------------------------------------
RUNTIME = {"runtime": "openvino", "version": "2026.0", "INFERENCE_NUM_THREADS": 2}


def _record(run_id: str, p50_ms: float, **changes: object) -> dict[str, object]:
    """A latency job's flat record (the fields the history check reads), as the store keeps it."""
    record: dict[str, object] = {
        "run_id": run_id, "kind": "latency", "job_id": "m/openvino-fp32-t2/nuc-1", "artifact_sha256": "a" * 64,
        "input_shape": [1, 3, 224, 224], "batch": 1, "variant_options": {}, "cpu_affinity": [0, 1],
        "runtime_config": RUNTIME,
        "pinning": "taskset", "runner_sha256": "r" * 64, "device_setup_sha256": "e" * 16,
        "valid": True, "status": "passed", "p50_ms": p50_ms,
    }
    record.update(changes)
    return record


def test_a_p50_at_another_level_than_the_artifacts_last_runs_is_unstable_naming_them() -> None:
    history = [_record(f"run{i:09d}", p50) for i, p50 in enumerate((12.1, 11.8, 12.4, 12.0, 11.9, 30.0))]
    out = history_metrics(_record("tonight000", 18.6), history)
    assert out["history_runs"] == 5 and out["history_p50_ratio"] == pytest.approx(18.6 / 12.0, abs=1e-4)
    assert out["unstable"] is True
    (reason,) = out["unstable_reasons"]
    assert reason.startswith("P50 18.6 ms is 1.55x the median 12 ms of the same artifact's last 5 runs on this device")
    assert "(runs run00000, run00000" in reason and "rerun, and check the device if it stays so" in reason
    # The ordinary spread (0.9-1.1x) is not flagged, and a fast outlier is, as a slow one.
    assert "unstable" not in history_metrics(_record("tonight000", 13.0), history)
    assert history_metrics(_record("tonight000", 9.0), history)["unstable"] is True
    assert "range from" not in reason  # 11.8-12.4 ms: one usual speed
    # An artifact with two usual speeds (LiteRT's tiny model on the reference VM) is flagged, saying so.
    two_speeds = [_record(f"run{i}", p50) for i, p50 in enumerate((0.0148, 0.0233, 0.0218, 0.0140))]
    (bimodal,) = history_metrics(_record("tonight000", 0.0300), two_speeds)["unstable_reasons"]
    assert "those runs themselves range from 0.014 to 0.0233 ms, so this artifact runs at more than one" in bimodal


def test_only_the_same_artifact_under_the_same_conditions_counts_and_three_are_needed() -> None:
    same = [_record(f"run{i}", 12.0) for i in range(2)]
    other = [
        _record("rebuilt", 12.0, artifact_sha256="b" * 64),
        _record("batch4", 12.0, batch=4),
        _record("threads", 12.0, runtime_config={**RUNTIME, "INFERENCE_NUM_THREADS": 1}),
        _record("newer", 12.0, runtime_config={**RUNTIME, "version": "2026.1"}),
        _record("pinned", 12.0, cpu_affinity=[1]),
        _record("new-runner", 12.0, runner_sha256="s" * 64),  # another edgebench's timing loop
        _record("new-env", 12.0, device_setup_sha256="f" * 16),  # other env: or setup: on the device
        _record("old", 12.0, runner_sha256=None),  # a record from before these fields
        _record("invalid", 12.0, valid=False),
        _record("errored", 12.0, status="error"),
        _record("tonight000", 12.0),  # this run's own earlier record of the job
    ]
    out = history_metrics(_record("tonight000", 30.0), [*same, *other])
    assert out == {"history_runs": 2}  # two comparable runs: too few to judge
    assert history_metrics(_record("tonight000", 30.0, valid=False), [*same, *same]) == {}
    assert history_metrics(_record("tonight000", 30.0), [*same, _record("run2", 12.0)])["unstable"] is True


def test_a_repeated_run_that_went_at_two_speeds_is_named_and_its_speeds_kept() -> None:
    # Run 2 of 3 switches between 10 and 15 ms every 200 calls (2-3 s): the others keep one speed.
    switching = np.concatenate([_run(10.0 if i % 2 == 0 else 15.0, n=200, seed=40 + i) for i in range(10)])
    runs = [_run(12.0, seed=30), switching, _run(12.0, seed=31)]
    each = [summarize(r) for r in runs]
    summary = between_runs(each, np.concatenate(runs)).summary
    metrics, _ = latency_checks(summary, np.concatenate(runs), Budgets(), list(zip(runs, each, strict=True)))
    assert any(r.startswith("run 2 of 3: ran at two speeds") for r in metrics["unstable_reasons"])
    assert not any(r.startswith(("run 1 of 3: ran", "run 3 of 3: ran")) for r in metrics["unstable_reasons"])
    fast, slow = metrics["speeds_ms"]
    assert fast == pytest.approx(10.0, rel=0.03) and slow == pytest.approx(15.0, rel=0.03)
    assert metrics["speed_switches"] == 9
