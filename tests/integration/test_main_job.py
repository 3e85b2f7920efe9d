"""The main job as the README runs it, on the embedded default lab, for digits-cnn only.

digits-cnn is trained at first use (seconds on one core) into a private EDGEBENCH_CACHE, exported
through torch, compiled for ONNX Runtime and measured by the runner as a local subprocess; the device
cache of devices/local.yaml lands under a private HOME. To stay within the test budget on 2 shared
cores it runs the ONNX Runtime variants' latency (and parity) jobs with --quick; the other backends
and the robustness jobs have tests of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[2]
LAB = PROJECT / "devices" / "local.yaml"


def test_the_main_job_command_for_digits_cnn_on_onnxruntime_trains_measures_and_reports(tmp_path: Path) -> None:
    edgebench = shutil.which("edgebench")
    assert edgebench, "the edgebench console script is not installed (pip install -e .)"
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        EDGEBENCH_CACHE=str(tmp_path / "cache"), EDGEBENCH_HOME=str(tmp_path / "data"), HOME=str(home)
    )
    env.pop("EDGEBENCH_DEBUG", None)
    db, report = tmp_path / "results.sqlite", tmp_path / "report.html"

    run = subprocess.run(
        [
            edgebench, "run", "--lab", str(LAB), "--models", "digits-cnn", "--backends", "onnxruntime",
            "--kinds", "latency", "--quick", "--db", str(db), "--report", str(report),
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"report: {report.resolve()}" in run.stdout.splitlines()
    assert f"database: {db}" in run.stdout.splitlines()
    assert report.is_file() and db.is_file()
    # The trained weights are cached where EDGEBENCH_CACHE says, and the device cache under HOME.
    assert any((tmp_path / "cache").rglob("digits_cnn-*.pt"))
    assert any((home / ".cache" / "edgebench" / "device-local").rglob("*.pyz"))

    listed = subprocess.run(
        [edgebench, "results", "--db", str(db), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = json.loads(listed.stdout)
    fp32 = [r for r in records if r["kind"] == "latency" and r["precision"] == "fp32"]
    assert len(fp32) == 1, [r["job_id"] for r in records]
    assert {r["status"] for r in records} <= {"passed", "skipped"}, [(r["job_id"], r["message"]) for r in records]
    r = fp32[0]
    assert r["model"] == "digits-cnn" and r["device"] == "local" and r["backend"] == "onnxruntime"
    assert r["status"] == "passed", r["message"]
    assert r["top1_acc"] >= 0.95, "digits-cnn must reach >= 95% held-out accuracy on the device"
    assert r["valid"] is True and r["n"] >= 368
    for q in ("p50", "p95", "p99"):
        low, high = r[f"{q}_ci_ms"]
        assert low <= r[f"{q}_ms"] <= high
    assert r["input_shape"] == [1, 1, 32, 32]
