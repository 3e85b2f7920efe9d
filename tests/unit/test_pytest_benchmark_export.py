"""Device results exported in pytest-benchmark's JSON format, read back by its own compare tool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.records import JobResult
from harness.report.pytest_benchmark import export_run
from harness.store import RunInfo, Store

RUN = "pb0000000001"
FP32 = "tiny-cnn/onnxruntime-fp32-t1/local"
FP32_T2 = "tiny-cnn/onnxruntime-fp32-t2/local"  # differs only in threads


def compare(path: Path) -> str:
    """``pytest-benchmark compare FILE``, the tool a user would point at the export."""
    code = "import sys; from pytest_benchmark.cli import main; sys.argv[0] = 'pytest-benchmark'; main()"
    argv = [sys.executable, "-c", code, "compare", str(path), "--columns=median", "--sort=name"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_each_timed_result_is_one_benchmark_that_pytest_benchmark_compare_reads(
    tmp_path: Path, make_result: Callable[..., JobResult], make_run: Callable[..., RunInfo]
) -> None:
    store = Store(tmp_path / "results.sqlite")
    store.start_run(make_run(RUN))
    fp32 = make_result(RUN, FP32, n=800, seed=1)
    store.add_result(fp32)
    store.add_result(make_result(RUN, FP32_T2, n=600, seed=2))
    # The same job id again as a robustness job (its eval loop's timings) and an interleaved result.
    store.add_result(replace(make_result(RUN, FP32, n=50, seed=3), kind="robustness"))
    slower = replace(make_result(RUN, FP32, n=900, seed=4), kind="interleaved")
    assert slower.samples_ns is not None
    slower = replace(slower, samples_ns=slower.samples_ns * 2)
    store.add_result(slower)
    store.finish_run(RUN, "2026-11-24T10:01:00.000+00:00", "passed")
    document: dict[str, Any] = export_run(store, RUN)
    store.close()

    by_name = {b["name"]: b for b in document["benchmarks"]}
    assert sorted(by_name) == [
        "tiny-cnn[onnxruntime-fp32-t1-3x16x16@local interleaved]",
        "tiny-cnn[onnxruntime-fp32-t1-3x16x16@local]",
        "tiny-cnn[onnxruntime-fp32-t2-3x16x16@local]",
    ], "robustness timings stay out; the interleaved result and the thread counts are told apart"
    latency = by_name["tiny-cnn[onnxruntime-fp32-t1-3x16x16@local]"]
    assert latency["stats"]["rounds"] == 800, "each result carries its own samples"
    assert by_name["tiny-cnn[onnxruntime-fp32-t1-3x16x16@local interleaved]"]["stats"]["rounds"] == 900
    assert fp32.latency is not None
    assert latency["extra_info"]["p99_effective_n"] == fp32.latency.p99.effective_n

    path = tmp_path / "0001_edgebench.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    table = compare(path)
    unit = re.search(r"time in (ns|us|ms|s)\)", table)
    assert unit, table
    scale_to_ms = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit.group(1)]
    medians_ms = {
        m.group(1): float(m.group(2).replace(",", "")) * scale_to_ms
        for m in re.finditer(r"^(tiny-cnn\[[^\]]+\])\s+\(\w+\)\s+([0-9,.]+)", table, flags=re.MULTILINE)
    }
    assert set(medians_ms) == set(by_name), table
    # compare reads the medians measured: the stored P50 (the median of the same samples), within 1 us.
    p50 = fp32.latency.p50.value_ms
    assert abs(medians_ms["tiny-cnn[onnxruntime-fp32-t1-3x16x16@local]"] - p50) < 1e-3
    assert medians_ms["tiny-cnn[onnxruntime-fp32-t1-3x16x16@local interleaved]"] > 1.9 * p50
