"""Throttle and contention detection: what makes a run count as throttled, and what the pipeline does then."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.agent.protocol import ProbeSpec
from harness.agent.telemetry import Probes
from harness.catalog import load_catalog
from harness.lab.inventory import load_lab
from harness.lab.platforms import load_platform
from harness.measure.throttle import ThrottleLimits, ThrottleVerdict, assess_runs, assess_throttle, throttle_metrics
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import JobResult
from harness.store import Store


def facts(
    *,
    before_ns: list[int] | None = None,
    after_ns: list[int] | None = None,
    iterations: int = 1000,
    temps: tuple[float, float] | None = None,
    freqs: tuple[list[float], list[list[float]]] | None = None,
    foreign: list[float] | None = None,
) -> dict[str, Any]:
    """A runner's facts with a thermal record and calibration times (10 us per repetition by default)."""
    during: list[dict[str, Any]] = []
    n = max(len(freqs[1]) if freqs else 0, len(foreign or []), 3)
    for i in range(n):
        sample: dict[str, Any] = {"t_s": 0.5 * (i + 1), "temperatures_c": {}, "cpu_freq_mhz": []}
        if temps:
            sample["temperatures_c"] = {"cpu-thermal": temps[0] + (temps[1] - temps[0]) * (i + 1) / n}
        if freqs:
            sample["cpu_freq_mhz"] = freqs[1][i] if i < len(freqs[1]) else freqs[1][-1]
        if foreign:
            sample["foreign_cpu"] = foreign[i] if i < len(foreign) else foreign[-1]
        during.append(sample)
    before = {"t_s": 0.0, "temperatures_c": {"cpu-thermal": temps[0]} if temps else {}, "cpu_freq_mhz": []}
    if freqs:
        before["cpu_freq_mhz"] = freqs[0]
    return {
        "thermal": {"interval_s": 0.5, "before": before, "during": during, "after": during[-1]},
        "calibration": {
            "iterations": iterations,
            "before_ns": before_ns or [10_000] * 7,
            "after_ns": after_ns or [10_000] * 7,
        },
    }


def test_a_quiet_run_is_not_throttled_and_old_runners_are_not_either() -> None:
    verdict = assess_throttle(facts())
    assert not verdict.throttled and verdict.reasons == () and verdict.contention is None
    assert verdict.calibration_slowdown == pytest.approx(0.0)
    # A runner from before thermals sends no record: nothing to judge, nothing flagged.
    old = assess_throttle({"os": "Linux"})
    assert not old.throttled and old.calibration_slowdown is None


def test_a_calibration_workload_that_got_slower_means_throttled() -> None:
    verdict = assess_throttle(facts(after_ns=[12_500] * 7))
    assert verdict.throttled
    assert verdict.calibration_slowdown == pytest.approx(0.25)
    assert "calibration workload 25% slower" in verdict.reasons[0]


def test_a_few_slow_calibration_repetitions_are_a_burst_not_a_throttle() -> None:
    # Another process preempting two of seven repetitions must not look like slower clocks.
    verdict = assess_throttle(facts(after_ns=[10_100, 30_000, 10_050, 25_000, 10_000, 10_200, 10_100]))
    assert not verdict.throttled


def test_a_clock_that_falls_during_the_run_means_throttled_naming_the_cpu() -> None:
    verdict = assess_throttle(facts(freqs=([2000.0, 2000.0], [[2000.0, 2000.0], [2000.0, 1500.0], [2000.0, 1400.0]])))
    assert verdict.throttled
    assert verdict.freq_drop == pytest.approx(0.3)
    assert "CPU1 clock fell 30%" in verdict.reasons[0]
    # Each CPU's lowest clock during the loop is kept for the report.
    assert verdict.thermal["min"] == {"cpu_freq_mhz": [2000.0, 1400.0]}


def test_a_jetson_gpu_clock_read_from_sysfs_that_falls_means_throttled(tmp_path: Path) -> None:
    """The Jetson Orin profile's GPU clock reader on a devfreq tree laid out as on the board (a fake
    tree: no Jetson here): a fall from 1300 to 306 MHz during the loop is a throttle naming that clock."""
    (gpu_reader,) = [r for r in load_platform("jetson-orin").telemetry.readers() if r.label == "gpu"]
    spec = gpu_reader.spec()
    node = tmp_path / "devfreq" / "17000000.gpu"
    node.mkdir(parents=True)
    (node / "cur_freq").write_text("1300500000\n")
    probes = Probes([ProbeSpec(**{**spec, "path": str(tmp_path / "devfreq" / "*.gpu" / "cur_freq")})])
    probes.start()
    readings: list[dict[str, Any]] = []
    for hz in (1_300_500_000, 1_300_500_000, 306_000_000, 306_000_000):
        (node / "cur_freq").write_text(f"{hz}\n")
        readings.append(probes.read({"t_s": float(len(readings))}))
    record = facts()
    record["thermal"].update(before=readings[0], during=readings[1:], after=readings[-1])
    verdict = assess_throttle(record)
    assert probes.errors() == [] and verdict.throttled
    assert verdict.freq_drop == pytest.approx(1 - 306 / 1300.5)
    assert "17000000_GPU clock fell 76%" in verdict.reasons[0]


def test_an_idle_clock_before_the_run_that_rises_under_load_is_not_a_drop() -> None:
    # ondemand/schedutil governors idle low: the reference is the highest of before and the first sample.
    verdict = assess_throttle(facts(freqs=([800.0], [[2400.0], [2400.0], [2350.0]])))
    assert not verdict.throttled
    assert verdict.freq_drop == pytest.approx(1 - 2350 / 2400)


def test_a_large_temperature_rise_means_the_device_was_not_at_steady_state() -> None:
    verdict = assess_throttle(facts(temps=(45.0, 68.0)))
    assert verdict.throttled
    assert verdict.temp_rise_c == pytest.approx(23.0)
    assert "cpu-thermal rose 23.0 C" in verdict.reasons[0]
    assert verdict.thermal["max"]["temperatures_c"] == {"cpu-thermal": 68.0}
    assert not assess_throttle(facts(temps=(45.0, 52.0))).throttled


def test_another_process_using_the_cpus_is_contention_not_throttling() -> None:
    verdict = assess_throttle(facts(foreign=[0.5, 0.6, 0.7]))
    assert not verdict.throttled
    assert verdict.foreign_cpu == pytest.approx(0.6)
    assert verdict.contention is not None and "other processes used 60%" in verdict.contention


def test_limits_are_the_callers_and_nonsense_is_refused() -> None:
    assert not assess_throttle(facts(after_ns=[12_500] * 7), ThrottleLimits(max_slowdown=0.3)).throttled
    with pytest.raises(ValueError, match="max_slowdown"):
        ThrottleLimits(max_slowdown=0.0)


def test_a_repeated_job_one_run_of_which_a_quota_stalled_shows_that_runs_figures_and_says_which() -> None:
    quiet = facts()
    stalled = {
        **facts(after_ns=[10_500] * 7),  # 5% slower: under the limit, but tells this run's figures apart
        "cpu_quota": [
            {"group": "/ci/job7", "quota_cpus": 2.0, "periods": 80, "throttled_periods": 31, "throttled_s": 0.9}
        ],
    }
    verdict = assess_runs({**quiet, "repeat_facts": [stalled, quiet]})
    alone = assess_throttle(stalled)
    assert not verdict.throttled and verdict.contention is None
    assert alone.quota is not None and verdict.quota == f"run 2 of 3: {alone.quota}"
    assert verdict.contended == (verdict.quota,)
    assert verdict.quota_cpus == 2.0 and verdict.calibration_slowdown == pytest.approx(0.05), "run 2's figures"


def test_a_result_still_throttled_after_its_retries_is_marked_unstable_with_every_reason() -> None:
    hot = assess_throttle(facts(after_ns=[13_000] * 7))
    metrics = throttle_metrics({"unstable_reasons": ["CV 20% exceeds 15%"]}, [hot, hot, hot])
    assert metrics["throttled"] is True
    assert metrics["throttle_retries"] == 2
    assert len(metrics["retried_because"]) == 2
    assert metrics["unstable"] is True
    assert metrics["unstable_reasons"][0] == "CV 20% exceeds 15%"
    assert metrics["unstable_reasons"][1].startswith("throttled: calibration workload 30% slower")
    assert set(metrics["thermal"]) >= {"before", "after", "max"}


def test_a_clean_retry_is_not_unstable_but_says_why_it_was_retried() -> None:
    hot = assess_throttle(facts(after_ns=[13_000] * 7))
    metrics = throttle_metrics({}, [hot, assess_throttle(facts())])
    assert metrics["throttled"] is False
    assert "unstable" not in metrics
    assert metrics["throttle_retries"] == 1
    assert "30% slower" in metrics["retried_because"][0]


# ---- the pipeline's policy for a contended job, on canned runner facts ---------------------------
# The retry loop itself runs on the real runner in tests/integration/test_measure_local.py (a stand-in
# sensor that heats up). A competing load cannot be made to read the same way twice on a shared VM,
# so the rule "contention marks unstable, it is not retried" is checked on canned facts; the real
# competing load is benchmarks/bench_interference.py's.
@pytest.fixture
def pipeline(edgebench_env: Path, tiny_catalog: Path, local_lab: Path) -> Pipeline:
    settings = MeasureSettings(cooldown_s=0.0, throttle_retries=2)
    store = Store(edgebench_env / "t.sqlite")
    return Pipeline(load_lab(local_lab), load_catalog(tiny_catalog), store, settings=settings)


def canned(make_result: Callable[..., JobResult], pipeline: Pipeline, runs: list[dict[str, Any]]) -> list[str]:
    """Replace the device: each _execute call returns the next canned facts; returns the call log."""
    calls: list[str] = []

    def execute(job: Any, started: str) -> JobResult:
        calls.append(started)
        result = make_result(pipeline.run_id, job.id)
        return JobResult(**{**result.__dict__, "facts": {**result.facts, **runs[len(calls) - 1]}})

    pipeline._execute = execute  # type: ignore[method-assign]
    return calls


def test_a_contended_job_is_marked_unstable_without_a_retry_on_canned_runner_facts(
    pipeline: Pipeline, make_result: Callable[..., JobResult]
) -> None:
    calls = canned(make_result, pipeline, [facts(foreign=[0.9])])
    flat = pipeline.run_job(pipeline.plan()[0]).flat()
    assert len(calls) == 1
    assert flat["throttled"] is False
    assert flat["unstable"] is True
    assert "competing load" in flat["competing_load"]


def test_verdict_is_a_frozen_record() -> None:
    verdict = assess_throttle(facts())
    assert isinstance(verdict, ThrottleVerdict)
    with pytest.raises(AttributeError):
        verdict.throttled = True  # type: ignore[misc]
