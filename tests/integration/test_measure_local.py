"""Measurement you can trust, end to end on a local device: thermals, pinning, batch, interleaving, capacity.

The tiny ONNX model runs in the real runner subprocess (devices as in tests/conftest.py's local lab),
so what is checked is what a user's results say. Nothing here asserts a speed: the machine is shared,
and speed targets live in benchmarks/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import harness.scenarios as scenarios
from harness.catalog import load_catalog
from harness.cli import main
from harness.lab.inventory import load_lab
from harness.pipeline import MeasureSettings, Pipeline
from harness.records import Job, Variant
from harness.scenarios import run_capacity, run_interleaved
from harness.store import Store

pytestmark = [pytest.mark.slow]

FAST = MeasureSettings(
    iterations=400, warmup_max_iterations=100, throttle_retries=0, calibration_reps=3, thermal_interval_s=0.05
)


def make_pipeline(env: Path, catalog: Path, lab: Path, settings: MeasureSettings = FAST) -> Pipeline:
    return Pipeline(load_lab(lab), load_catalog(catalog), Store(env / "results.sqlite"), settings=settings)


def json_results(env: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["results", "--db", str(env / "results.sqlite"), "--format", "json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_a_latency_result_reports_thermals_throttling_and_where_it_ran(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, FAST)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()
    assert result.status == "passed", result.message
    # The runner timed a calibration workload around the loop and sampled the machine during it.
    calibration = result.facts["calibration"]
    assert calibration["iterations"] > 0
    assert len(calibration["before_ns"]) == len(calibration["after_ns"]) == 3
    assert result.facts["thermal"]["during"], "the sampler thread took readings while the loop ran"
    assert result.facts["cpu_affinity"], "the CPUs the runner was allowed on are recorded"

    row = json_results(edgebench_env, capsys)[0]
    for key in ("stop_reason", "warmup_iterations", "cv", "unstable_reasons", "throttled", "throttle_reasons"):
        assert key in row, key
    assert row["stop_reason"] == "fixed_count"
    assert isinstance(row["throttled"], bool)
    assert set(row["thermal"]) >= {"before", "after", "max"}
    assert isinstance(row["calibration_slowdown"], float)


def test_pinning_and_batch_reach_the_runner(edgebench_env: Path, tiny_catalog: Path, local_lab: Path) -> None:
    import os

    cpu = min(os.sched_getaffinity(0))
    settings = MeasureSettings(iterations=400, warmup_max_iterations=40, throttle_retries=0, cpus=(cpu,), batch=4)
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, settings)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()
    assert result.status == "passed", result.message
    assert result.facts["cpu_affinity"] == [cpu]
    assert result.facts["pinning"] in ("sched_setaffinity", "inherited")
    assert result.metrics["batch"] == 4


def two_variants(pipeline: Pipeline) -> list[Job]:
    model, device = pipeline.models[0], pipeline.lab.devices[0]
    return [Job(model, Variant("onnxruntime", "fp32", threads=t), device) for t in (1, 2)]


def test_interleaved_variants_carry_the_aa_check_beside_their_results(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scenarios, "AA_TOLERANCE", 10.0)  # any ratio passes: the in-process numbers are kept
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab)
    jobs = two_variants(pipeline)
    outcome = run_interleaved(pipeline, jobs, block=10, seed=1)
    pipeline.finish()
    assert outcome.mode == "in_process"
    assert outcome.aa is not None and outcome.aa["ok"] is True and outcome.aa["ratio"] > 0
    results = outcome.by_job()
    assert set(results) == {j.id for j in jobs}
    for job in jobs:
        r = results[job.id]
        assert r.kind == "interleaved"
        assert r.latency is not None and r.latency.n == 400
        flat = r.flat()
        assert flat["interleave_mode"] == "in_process"
        assert flat["aa_check"] == outcome.aa
        assert flat["interleaved_with"] == [j.id for j in jobs if j is not job]
    stored = pipeline.store.results(pipeline.run_id)
    assert [r["kind"] for r in stored] == ["interleaved", "interleaved"]


def test_a_failed_aa_check_falls_back_to_separate_processes_and_says_so(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scenarios, "AA_TOLERANCE", -1.0)  # no ratio is within a negative tolerance: it fails
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab)
    outcome = run_interleaved(pipeline, two_variants(pipeline), block=10, seed=1)
    pipeline.finish()
    assert outcome.mode == "separate_processes"
    assert outcome.aa is not None and outcome.aa["ok"] is False
    for r in outcome.results:
        flat = r.flat()
        assert flat["interleave_mode"] == "separate_processes"
        assert flat["processes"] == 2
        assert r.latency is not None and r.latency.n == 800  # two processes' samples pooled
        assert flat["unstable"] is True
        assert any("A/A self-check failed" in reason for reason in flat["unstable_reasons"])


def test_capacity_finds_the_streams_a_device_serves_and_keeps_every_step(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab)
    model, device = pipeline.models[0], pipeline.lab.devices[0]
    job = Job(model, Variant("onnxruntime", "fp32", threads=1), device, "capacity")
    # 10 FPS leaves 100 ms per frame: the tiny model serves both streams the search may try.
    result, answers = run_capacity(pipeline, job, fps=(10.0, 100_000.0), max_streams=2, min_samples=20, min_step_s=0.5)
    pipeline.finish()
    relaxed, impossible = answers
    assert relaxed.streams == 2 and relaxed.capped
    # 100,000 FPS leaves 10 us per frame, less than one call costs: not even one stream.
    assert impossible.streams == 0 and not impossible.capped
    assert impossible.steps[0].passed is False
    assert "streams at 10 FPS" in result.message

    row = json_results(edgebench_env, capsys)[-1]
    assert row["kind"] == "capacity"
    assert row["streams_at_10fps"] == 2
    assert row["streams_at_100000fps"] == 0
    table = row["capacity_steps"]
    assert {(s["fps"], s["streams"]) for s in table} == {(10.0, 1), (10.0, 2), (100000.0, 1)}
    assert all({"p99_ms", "valid", "passed"} <= set(s) for s in table)


def test_the_capacity_command_prints_streams_per_device(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import app
    from harness.cli.capacity import register

    if not any(getattr(c, "name", None) == "capacity" for c in app.registered_commands):
        register(app)
    db = edgebench_env / "cap.sqlite"
    argv = ["capacity", "--lab", str(local_lab), "--catalog", str(tiny_catalog), "--db", str(db)]
    code = main([*argv, "--fps", "200", "--max-streams", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "streams @ 200 FPS" in out and "tiny-cnn" in out
    assert main(["results", "--db", str(db), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["kind"] == "capacity" and isinstance(row["streams_at_200fps"], int)
