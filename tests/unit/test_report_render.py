"""The report's answers a product manager acts on, rendered from stored records: which variant meets the
frame budget, what INT8 buys over its FP32 reference, how far to trust a number (the device's temperatures,
clocks, CPUs and CPU quota during the loop), and how a candidate compares with the production model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.analyse import cpu_parallelism, history_metrics, parity_checks, production_checks, provenance_metrics
from harness.catalog import Budgets
from harness.measure.stats import summarize
from harness.measure.throttle import assess_runs, throttle_metrics
from harness.records import JobResult, Variant
from harness.report.render import render_report
from harness.store import RunInfo, Store

RUN_ID = "unit00000001"
PARITY_FAILURE = "top-1 drop 4.10 pp exceeds the budget of 1.00 pp"

Render = Callable[..., dict[str, list[dict[str, str]]]]


class Tables(HTMLParser):
    """Each section's table rows as {header: cell text}, plus the row's data-job under "job"."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[dict[str, str]]] = {}
        self._section = ""
        self._header: list[str] = []
        self._row: list[str] = []
        self._job = ""
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section, self._header = values.get("id", ""), []
            self.sections.setdefault(self._section, [])  # a section with no rows is there all the same
        elif tag == "tr":
            self._row, self._job = [], values.get("data-job", "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("br", "div") and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and not self._header:
            self._header = self._row
        elif tag == "tr":
            row = dict(zip(self._header, self._row, strict=True))
            self.sections.setdefault(self._section, []).append({**row, "job": self._job})

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def timed(ms: float, n: int = 2000, seed: int = 0) -> np.ndarray:
    """``n`` calls of about ``ms`` each, in ns, with a narrow spread."""
    return np.ceil(np.random.default_rng(seed).lognormal(np.log(ms * 1e6), 0.02, n)).astype(np.int64)


@pytest.fixture
def result(make_result: Callable[..., JobResult]) -> Callable[..., JobResult]:
    """A latency result of ``job_id`` (model/backend-precision[-NNNpx][-tN]/device) with the given samples."""

    def build(
        job_id: str,
        samples: np.ndarray,
        *,
        failures: dict[str, tuple[str, ...]] | None = None,
        options: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> JobResult:
        _, variant, _ = job_id.split("/")
        backend, precision, *rest = variant.split("-")
        size = next((int(p[:-2]) for p in rest if p.endswith("px")), 224)
        threads = next((int(p[1:]) for p in rest if re.fullmatch(r"t\d+", p)), None)
        base = make_result(RUN_ID, job_id, n=10)
        return replace(
            base,
            backend=backend,
            runtime=backend,
            precision=precision,
            input_shape=(1, 3, size, size),
            threads=threads,
            status="failed" if failures else "passed",
            message="; ".join(m for group in (failures or {}).values() for m in group) or base.message,
            latency=summarize(samples),
            samples_ns=samples,
            failures=failures or {},
            metrics={**base.metrics, "variant_options": options or {}, **(metrics or {})},
        )

    return build


@pytest.fixture
def render(tmp_path: Path, make_run: Callable[..., RunInfo]) -> Iterator[Render]:
    """Store results as a run records them, render its report, and read back its tables."""
    store = Store(tmp_path / "results.sqlite")

    def run(*results: JobResult) -> dict[str, list[dict[str, str]]]:
        store.start_run(make_run(RUN_ID))
        for r in results:
            store.add_result(r)
        parser = Tables()
        parser.feed(render_report(store, RUN_ID))
        return parser.sections

    yield run
    store.close()


def records(*results: JobResult) -> dict[str, dict[str, Any]]:
    return {r.job_id: r.flat() for r in results}


def test_a_faster_int8_that_fails_parity_is_not_the_variant_that_meets_the_budget(
    result: Callable[..., JobResult], render: Render
) -> None:
    fp32 = result("mnv2/litert-fp32-t4/pi5", timed(20.0))
    int8 = result("mnv2/litert-int8-t4/pi5", timed(10.0, seed=1), failures={"parity": (PARITY_FAILURE,)})
    (row,) = render(fp32, int8)["realtime"]
    assert row["fastest passing variant"] == "litert fp32, 4 threads"
    # The INT8's 10 ms would meet 60 FPS; the passing FP32's 20 ms does not.
    assert (row["30 FPS"], row["60 FPS"]) == ("yes", "no")


def test_a_device_where_no_variant_passed_says_so_instead_of_missing_from_the_table(
    result: Callable[..., JobResult], render: Render
) -> None:
    failing = result("mnv2/litert-int8-t4/pi5", timed(10.0), failures={"parity": (PARITY_FAILURE,)})
    passing = result("mnv2/openvino-fp32-t2/nuc", timed(20.0, seed=1))
    rows = {r["device"]: r for r in render(failing, passing)["realtime"]}
    assert rows["pi5"]["fastest passing variant"].startswith("no variant passed its checks")
    assert (rows["pi5"]["30 FPS"], rows["pi5"]["60 FPS"]) == ("no", "no")
    assert rows["nuc"]["fastest passing variant"] == "openvino fp32, 2 threads"


def test_each_input_size_gets_its_own_answer(result: Callable[..., JobResult], render: Render) -> None:
    full = result("mnv2/openvino-fp32-t2/nuc", timed(20.0))
    small = result("mnv2/openvino-fp32-160px-t2/nuc", timed(10.0, seed=1))
    rows = render(full, small)["realtime"]
    answers = {r["input"]: (r["fastest passing variant"], r["30 FPS"], r["60 FPS"]) for r in rows}
    # The 160 px variant's 10 ms does not answer for the 224 px model.
    assert answers == {
        "3x224x224": ("openvino fp32, 2 threads", "yes", "no"),
        "3x160x160": ("openvino fp32, 2 threads", "yes", "yes"),
    }


def test_a_budget_is_met_when_any_passing_variants_interval_fits(
    result: Callable[..., JobResult], render: Render
) -> None:
    # 400 calls with four slow ones: the lowest point P99, but an interval that reaches the slow calls.
    spiky = np.random.default_rng(2).permutation(np.concatenate([timed(14.0, 396, seed=2), timed(30.0, 4, seed=3)]))
    low_point = result("mnv2/onnxruntime-fp32-t1/nuc", spiky)
    steady = result("mnv2/onnxruntime-fp32-t2/nuc", timed(15.5, seed=4))
    got = records(low_point, steady)
    a, b = got[low_point.job_id], got[steady.job_id]
    assert a["valid"] and a["p99_ms"] < b["p99_ms"] < 1000 / 60 < a["p99_ci_ms"][1]
    assert b["p99_ci_ms"][1] < 1000 / 60
    (row,) = render(low_point, steady)["realtime"]
    assert row["fastest passing variant"] == "onnxruntime fp32, 2 threads"
    assert row["P99 ms"] == f"{b['p99_ms']:.1f} up to {b['p99_ci_ms'][1]:.1f}"
    assert (row["30 FPS"], row["60 FPS"]) == ("yes", "yes")


def speedups(sections: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    return {r["job"]: r["speed-up"] for r in sections["precision"]}


def test_an_edge_tpu_int8_is_compared_with_litert_fp32_on_the_same_device(
    result: Callable[..., JobResult], render: Render
) -> None:
    litert = result("mnv2/litert-fp32-t4/coral", timed(40.0), options={"xnnpack": True})
    tpu = result("mnv2/edgetpu-int8-t4/coral", timed(5.0, seed=1), options={"num_segments": 1})
    other_device = result("mnv2/litert-fp32-t4/pi5", timed(20.0, seed=2), options={"xnnpack": True})
    got = records(litert, tpu)
    expected = got[litert.job_id]["p50_ms"] / got[tpu.job_id]["p50_ms"]
    shown = speedups(render(litert, tpu, other_device))
    assert shown[tpu.job_id] == f"{expected:.2f}x" and abs(expected - 8) < 0.05


def test_int8_is_compared_with_fp32_at_its_own_thread_count(result: Callable[..., JobResult], render: Render) -> None:
    # FP32 at 4 threads is recorded last: it must not stand in for the 1-thread reference.
    fp32_t1 = result("mnv2/onnxruntime-fp32-t1/nuc", timed(8.0))
    fp32_t4 = result("mnv2/onnxruntime-fp32-t4/nuc", timed(3.0, seed=1))
    int8_t1 = result("mnv2/onnxruntime-int8-t1/nuc", timed(4.0, seed=2))
    int8_t4 = result("mnv2/onnxruntime-int8-t4/nuc", timed(1.5, seed=3))
    got = records(fp32_t1, fp32_t4, int8_t1, int8_t4)
    shown = speedups(render(fp32_t1, fp32_t4, int8_t1, int8_t4))
    for int8, fp32 in ((int8_t1, fp32_t1), (int8_t4, fp32_t4)):
        expected = got[fp32.job_id]["p50_ms"] / got[int8.job_id]["p50_ms"]
        assert shown[int8.job_id] == f"{expected:.2f}x" and abs(expected - 2) < 0.05, int8.job_id


def test_a_variant_whose_options_differ_from_every_fp32_shows_no_speed_up(
    result: Callable[..., JobResult], render: Render
) -> None:
    fp32 = result("mnv2/openvino-fp32-t2/nuc", timed(8.0), options={"num_streams": 1})
    int8 = result("mnv2/openvino-int8-t2-num_streams=2/nuc", timed(4.0, seed=1), options={"num_streams": 2})
    assert speedups(render(fp32, int8))[int8.job_id] == "-"


def reading(celsius: dict[str, float], mhz: list[float], **more: Any) -> dict[str, Any]:
    """One sampler reading as the runner records it (``harness.agent.thermal.reading``)."""
    return {"t_s": 0.0, "temperatures_c": celsius, "cpu_freq_mhz": mhz, **more}


def measured(facts: dict[str, Any], threads: int = 4) -> dict[str, Any]:
    """The metrics the pipeline derives from a runner's facts: throttle verdict, CPUs used, affinity."""
    metrics = throttle_metrics({}, [assess_runs(facts)])
    parallelism = cpu_parallelism([facts, *facts.get("repeat_facts", [])])
    if parallelism is not None:
        metrics["cpu_parallelism"] = parallelism
    provenance = provenance_metrics(Variant("onnxruntime", threads=threads), {}, facts, metrics)
    return {**metrics, "cpu_affinity": provenance["cpu_affinity"]}


def quality(sections: dict[str, list[dict[str, str]]]) -> dict[str, dict[str, str]]:
    return {r["job"]: r for r in sections["quality"]}


TRUST_COLUMNS = ("temperature °C", "clock MHz", "CPUs used", "CPU quota", "P50 vs earlier runs")


def test_the_trust_table_shows_temperatures_clocks_and_the_cpus_the_threads_had(
    result: Callable[..., JobResult], render: Render
) -> None:
    four = [2400.0] * 4
    facts: dict[str, Any] = {
        "thermal": {
            "before": reading({"cpu_thermal": 41.2, "gpu_thermal": 39.6}, four),
            "during": [
                reading({"cpu_thermal": 45.0, "gpu_thermal": 40.1}, four, foreign_cpu=0.01),
                reading({"cpu_thermal": 47.4, "gpu_thermal": 40.8}, [2400.0, 2112.0, 2400.0, 2400.0], foreign_cpu=0.02),
            ],
            "after": reading({"cpu_thermal": 44.1, "gpu_thermal": 40.2}, four),
        },
        # Four threads that ran like two: the loop's process CPU time is twice its wall time.
        "loop_cpu_s": 3.86,
        "loop_wall_s": 2.0,
        "cpu_affinity": [0, 1, 2, 3],
    }
    hot = result("mnv2/onnxruntime-fp32-t4/pi5", timed(10.0), metrics=measured(facts))
    row = quality(render(hot))[hot.job_id]
    # The zone that rose most (cpu, 6.2 C; gpu rose 1.2 C): first reading -> hottest -> after.
    assert row["temperature °C"] == "41 \u2192 47 \u2192 44 cpu_thermal (rose most of 2)"
    # CPU1 fell from 2400 to 2112 MHz while the loop ran: 12%, past the 10% limit, so also a reason.
    assert row["clock MHz"] == "2400 \u2192 2400 4 CPUs, fell 12% during, lowest 2112"
    assert "CPU1 clock fell 12% during the run" in row["verdict"]
    assert row["CPUs used"] == "1.93 of 4 allowed"
    assert row["CPU quota"] == "-"


def test_a_cpu_quota_says_how_often_it_stalled_the_loop(result: Callable[..., JobResult], render: Render) -> None:
    def limited(cpus: float, periods: int, stalled: int, seconds: float) -> dict[str, Any]:
        group = {"group": "/docker/abc", "quota_cpus": cpus, "periods": periods}
        return {"cpu_quota": [{**group, "throttled_periods": stalled, "throttled_s": seconds}]}

    stalled = result("mnv2/onnxruntime-fp32-t2/ci", timed(10.0), metrics=measured(limited(1.5, 120, 37, 0.42)))
    roomy = result("mnv2/onnxruntime-fp32-t1/ci", timed(12.0, seed=1), metrics=measured(limited(2.0, 80, 0, 0.0)))
    # A job in three runner processes, two of them stalled: each run's count, by run.
    runs = {**limited(1.0, 100, 9, 0.1), "repeat_facts": [limited(1.0, 90, 0, 0.0), limited(1.0, 110, 4, 0.05)]}
    repeated = result("mnv2/onnxruntime-int8-t2/ci", timed(6.0, seed=2), metrics=measured(runs))
    rows = quality(render(stalled, roomy, repeated))
    assert rows[stalled.job_id]["CPU quota"] == "1.5 CPUs stalled 37 of 120 periods (31%)"
    assert rows[stalled.job_id]["verdict"].startswith("unstable CPU quota: control group /docker/abc")
    assert rows[roomy.job_id]["CPU quota"] == "2 CPUs never stalled the loop"
    assert rows[repeated.job_id]["CPU quota"] == "1 CPU stalled 9 of 100, 4 of 110 periods in 2 runs"


def test_a_result_without_readings_shows_a_dash(result: Callable[..., JobResult], render: Render) -> None:
    # A VM as the embedded default lab runs on: no thermal zones, no cpufreq files, no cgroup quota.
    empty = reading({}, [])
    vm: dict[str, Any] = {"thermal": {"before": empty, "during": [{**empty, "foreign_cpu": 0.0}], "after": empty}}
    on_vm = result("mnv2/onnxruntime-fp32-t1/vm", timed(10.0), metrics=measured(vm))
    # An older result that recorded none of these metrics.
    older = result("mnv2/onnxruntime-fp32-t2/vm", timed(8.0, seed=1))
    rows = quality(render(on_vm, older))
    for job in (on_vm.job_id, older.job_id):
        assert [rows[job][column] for column in TRUST_COLUMNS] == ["-"] * 5, job


def test_the_trust_table_shows_the_p50_against_the_same_artifacts_earlier_runs(
    result: Callable[..., JobResult], render: Render
) -> None:
    def compared(job: JobResult, p50s: tuple[float, ...]) -> JobResult:
        earlier = [{**job.flat(), "run_id": f"night{i:04d}", "p50_ms": p50} for i, p50 in enumerate(p50s)]
        metrics = {**job.metrics, **history_metrics(job.flat(), earlier)}
        return dataclasses.replace(job, metrics=metrics)

    slow = compared(result("mnv2/onnxruntime-fp32-t2/nuc", timed(15.0)), (10.0, 10.2, 9.9, 10.1))
    usual = compared(result("mnv2/onnxruntime-fp32-t1/nuc", timed(12.0, seed=1)), (12.1, 11.8, 12.0))
    young = compared(result("mnv2/onnxruntime-int8-t2/nuc", timed(6.0, seed=2)), (6.0,))
    rows = quality(render(slow, usual, young))
    assert rows[slow.job_id]["P50 vs earlier runs"] == "1.49x of the last 4 runs' median"
    assert "the same artifact's last 4 runs on this device" in rows[slow.job_id]["verdict"]
    assert rows[usual.job_id]["P50 vs earlier runs"] == "1.00x of the last 3 runs' median"
    assert rows[young.job_id]["P50 vs earlier runs"] == "- 1 earlier run, 3 needed"


def predictions(labels: np.ndarray, wrong: range, classes: int = 10) -> np.ndarray:
    """One-hot logits that name the right class, except for the ``wrong`` inputs (the next class)."""
    predicted = labels.copy()
    predicted[list(wrong)] = (labels[list(wrong)] + 1) % classes
    logits: np.ndarray = np.eye(classes, dtype=np.float32)[predicted]
    return logits


SHADOW_LABELS = np.random.default_rng(7).integers(0, 10, 400)


def shadow_pair(
    result: Callable[..., JobResult], budgets: Budgets | None = None
) -> tuple[JobResult, JobResult, dict[str, Any], tuple[str, ...]]:
    """A production model at 10 ms and a candidate at 8 ms, the shadow comparison of their outputs and
    its failures under ``budgets``.

    Production is wrong on inputs 0-39, the candidate on 30-57: both wrong (alike) on 30-39.
    """
    labels = SHADOW_LABELS
    old, new = predictions(labels, range(40)), predictions(labels, range(30, 58))
    production = result("mnv2/onnxruntime-fp32-t2/nuc", timed(10.0))
    candidate = result("mnv2-next/onnxruntime-fp32-t2/nuc", timed(8.0, seed=1))
    assert production.latency is not None and candidate.latency is not None
    shadow, failures = production_checks(new, old, labels, candidate.latency, production.latency, budgets)
    return production, candidate, shadow, failures


def test_a_candidate_is_shown_against_the_production_model_it_would_replace(
    result: Callable[..., JobResult], render: Render
) -> None:
    production, candidate, shadow, failures = shadow_pair(result)
    assert failures == ()
    # As the pipeline records it (Pipeline._production): the parity fields, then the shadow comparison.
    new = predictions(SHADOW_LABELS, range(30, 58))
    parity, _ = parity_checks(new, new, None, SHADOW_LABELS, Budgets())
    candidate = replace(candidate, metrics={**candidate.metrics, **parity, "production_model": "mnv2", **shadow})
    sections = render(production, candidate)
    (row,) = sections["production"]
    assert row["job"] == candidate.job_id
    assert (row["candidate"], row["device"], row["variant"]) == ("mnv2-next", "nuc", "onnxruntime fp32, 2 threads")
    assert row["production model"] == "mnv2"
    # 342 both right + 10 both wrong alike of 400 agree; 372 vs 360 right is +3.00 pp.
    assert row["top-1 agreement"] == "88.0%"
    assert row["top-1 candidate / production"] == "93.0% / 90.0%"
    low, high = shadow["production_acc_delta_ci_pp"]
    assert low < 3.0 < high
    assert row["accuracy delta"] == f"+3.00 pp {low:+.2f}..{high:+.2f}"
    p50, p99, ratio = (shadow[f"production_{k}"] for k in ("p50_delta_ms", "p99_delta_ms", "p50_ratio"))
    assert abs(ratio - 0.8) < 0.01 and p50 < 0
    assert row["P50 delta ms"] == f"{p50:+.3f} {ratio:.2f}x production's"
    p99_ratio = shadow["production_p99_ratio"]
    assert row["P99 delta ms"] == f"{p99:+.3f} {p99_ratio:.2f}x production's"
    assert row["production check"] == "not gated"


def test_a_production_model_that_was_not_measured_or_a_failed_production_check_is_said_so(
    result: Callable[..., JobResult], render: Render
) -> None:
    # The production model's job was skipped (its device unreachable): Pipeline._production records only this.
    unmeasured = {"production_model": "mnv2", "production_status": "skipped"}
    alone = result("mnv2-next/onnxruntime-fp32-t2/nuc", timed(8.0), metrics=unmeasured)
    failed = result(
        "mnv2-next/onnxruntime-int8-t2/nuc",
        timed(4.0, seed=1),
        failures={"production": ("top-1 agreement with production 0.850 below 0.900",)},
        metrics={"production_model": "mnv2", "production_top1_agreement": 0.85},
    )
    rows = {r["job"]: r for r in render(alone, failed)["production"]}
    assert rows[alone.job_id]["top-1 agreement"] == rows[alone.job_id]["P50 delta ms"] == "-"
    assert rows[alone.job_id]["production check"] == "not compared the production model's job: skipped"
    assert rows[failed.job_id]["top-1 agreement"] == "85.0%"
    assert rows[failed.job_id]["production check"] == "fails top-1 agreement with production 0.850 below 0.900"


def test_a_candidate_within_its_production_budgets_passes(
    result: Callable[..., JobResult], render: Render
) -> None:
    # 3 pp more accurate and 0.8x the P99: within both budgets.
    production, gated, shadow, failures = shadow_pair(
        result, Budgets(production_top1_drop_pp=0.5, production_p99_ratio=1.0)
    )
    assert failures == ()
    assert shadow["production_gated"] == ["production_top1_drop_pp", "production_p99_ratio"]
    gated = replace(gated, metrics={**gated.metrics, "production_model": "mnv2", **shadow})
    (row,) = render(production, gated)["production"]
    assert row["production check"] == "passes"


def test_a_candidate_over_its_production_budget_fails_with_the_checks_message(
    result: Callable[..., JobResult], render: Render
) -> None:
    # Asked to be twice as fast as production, a candidate at 0.8x fails.
    production, failing, shadow, failures = shadow_pair(result, Budgets(production_p99_ratio=0.5))
    (message,) = failures
    failing = replace(
        failing, metrics={**failing.metrics, "production_model": "mnv2", **shadow}, failures={"production": failures}
    )
    (row,) = render(production, failing)["production"]
    assert row["production check"] == f"fails {message}"
    assert message.endswith("over budget production_p99_ratio 0.5x")


def test_a_run_without_a_production_model_has_no_production_section(
    result: Callable[..., JobResult], render: Render
) -> None:
    fp32 = result("mnv2/litert-fp32-t4/pi5", timed(20.0))
    int8 = result("mnv2/litert-int8-t4/pi5", timed(10.0, seed=1))
    sections = render(fp32, int8)
    assert "precision" in sections and "quality" in sections
    assert "production" not in sections


def test_interleaved_variants_that_differ_in_threads_or_input_size_are_told_apart(
    result: Callable[..., JobResult], render: Render
) -> None:
    """An --all-sizes or several-thread-count comparison: every row names what its variant is."""
    aa = {"ratio": 1.004, "ok": True, "tolerance": 0.01}
    compared = [
        replace(
            result(job_id, timed(ms, seed=seed)),
            kind="interleaved",
            metrics={"variant_options": {}, "interleave_mode": "in_process", "aa_check": aa},
        )
        for seed, (job_id, ms) in enumerate(
            [
                ("mnv2/openvino-fp32-t1/nuc", 20.0),
                ("mnv2/openvino-fp32-t2/nuc", 12.0),
                ("mnv2/openvino-fp32-160px-t1/nuc", 10.0),
                ("mnv2/openvino-fp32-160px-t2/nuc", 6.0),
            ]
        )
    ]
    rows = render(*compared)["interleaved"]
    shown = {r["job"]: (r["variant"], r["input"]) for r in rows}
    assert shown == {
        "mnv2/openvino-fp32-t1/nuc": ("openvino fp32, 1 thread", "3x224x224"),
        "mnv2/openvino-fp32-t2/nuc": ("openvino fp32, 2 threads", "3x224x224"),
        "mnv2/openvino-fp32-160px-t1/nuc": ("openvino fp32, 1 thread", "3x160x160"),
        "mnv2/openvino-fp32-160px-t2/nuc": ("openvino fp32, 2 threads", "3x160x160"),
    }
    assert len({(r["variant"], r["input"]) for r in rows}) == len(rows)
