"""Measurement you can trust, end to end on a local device: thermals, pinning, batch, interleaving, capacity.

The tiny ONNX model runs in the real runner subprocess (devices as in tests/conftest.py's local lab),
so what is checked is what a user's results say. Nothing here asserts a speed: the machine is shared,
and speed targets live in benchmarks/.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

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
    assert result.facts["thermal"]["during"], "the sampler took readings between the loop's calls"
    assert result.facts["cpu_affinity"], "the CPUs the runner was allowed on are recorded"

    row = json_results(edgebench_env, capsys)[0]
    for key in ("stop_reason", "warmup_iterations", "cv", "unstable_reasons", "throttled", "throttle_reasons"):
        assert key in row, key
    assert row["stop_reason"] == "fixed_count"
    # How many independent calls each interval rests on: at most the calls timed, fewer after bursts.
    assert 1 <= row["p99_effective_n"] <= row["n"] and 1 <= row["p50_effective_n"] <= row["n"]
    assert isinstance(row["throttled"], bool)
    assert set(row["thermal"]) >= {"before", "after", "max"}
    assert isinstance(row["calibration_slowdown"], float)


def _profile_with_telemetry(directory: Path, sysfs: Path, tool: Path) -> Path:
    """A generic-linux profile whose telemetry is a fake sysfs tree and a stand-in tegrastats."""
    directory.mkdir()
    (directory / "generic-linux.yaml").write_text(
        "schema_version: 1\nname: generic-linux\nruntimes: {onnxruntime: [fp32]}\nthreads: [1]\ntelemetry:\n"
        f"  temperatures:\n    - {{kind: sysfs, label: zone, unit: C, path: '{sysfs}/thermal_zone*/temp',"
        " name_file: type, scale: 0.001}\n"
        f"  power:\n    - {{kind: command, label: rails, unit: mW, command: ['{tool}', --interval, '20'],"
        " parser: tegrastats}\n",
        encoding="utf-8",
    )
    return directory


def test_the_platform_profile_telemetry_is_sampled_and_a_hot_run_is_marked_throttled(
    edgebench_env: Path,
    tiny_catalog: Path,
    local_lab: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The runner reads the profile's readers: a sysfs zone and a stand-in for tegrastats (no Jetson here)
    whose GPU temperature climbs 1 C per line, 20 ms apart: the run ends far from thermal steady state.
    The stand-in waits 0.5 s before its first line, as tegrastats waits one interval; the "before"
    reading must still hold its sensors."""
    import sys

    zone = edgebench_env / "sysfs" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("38000\n")
    (zone / "type").write_text("board-thermal\n")
    tool = edgebench_env / "tegrastats"
    tool.write_text(
        f"#!{sys.executable}\nimport time\n"
        "time.sleep(0.5)\n"  # like tegrastats, the first line comes one interval after the start
        "for i in range(100000):\n"
        "    print('RAM 1/2MB CPU [5%%@1190,7%%@1190] GR3D_FREQ 40%%@[612] GPU@%.1fC tj@40C '\n"
        "          'VDD_IN 5000mW/5000mW VDD_CPU_GPU_CV 1800mW/1800mW' % (30.0 + i), flush=True)\n"
        "    time.sleep(0.02)\n",
        encoding="utf-8",
    )
    tool.chmod(0o755)
    profiles = _profile_with_telemetry(edgebench_env / "platforms", zone.parent, tool)
    monkeypatch.setenv("EDGEBENCH_PLATFORMS", str(profiles))
    settings = MeasureSettings(
        min_iterations=400, min_duration_s=1.0, max_duration_s=3.0, throttle_retries=0, calibration_reps=3,
        thermal_interval_s=0.1,
    )
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, settings)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()

    thermal = result.facts["thermal"]
    assert thermal["readers"] == ["zone", "rails"] and thermal["reader_errors"] == []
    assert thermal["reader_records"]["rails"] > 10
    assert thermal["before"]["temperatures_c"]["gpu"] >= 30.0
    during = thermal["during"]
    assert all(d["temperatures_c"]["board_thermal"] == 38.0 for d in during)
    assert during[-1]["temperatures_c"]["gpu"] > during[0]["temperatures_c"]["gpu"]
    assert during[-1]["cpu_freq_mhz"] == [1190.0, 1190.0] and during[-1]["clocks_mhz"]["gr3d"] == 612.0

    row = next(r for r in json_results(edgebench_env, capsys) if r["job_id"] == result.job_id)
    assert row["throttled"] is True and row["unstable"] is True
    # On a loaded machine the calibration workload may also read slower: the temperature reason must be there.
    hot = [r for r in row["throttle_reasons"] if r.startswith("gpu rose ")]
    assert hot and "not at thermal steady state" in hot[0]
    assert row["power_mw"] == {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 1800.0}
    assert row["telemetry_errors"] == []
    assert "(unstable: " in row["message"]


def _tegrastats_hot_for(directory: Path, hot_runs: int) -> tuple[Path, Path]:
    """A stand-in tegrastats (no Jetson here) whose GPU climbs 1 C per line in its first ``hot_runs``
    invocations and holds 40 C after: a board that cools down between attempts. (tool, call log)."""
    import sys

    log = directory / "tegrastats-calls"
    tool = directory / "tegrastats"
    tool.write_text(
        f"#!{sys.executable}\nimport time\n"
        f"with open({str(log)!r}, 'a+') as f:\n    f.write('x')\n    f.seek(0)\n    call = len(f.read())\n"
        f"hot = call <= {hot_runs}\n"
        "for i in range(100000):\n"
        "    gpu = 30.0 + i if hot else 40.0\n"
        "    print('RAM 1/2MB CPU [5%%@1190,7%%@1190] GR3D_FREQ 40%%@[612] GPU@%.1fC tj@40C '\n"
        "          'VDD_IN 5000mW/5000mW' % gpu, flush=True)\n"
        "    time.sleep(0.02)\n",
        encoding="utf-8",
    )
    tool.chmod(0o755)
    return tool, log


@pytest.mark.parametrize("hot_runs", [1, 99], ids=["cools-after-one-retry", "stays-hot"])
def test_a_throttled_job_is_cooled_and_retried_on_the_device_up_to_twice(
    edgebench_env: Path,
    tiny_catalog: Path,
    local_lab: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    hot_runs: int,
) -> None:
    """The real runner and pipeline: a board whose GPU heats up during the first attempt is cooled
    and measured again, and the result says why; one that stays hot is given up on after two retries
    and marked unstable. (The calibration loop may also read slow on this shared VM and add a retry
    of its own, so the checks are on the temperature reasons.)"""
    zone = edgebench_env / "sysfs" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("38000\n")
    (zone / "type").write_text("board-thermal\n")
    tool, calls = _tegrastats_hot_for(edgebench_env, hot_runs)
    profiles = _profile_with_telemetry(edgebench_env / "platforms", zone.parent, tool)
    monkeypatch.setenv("EDGEBENCH_PLATFORMS", str(profiles))
    # At least a second of timed calls per attempt, so the GPU has time to climb while it is watched.
    settings = MeasureSettings(
        min_iterations=400, min_duration_s=1.0, max_duration_s=3.0, throttle_retries=2, cooldown_s=0.0,
        calibration_reps=3, thermal_interval_s=0.1,
    )
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, settings)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()
    row = next(r for r in json_results(edgebench_env, capsys) if r["job_id"] == result.job_id)
    attempts = len(calls.read_text())
    assert row["throttle_retries"] == attempts - 1 >= 1
    assert any(r.startswith("gpu rose ") for r in row["retried_because"])
    gpu_reasons = [r for r in row["throttle_reasons"] or [] if r.startswith("gpu rose ")]
    if hot_runs == 1:
        assert gpu_reasons == [], "the cooled attempt is the one reported"
    else:
        assert attempts == 3 and row["throttled"] is True and row["unstable"] is True
        assert gpu_reasons and "not at thermal steady state" in gpu_reasons[0]
        assert any(r.startswith("throttled:") for r in row["unstable_reasons"])
        assert "(unstable: " in row["message"]


def test_a_profile_reader_that_cannot_run_is_reported_and_the_job_still_measures(
    edgebench_env: Path,
    tiny_catalog: Path,
    local_lab: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = edgebench_env / "no-such-tegrastats"
    monkeypatch.setenv(
        "EDGEBENCH_PLATFORMS",
        str(_profile_with_telemetry(edgebench_env / "platforms", edgebench_env / "no-sysfs", missing)),
    )
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, FAST)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()
    assert result.status == "passed", result.message
    row = json_results(edgebench_env, capsys)[0]
    assert row["telemetry_errors"][0] == f"zone: nothing matches {edgebench_env}/no-sysfs/thermal_zone*/temp"
    assert row["telemetry_errors"][1].startswith(f"rails: cannot start {missing}")
    assert row["power_mw"] is None


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


def test_a_repeated_job_runs_separate_processes_and_reports_a_between_run_interval(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = replace(FAST, repeats=3)
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, settings)
    result = pipeline.run_job(pipeline.plan()[0])
    pipeline.finish()
    assert result.status == "passed", result.message
    # An unstable run appends its reason after this, so the phrase is not always the message's end.
    assert "ms over 1200 iterations in 3 runs" in result.message, result.message
    # Three runner processes, each with its own calibration before and after, sampled on its own.
    runs = [result.facts, *result.facts["repeat_facts"]]
    assert len(runs) == 3 and all(len(r["calibration"]["after_ns"]) == 3 for r in runs)

    row = json_results(edgebench_env, capsys)[0]
    assert (row["repeats"], row["repeat_n"], row["n"]) == (3, [400, 400, 400], 1200)
    assert row["repeat_stop_reasons"] == ["fixed_count"] * 3 and row["stop_reason"] == "fixed_count"
    values = np.array(row["repeat_p50_ms"])
    assert row["p50_ms"] == pytest.approx(values.mean())
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert row["p50_ci_ms"] == [pytest.approx(max(low, 0.0)), pytest.approx(high)]
    assert row["repeat_p50_cv"] == pytest.approx(values.std(ddof=1) / values.mean())
    # The interval rests on three runs, not on a count of independent calls; each run's count is kept.
    assert row["p99_effective_n"] is None
    assert len(row["repeat_p99_effective_n"]) == 3 and all(1 <= n <= 400 for n in row["repeat_p99_effective_n"])
    # The eval pass ran (the first run carries it; the others are sent no eval sets): parity is there.
    assert row["top1_agreement"] is not None

    capsys.readouterr()
    assert main(["results", "--db", str(edgebench_env / "results.sqlite"), "--format", "pytest-benchmark"]) == 0
    (exported,) = json.loads(capsys.readouterr().out)["benchmarks"]
    assert exported["extra_info"]["repeats"] == 3, "pytest-benchmark compare readers see it was repeated"

    out = edgebench_env / "report.html"
    assert main(["report", "--db", str(edgebench_env / "results.sqlite"), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert '<span class="ci repeats">3 runs</span>' in html
    assert '<td class="num">3 runs</td>' in html, "the quality table says what P99's interval rests on"


def test_two_repeats_stop_the_run_before_anything_is_measured_or_stored(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = edgebench_env / "never.sqlite"
    args = ["run", "--lab", str(local_lab), "--catalog", str(tiny_catalog), "--db", str(db), "--repeats", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgebench: error: --repeats: repeats 2 cannot give a between-run interval")
    assert err.strip().endswith("fix: use 1 (one run) or 3 or more") and err.count("\n") == 1
    assert not db.exists()


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
        # What each variant ran with, as a latency result says it.
        assert flat["runtime_config"]["intra_op_threads"] == job.variant.threads
        assert flat["variant_options"] == {} and flat["cpu_affinity"]
    # One loop timed both variants, so both report the CPUs it had (the 2-thread variant's pool may
    # spin-wait while the other runs): at most the two CPUs here.
    parallelism = {results[j.id].flat()["cpu_parallelism"] for j in jobs}
    assert len(parallelism) == 1 and 0.5 < parallelism.pop() <= 2.1
    stored = pipeline.results_store().results(pipeline.run_id)
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
        # Each variant's own two processes: the 1-thread one has no pool to spin, so one CPU's worth.
        assert 0.5 < flat["cpu_parallelism"] <= (1.3 if r.job_id.endswith("-t1/local") else 2.1), r.job_id


def test_capacity_finds_the_streams_a_device_serves_and_keeps_every_step(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab)
    model, device = pipeline.models[0], pipeline.lab.devices[0]
    job = Job(model, Variant("onnxruntime", "fp32", threads=1), device, "capacity")
    # 50 FPS leaves 20 ms per frame: the tiny model serves both streams the search may try, with room
    # for a loaded machine's stalls. Each step still times the 368 frames a VALID P99 needs (7.4 s for
    # one stream), whatever min_samples says.
    result, answers = run_capacity(pipeline, job, fps=(50.0, 100_000.0), max_streams=2, min_samples=20, min_step_s=0.5)
    pipeline.finish()
    relaxed, impossible = answers
    assert relaxed.streams == 2 and relaxed.capped
    # 100,000 FPS leaves 10 us per frame, less than one call costs: not even one stream.
    assert impossible.streams == 0 and not impossible.capped
    assert impossible.steps[0].passed is False
    assert "streams at 50 FPS" in result.message

    row = json_results(edgebench_env, capsys)[-1]
    assert row["kind"] == "capacity"
    assert row["streams_at_50fps"] == 2
    assert row["streams_at_100000fps"] == 0
    table = row["capacity_steps"]
    assert {(s["fps"], s["streams"]) for s in table} == {(50.0, 1), (50.0, 2), (100000.0, 1)}
    assert all({"p99_ms", "valid", "passed"} <= set(s) for s in table)
    assert all(s["valid"] for s in table if s["fps"] == 50.0), "every step the answer rests on has a VALID P99"


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
