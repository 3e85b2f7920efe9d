"""Time to a trustworthy P99: the harness's adaptive stop rule against OpenVINO's benchmark_app.

Issue [measure]: on this machine, the time the harness takes to a VALID P99 whose 95% interval is
within 5% of the estimate, for the MobileNetV2-style model at 2 threads through OpenVINO, is at most
0.25x the time ``benchmark_app -m model.xml -d CPU -hint latency -nthreads 2`` takes with its default
duration on the same IR, and the two medians agree within 5%. (benchmark_app 2026.4 rejects that exact
line, so it runs as ``-hint none -nstreams 1 -nireq 1 -nthreads 2``, the same settings spelled out.)

The harness is asked exactly that: its stop rule pins P99 alone (``--stop-on p99``), with the burst
correction. P50 and P95 are still reported, each with its own interval, and the P50 is what the
medians check compares. Both sides are timed as a user waits for them: the harness from
``Pipeline.run_job`` to the recorded result (runner start, model load, warm-up, the adaptive loop,
the eval pass, host statistics; the IR is compiled and deployed before, as benchmark_app is given a
ready IR), benchmark_app from process start to exit. benchmark_app runs with ``-infer_precision
f32`` because the harness's FP32 variant does (INFERENCE_PRECISION_HINT=f32; without it the CPU
plugin runs FP32 in bf16 on AMX CPUs, and the medians would compare two different computations).
The rounds alternate so drift hits both sides.

Each harness run also gets a bound: the first prefix of its own samples (in the order measured) at
which every requested percentile's interval would have been within 5% had each call counted as an
independent one, and the job's wall time had it stopped there. No rule built on these order-statistic
intervals can stop earlier on those samples, so when the bound itself is over 0.25x, the machine's tail
that minute, not the burst correction, is what missed the target.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import save_numbers
from harness.catalog import load_catalog
from harness.lab.inventory import Device, Lab
from harness.measure.stability import StopRule, stop_decision
from harness.measure.stats import REPORTED_PERCENTILES, half_width_ratio
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import Job, JobResult, Variant
from harness.store import Store

THREADS = 2
# benchmark_app 2026.4 refuses -nthreads beside -hint latency ("fine tune options ... set -hint none");
# what the latency hint does, spelled out: one stream, one request in flight, here with 2 threads.
LATENCY_AT_2_THREADS = ["-hint", "none", "-nstreams", "1", "-nireq", "1", "-nthreads", str(THREADS)]
HARNESS_ROUNDS = 3
# Throttle retries would add cool-down pauses to the time measured; their verdict is still recorded.
# The question is how long the stop rule takes to converge, so the cap is benchmark_app's own 60 s,
# not the main job's short default. The rule asks for what the issue measures, a P99 within 5%
# (`--stop-on p99`); the default rule pins P50 and P95 as well, and on this VM P95's bursts often
# decide when that one stops (README).
SETTINGS = MeasureSettings(throttle_retries=0, max_duration_s=60.0, stop_on=("p99",))


def _find_benchmark_app() -> str:
    """benchmark_app beside this interpreter (an unactivated venv) or on PATH."""
    beside = Path(sys.executable).parent / "benchmark_app"
    exe = str(beside) if beside.is_file() else shutil.which("benchmark_app")
    if exe is None:
        pytest.skip("benchmark_app is not installed (it ships with the openvino pip package)")
    return exe


def _benchmark_app(exe: str, xml: Path, shape: tuple[int, ...]) -> tuple[float, float, str]:
    """(wall seconds, median latency ms, the command) of one benchmark_app run with its default duration."""
    # The IR's batch is dynamic; the runner reshapes it to the latency input's batch of 1, so does this.
    argv = [exe, "-m", str(xml), "-d", "CPU", *LATENCY_AT_2_THREADS, "-infer_precision", "f32"]
    argv += ["-shape", "[" + ",".join(map(str, shape)) + "]"]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = re.search(r"Latency:\s*\n(?:.*\n)*?\s*.*Median:\s*([0-9.]+)\s*ms", proc.stdout)
    assert found, f"no median latency in benchmark_app's output:\n{proc.stdout[-2000:]}"
    return wall, float(found.group(1)), " ".join(["benchmark_app", *argv[1:]])


def _independent_call_stop(samples_ns: npt.NDArray[np.generic], rule: StopRule) -> tuple[int, float] | None:
    """(calls, seconds of inference) of the shortest prefix a rule trusting every call would stop at.

    The host's reference stop check with ``dependence=False``, on each prefix in steps of 5 calls,
    its clock the prefix's own inference time. None when even the whole run is not enough.
    """
    elapsed = np.cumsum(np.asarray(samples_ns, dtype=np.float64)) / 1e9
    for n in range(max(rule.min_iterations, 1), len(samples_ns) + 1, 5):
        if stop_decision(samples_ns[:n], float(elapsed[n - 1]), rule, dependence=False) == "converged":
            return n, float(elapsed[n - 1])
    return None


def test_time_to_a_valid_p99_vs_benchmark_app(benchmark: Any, tmp_path: Path) -> None:
    exe = _find_benchmark_app()
    entry = load_catalog(Path("models"), "mobilenetv2-style")[0]
    device = Device(name="local", platform="generic-linux", transport="local", threads=THREADS)
    lab = Lab(name="stopping", devices=(device,))
    pipeline = Pipeline(lab, [entry], Store(tmp_path / "stopping.sqlite"), settings=SETTINGS)
    job = Job(entry, Variant("openvino", "fp32", threads=THREADS), device)
    artifact, _ = pipeline.compile(job)
    ir = tmp_path / "ir"
    with zipfile.ZipFile(artifact) as zf:
        zf.extractall(ir)
    pipeline.run_job(job)  # deploys the IR and the data, computes the host reference: not part of the timing

    runs: list[tuple[float, JobResult]] = []

    def harness_run() -> None:
        started = time.monotonic()
        result = pipeline.run_job(job)
        runs.append((time.monotonic() - started, result))

    app_runs = []
    # harness, benchmark_app, harness, harness: drift lands on both sides.
    harness_run()
    app_runs.append(_benchmark_app(exe, ir / "model.xml", job.input_shape))
    benchmark.pedantic(harness_run, rounds=HARNESS_ROUNDS - 1, iterations=1)
    pipeline.finish()

    app_wall, app_median, command = app_runs[0]
    walls = [w for w, _ in runs]
    p50s = [r.latency.p50.value_ms for _, r in runs if r.latency]
    harness_wall, harness_p50 = statistics.median(walls), statistics.median(p50s)
    ratio = harness_wall / app_wall
    median_diff = harness_p50 / app_median - 1.0
    records = [r.flat() for _, r in runs]
    rule = StopRule(
        percentiles=tuple(REPORTED_PERCENTILES[label] for label in SETTINGS.stop_on),
        min_iterations=SETTINGS.min_iterations,
        min_duration_s=SETTINGS.min_duration_s,
        max_duration_s=SETTINGS.max_duration_s,
        max_half_width=SETTINGS.max_half_width,
    )
    # Each job's wall time outside its timed loop: runner start, load, warm-up, calibration, eval pass, host.
    outside = [wall - record["duration_s"] for wall, record in zip(walls, records, strict=True)]
    bounds = []  # (calls, job wall seconds) had the job stopped at the independent-call prefix
    for (_, result), fixed in zip(runs, outside, strict=True):
        assert result.samples_ns is not None
        stop = _independent_call_stop(result.samples_ns, rule)
        bounds.append(None if stop is None else (stop[0], fixed + stop[1]))
    bound_walls = [b[1] if b else float("inf") for b in bounds]
    bound_ratio = statistics.median(bound_walls) / app_wall
    save_numbers(
        "stopping-mobilenetv2-style",
        {
            "model": "mobilenetv2-style",
            "variant": job.variant.id,
            "harness_wall_s": walls,
            "harness_p50_ms": p50s,
            "harness_p99_ms": [r["p99_ms"] for r in records],
            "harness_n": [r["n"] for r in records],
            "harness_p99_effective_n": [r["p99_effective_n"] for r in records],
            "harness_unstable_reasons": [r["unstable_reasons"] for r in records],
            "harness_stop_reason": [r["stop_reason"] for r in records],
            "harness_loop_s": [r["duration_s"] for r in records],
            "harness_outside_loop_s": outside,
            "harness_warmup_iterations": [r["warmup_iterations"] for r in records],
            "harness_throttled": [r["throttled"] for r in records],
            "harness_competing_load": [r["competing_load"] for r in records],
            "harness_foreign_cpu": [r["foreign_cpu"] for r in records],
            "harness_calibration_slowdown": [r["calibration_slowdown"] for r in records],
            # A job whose timed loop went at two speeds (the host sharing the CPUs at times): both, in ms.
            "harness_speeds_ms": [r.get("speeds_ms") for r in records],
            "benchmark_app_command": command,
            "benchmark_app_wall_s": app_wall,
            "benchmark_app_median_ms": app_median,
            "time_ratio": ratio,
            "independent_call_stop_n": [b[0] if b else None for b in bounds],
            "independent_call_bound_wall_s": [b[1] if b else None for b in bounds],
            "independent_call_bound_ratio": bound_ratio,
            "harness_stop_on": list(SETTINGS.stop_on),
            "harness_p50_half_width": [half_width_ratio(r.latency.p50) for _, r in runs if r.latency],
            "median_relative_difference": median_diff,
        },
    )
    assert all(r["valid"] and r["stop_reason"] == "converged" for r in records), [
        (r["stop_reason"], r["n"]) for r in records
    ]
    assert ratio <= 0.25, (
        f"harness {harness_wall:.1f} s vs benchmark_app {app_wall:.1f} s: {ratio:.2f}x "
        f"(a rule trusting every call as independent: {bound_ratio:.2f}x)"
    )
    assert abs(median_diff) <= 0.05, f"harness P50 {harness_p50:.3f} ms vs benchmark_app {app_median:.3f} ms"
