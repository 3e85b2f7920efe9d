"""Fidelity: the harness's P50 against a bare in-process loop over the same ONNX Runtime session.

The harness runs the model through the real runner subprocess (local transport, job spec, io_binding,
warm-up, adaptive stop); the bare loop is pytest-benchmark timing ``session.run`` in this process
with the same threads and graph options. Rounds alternate so machine drift hits both alike.
Target (issue [spine]): the medians agree within 3%.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.conftest import save_numbers
from harness.build.data import latency_file, normalise
from harness.catalog import load_catalog
from harness.lab.inventory import Device, Lab
from harness.pipeline import MeasureSettings, Pipeline
from harness.store import Store

THREADS = 2
ROUNDS = 3


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _bare_p50_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], n: int) -> float:
    import time

    for _ in range(50):
        session.run(None, feed)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)) / 1e6


@pytest.mark.parametrize("model", ["mobilenetv2-style"])
def test_harness_p50_matches_a_bare_loop(benchmark: Any, tmp_path: Path, model: str) -> None:
    entry = load_catalog(Path("models"), model)[0]
    lab = Lab(
        name="fidelity", devices=(Device(name="local", platform="generic-linux", transport="local", threads=THREADS),)
    )
    store = Store(tmp_path / "fidelity.sqlite")
    settings = MeasureSettings(min_iterations=400, min_duration_s=3.0, max_duration_s=10.0)
    pipeline = Pipeline(lab, [entry], store, settings=settings)
    job = pipeline.plan()[0]
    onnx = pipeline.reference(job)
    session = _session(onnx.path)
    with np.load(latency_file(entry, job.input_shape).path) as data:
        feed = {onnx.input_name: normalise(data["latency"], entry)}

    harness_p50, bare_p50 = [], []
    for _ in range(ROUNDS):
        result = pipeline.run_job(job)
        assert result.latency is not None, result.message
        harness_p50.append(result.latency.p50.value_ms)
        bare_p50.append(_bare_p50_ms(session, feed, n=result.latency.n // 2 or 400))
    # pytest-benchmark's own timing of the bare call, for its table and compare tooling.
    benchmark.pedantic(session.run, args=(None, feed), rounds=300, warmup_rounds=30, iterations=1)
    pipeline.finish()

    h, b = statistics.median(harness_p50), statistics.median(bare_p50)
    diff = h / b - 1.0
    save_numbers(
        f"fidelity-{model}",
        {
            "model": model,
            "threads": THREADS,
            "harness_p50_ms": harness_p50,
            "bare_loop_p50_ms": bare_p50,
            "pytest_benchmark_median_ms": benchmark.stats.stats.median * 1e3,
            "median_relative_difference": diff,
        },
    )
    assert abs(diff) <= 0.03, f"harness P50 {h:.3f} ms vs bare loop {b:.3f} ms: {diff:+.1%}"
