"""``edgebench interleave`` on the embedded local device: variants in shuffled rounds, A/A check shown, stored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


def _cli(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["edgebench", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.integration
def test_interleave_runs_every_variant_with_an_aa_copy_and_stores_them(
    tiny_catalog: Path, local_lab: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "interleave.sqlite"
    env = {**subprocess_env, "COLUMNS": "200"}
    done = _cli(
        "interleave",
        "--lab",
        local_lab,
        "--catalog",
        tiny_catalog,
        "--db",
        db,
        "--backends",
        "onnxruntime",
        "--seed",
        "7",
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    shown = done.stdout
    for variant in ("onnxruntime-fp32-t1", "onnxruntime-fp16-t1", "onnxruntime-int8-t1"):
        assert variant in shown
    # The tiny catalog has no calibration set: INT8 is shown skipped with the reason, the others ran.
    assert "needs a calibration set" in shown
    assert ("in_process" in shown) or ("separate_processes" in shown)
    listed = _cli("results", "--db", db, "--format", "json", env=env)
    records = [r for r in json.loads(listed.stdout) if r["kind"] == "interleaved"]
    assert {r["precision"] for r in records} == {"fp32", "fp16"}
    assert all(r["n"] > 0 and r["aa_check"]["tolerance"] == pytest.approx(0.01) for r in records)
