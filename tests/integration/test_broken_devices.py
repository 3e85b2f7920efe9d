"""A broken device is an error, never a skip or a measurement taken without its setup; a pooled
interleaved variant is judged on every process that timed it.

Real runner processes on local devices (as in tests/conftest.py's local lab), the tiny ONNX model on
ONNX Runtime; what is checked is the status and message a user's results show. No speed is asserted.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import harness.pipeline as pipeline_module
import harness.scenarios as scenarios
from harness.catalog import load_catalog
from harness.cli import main
from harness.errors import SetupFailed
from harness.lab.inventory import load_lab
from harness.pipeline import MeasureSettings, Pipeline
from harness.scenarios import run_interleaved
from harness.store import Store
from tests.integration.test_measure_local import _profile_with_telemetry, _tegrastats_hot_for, two_variants

pytestmark = [pytest.mark.slow]

FAST = MeasureSettings(iterations=400, warmup_max_iterations=40, throttle_retries=0, calibration_reps=0)


def device_yaml(name: str, cache_dir: Path, *, python: str = sys.executable, setup: list[str] | None = None) -> str:
    text = f"""\
        - name: {name}
          platform: generic-linux
          transport: local
          python: {python}
          runtimes: [onnxruntime]
          cache_dir: {cache_dir}
          threads: 1
        """
    if setup is not None:
        text += f"  setup: {json.dumps(setup)}\n"
    return textwrap.indent(textwrap.dedent(text), "  ")


def write_lab(tmp_path: Path, *devices: str, measure: str = "") -> Path:
    path = tmp_path / "lab.yaml"
    head = "schema_version: 1\nname: gaps\n" + (f"measure: {measure}\n" if measure else "")
    path.write_text(head + "devices:\n" + "".join(devices), encoding="utf-8")
    return path


def make_pipeline(env: Path, catalog: Path, lab: Path, settings: MeasureSettings = FAST) -> Pipeline:
    return Pipeline(load_lab(lab), load_catalog(catalog), Store(env / "results.sqlite"), settings=settings)


def fp32_first(pipeline: Pipeline) -> list[Any]:
    jobs = [j for j in pipeline.plan() if j.variant.backend == "onnxruntime"]
    return sorted(jobs, key=lambda j: j.variant.precision != "fp32")


# ---- setup: commands ----------------------------------------------------------------------------------


def test_a_failing_setup_command_errors_the_job_and_nothing_is_measured(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    command = "echo boom >&2; exit 3"
    lab = write_lab(tmp_path, device_yaml("board", tmp_path / "device", setup=["true", command]))
    pipeline = make_pipeline(edgebench_env, tiny_catalog, lab)
    first, *later = fp32_first(pipeline)
    result = pipeline.run_job(first)
    assert result.status == "error"
    assert result.message.startswith(f"device 'board': setup[1] {command!r} exited 3: boom; the job was not measured")
    assert "fix: make the command succeed when run on the device without a terminal" in result.message
    assert result.latency is None and pipeline.results_store().samples_of(pipeline.run_id, first.id).size == 0
    # The device is failed: its next job is not run after the same broken command, and says why.
    again = pipeline.run_job(later[0])
    assert again.status == "skipped" and "earlier in this run: setup[1]" in again.message
    assert pipeline.finish() == "error"


def test_a_setup_command_that_succeeds_runs_before_the_job_measures(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "setup-ran"
    lab = write_lab(tmp_path, device_yaml("board", tmp_path / "device", setup=[f"echo pinned >> {marker}"]))
    pipeline = make_pipeline(edgebench_env, tiny_catalog, lab)
    result = pipeline.run_job(fp32_first(pipeline)[0])
    pipeline.finish()
    assert result.status == "passed", result.message
    assert result.latency is not None and result.latency.n == 400
    assert marker.read_text() == "pinned\n"


def test_a_hanging_setup_command_says_it_is_the_setup_and_its_limit(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "SETUP_TIMEOUT_S", 1.0)  # 60 s in use; the message quotes the limit
    lab = write_lab(tmp_path, device_yaml("board", tmp_path / "device", setup=["sleep 30"]))
    pipeline = make_pipeline(edgebench_env, tiny_catalog, lab)
    result = pipeline.run_job(fp32_first(pipeline)[0])
    pipeline.finish()
    assert result.status == "error"
    assert "setup[0] 'sleep 30' did not finish within the 1 s a setup command may take" in result.message
    assert "job_timeout_s" not in result.message, "the job timeout does not govern a setup command"
    assert "fix: make it finish sooner" in result.message


def test_an_interleaved_comparison_stops_at_a_failing_setup_command(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    lab = write_lab(tmp_path, device_yaml("local", tmp_path / "device", setup=["exit 1"]))
    pipeline = make_pipeline(edgebench_env, tiny_catalog, lab)
    with pytest.raises(SetupFailed, match=r"setup\[0\] 'exit 1' exited 1 with no output"):
        run_interleaved(pipeline, two_variants(pipeline), block=10, seed=1)
    pipeline.finish()
    assert pipeline.results_store().results(pipeline.run_id) == [], "nothing was timed"


# ---- a device reached but broken ----------------------------------------------------------------------


def exits_127(tmp_path: Path) -> str:
    """An interpreter path that starts and fails as a shell does for a missing command."""
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\necho 'python3: not found' >&2\nexit 127\n", encoding="utf-8")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("python", ["missing", "exit-127"])
def test_a_device_whose_python_does_not_run_is_an_error_not_a_skip(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, python: str
) -> None:
    path = str(tmp_path / "no" / "python3") if python == "missing" else exits_127(tmp_path)
    lab = write_lab(tmp_path, device_yaml("board", tmp_path / "device", python=path))
    pipeline = make_pipeline(edgebench_env, tiny_catalog, lab)
    first, *later = fp32_first(pipeline)
    result = pipeline.run_job(first)
    assert result.status == "error", result.message
    if python == "missing":
        assert f"cannot start {path!r}: No such file or directory" in result.message
        assert "fix: set the device's python: in the lab file" in result.message
    else:
        assert "(exit 127): python3: not found" in result.message
    assert pipeline.run_job(later[0]).status == "skipped", "later jobs skip on the failed device, with its reason"
    assert pipeline.finish() == "error"


def test_a_run_with_a_broken_device_beside_a_healthy_one_exits_2(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The healthy device's jobs pass; the broken one's must not be skipped into a green run."""
    broken = str(tmp_path / "no" / "python3")
    lab = write_lab(
        tmp_path,
        device_yaml("good", tmp_path / "good"),
        device_yaml("broken", tmp_path / "broken", python=broken),
        measure="{iterations: 400, warmup_max_iterations: 40, calibration_reps: 0, throttle_retries: 0}",
    )
    db = tmp_path / "results.sqlite"
    argv = ["run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--db", str(db), "--kinds", "latency"]
    code = main([*argv, "--backends", "onnxruntime", "--report", str(tmp_path / "report.html")])
    out = capsys.readouterr().out
    assert code == 2, out
    store = Store(db, read_only=True)
    try:
        (run,) = store.list_runs()
        rows = store.results(run["id"])
    finally:
        store.close()
    assert run["status"] == "error"
    assert any(r["device"] == "good" and r["status"] == "passed" for r in rows)
    statuses = [r["status"] for r in rows if r["device"] == "broken"]
    assert statuses[0] == "error" and set(statuses[1:]) <= {"skipped"}


# ---- interleaving's fallback ----------------------------------------------------------------------------


def test_the_fallback_judges_every_process_of_a_variant_not_only_its_last(
    edgebench_env: Path, tiny_catalog: Path, local_lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in tegrastats (no Jetson here) heats the GPU in its first two invocations: the in-process
    run and the first variant's first fallback process (order A B, B A). That variant's pooled result
    must be throttled for its first process, though its last one ran cool; the other variant stays cool."""
    zone = edgebench_env / "sysfs" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("38000\n")
    (zone / "type").write_text("board-thermal\n")
    tool, calls = _tegrastats_hot_for(edgebench_env, 2)
    profiles = _profile_with_telemetry(edgebench_env / "platforms", zone.parent, tool)
    monkeypatch.setenv("EDGEBENCH_PLATFORMS", str(profiles))
    monkeypatch.setattr(scenarios, "AA_TOLERANCE", -1.0)  # no ratio is within it: the fallback runs
    settings = MeasureSettings(
        min_iterations=400, min_duration_s=1.0, max_duration_s=3.0, throttle_retries=0, calibration_reps=0,
        thermal_interval_s=0.1,
    )
    pipeline = make_pipeline(edgebench_env, tiny_catalog, local_lab, settings)
    first, second = two_variants(pipeline)
    outcome = run_interleaved(pipeline, [first, second], block=10, seed=1)
    pipeline.finish()
    assert outcome.mode == "separate_processes"
    assert len(calls.read_text()) == 5, "one telemetry tool per runner process: 1 in-process + 2 x 2"
    results = outcome.by_job()
    hot = results[first.id].flat()
    assert hot["throttled"] is True and hot["unstable"] is True
    assert any(r.startswith("run 1 of 2: gpu rose ") for r in hot["throttle_reasons"]), hot["throttle_reasons"]
    assert len(results[first.id].facts["repeat_facts"]) == 1, "the other process's facts are kept"
    cool = results[second.id].flat()
    assert not any("gpu rose" in r for r in cool["throttle_reasons"]), cool["throttle_reasons"]
