"""The report's two answers a product manager acts on, rendered from stored records: which variant meets the
frame budget, and what INT8 buys over its FP32 reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.measure.stats import summarize
from harness.records import JobResult
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
            metrics={**base.metrics, "variant_options": options or {}},
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
