"""The lab file and the command line decide how every job measures, and each result says what it ran with.

A nightly lab sets its stop rule in the inventory's ``measure:`` block, pins a device's runner with
``cpus:`` and gives a backend's runtime options per device (OpenVINO streams and hints, ONNX Runtime
spin-waiting); a release engineer overrides the durations, half-width and batch with flags. The
tiny model runs through the real runner (ONNX Runtime and OpenVINO), and what is checked is what the
user's ``results --format json`` says. No speed is asserted.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness.catalog import load_catalog
from harness.cli import main
from harness.lab.inventory import load_lab
from harness.pipeline import Pipeline, measure_settings
from harness.records import Job, Variant
from harness.store import Store

pytestmark = [pytest.mark.slow]

CPU = min(os.sched_getaffinity(0))
OPENVINO = {"hint": "latency", "inference_precision": "f32", "streams": 1}


def lab_file(tmp_path: Path, *, name: str = "controls", device_extra: str = "", measure: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = f"""\
        schema_version: 1
        name: {name}
        {measure}
        devices:
          - name: local
            platform: generic-linux
            transport: local
            python: {sys.executable}
            runtimes: [onnxruntime, openvino]
            cache_dir: {tmp_path / "device"}
            threads: 1
            {device_extra}
        """
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


CONTROLLED = dict(
    measure="measure: {min_iterations: 50, warmup_max_iterations: 40, calibration_reps: 2, throttle_retries: 0, "
    "max_half_width: 0.0001}",
    device_extra=f"cpus: [{CPU}]\n"
    "            options:\n"
    "              openvino: {hint: latency, inference_precision: f32, streams: 1}\n"
    "              onnxruntime: {spin_wait: false}",
)


def results(db: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["results", "--db", str(db), "--format", "json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_the_lab_file_and_flags_decide_how_every_job_measures(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = lab_file(tmp_path, **CONTROLLED)
    db = tmp_path / "results.sqlite"
    argv = ["run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--db", str(db), "--kinds", "latency"]
    argv += ["--max-duration", "0.3", "--batch", "2", "--report", str(tmp_path / "report.html")]
    assert main(argv) == 0, capsys.readouterr().err

    measured = [r for r in results(db, capsys) if r["status"] == "passed"]
    assert {(r["backend"], r["precision"]) for r in measured} >= {("onnxruntime", "fp32"), ("openvino", "fp32")}
    for row in measured:
        # A half-width of 0.01% cannot be reached in 0.3 s: the loop ran to the cap the flag set, past
        # the lab's floor of 50 calls, and is still VALID.
        assert row["stop_reason"] == "time_cap" and 0.3 <= row["duration_s"] < 1.5, row["job_id"]
        assert row["n"] >= 50 and row["valid"]
        assert row["batch"] == 2 and row["input_shape"][0] == 1
        assert row["cpu_affinity"] == [CPU], "the device's cpus: pinned the runner"
        assert row["pinning"] in ("sched_setaffinity", "inherited")
    for row in (r for r in measured if r["backend"] == "openvino"):
        assert row["variant_options"] == OPENVINO and "-streams=1" in row["job_id"]
        applied = row["runtime_config"]["applied"]
        assert applied["NUM_STREAMS"] == "1" and applied["PERFORMANCE_HINT"] == "LATENCY"
        assert applied["INFERENCE_PRECISION_HINT"] == "f32"
    for row in (r for r in measured if r["backend"] == "onnxruntime"):
        assert row["variant_options"] == {"spin_wait": False} and row["runtime_config"]["spin_wait"] is False


def test_runtime_options_reuse_the_artifact_and_build_options_do_not(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    plain = load_lab(lab_file(tmp_path, name="plain"))
    tuned = load_lab(lab_file(tmp_path, name="tuned", **CONTROLLED))
    model = load_catalog(tiny_catalog)[0]

    def artifact(lab: Any, options: tuple[tuple[str, Any], ...]) -> tuple[Path, str]:
        pipeline = Pipeline(lab, [model], Store(tmp_path / "r.sqlite"), settings=measure_settings(lab))
        device = lab.devices[0]
        return pipeline.compile(Job(model, Variant("openvino", "fp16", threads=1, options=options), device))

    first = artifact(plain, ())
    assert artifact(tuned, tuned.devices[0].backend_options("openvino")) == first, "streams/hints: same IR"
    other = artifact(plain, (("nncf_preset", "mixed"),))
    assert other[0] != first[0], "a build option is part of the artifact's cache key"


def test_a_bad_flag_combination_stops_before_any_device_work(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = lab_file(tmp_path, measure="measure: {max_duration_s: 4}")
    db = tmp_path / "results.sqlite"
    code = main(["run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--db", str(db), "--min-duration", "10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--min-duration: the minimum duration 10 s is longer than the time cap 4 s" in err
    assert not db.exists() or Store(db).list_runs() == [], "nothing was run or recorded"


def test_threads_beyond_the_pinned_cpus_mark_the_result_unstable_and_say_why(
    edgebench_env: Path, tiny_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measure = "measure: {min_iterations: 50, throttle_retries: 0}"
    lab = lab_file(tmp_path, measure=measure, device_extra=f"cpus: [{CPU}]")
    text = lab.read_text(encoding="utf-8").replace("threads: 1", "threads: 2")
    lab.write_text(text, encoding="utf-8")
    db = tmp_path / "results.sqlite"
    argv = ["run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--db", str(db), "--kinds", "latency"]
    main([*argv, "--backends", "onnxruntime", "--max-duration", "0.3"])
    fp32 = next(r for r in results(db, capsys) if r["precision"] == "fp32")
    assert fp32["unstable"] is True
    assert f"2 runtime threads on 1 allowed CPU(s) [{CPU}]" in " ".join(fp32["unstable_reasons"])
