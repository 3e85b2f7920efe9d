"""The edgebench command on labs and catalogs the other CLI tests do not build: a lab with one device
that cannot be reached (interleave, capacity), and a candidate that sorts before its production model
(run). Real parts throughout: the local device runs ONNX Runtime, the SSH device is a closed port."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.command_line import edgebench


def two_device_lab(tmp_path: Path, local_lab_text: Callable[[Path], str]) -> Path:
    """The local device and ``board``, an SSH device at 127.0.0.1 port 1, where nothing listens.

    Short timed loops: the tests are about which device is skipped, not about the numbers.
    """
    board = textwrap.indent(
        textwrap.dedent(
            f"""\
            - name: board
              platform: generic-linux
              host: 127.0.0.1
              port: 1
              user: nobody
              known_hosts: {tmp_path / "known_hosts"}
              python: {sys.executable}
              runtimes: [onnxruntime]
              threads: 1
            """
        ),
        "  ",
    )
    measure = "measure:\n  min_duration_s: 0.2\n  max_duration_s: 1.0\n"
    lab = tmp_path / "two-device-lab.yaml"
    lab.write_text(local_lab_text(tmp_path / "device") + board + measure, encoding="utf-8")
    return lab


def stored(db: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The latest run's records, as `edgebench results --format json` prints them."""
    listed = edgebench("results", "--db", db, "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    records: list[dict[str, Any]] = json.loads(listed.stdout)
    return records


def table_rows(stdout: str, device: str) -> list[str]:
    """The printed table's lines for one device (rich draws cells between │ characters)."""
    return [line for line in stdout.splitlines() if f"│ {device} " in line]


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, "COLUMNS": "400"}  # one table row per line


def test_interleave_skips_a_device_that_cannot_be_reached_and_compares_on_the_others(
    tmp_path: Path, env: dict[str, str], local_lab_text: Callable[[Path], str], tiny_catalog: Path
) -> None:
    db = tmp_path / "i.sqlite"
    lab = two_device_lab(tmp_path, local_lab_text)
    proc = edgebench(
        "interleave", "--lab", lab, "--catalog", tiny_catalog, "--db", db, "--backends", "onnxruntime",
        "--seed", "7", env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stdout
    (offline,) = [row for row in table_rows(proc.stdout, "board") if "connection refused" in row]
    assert "skipped: device 'board'" in offline
    assert any("passed" in row for row in table_rows(proc.stdout, "local"))
    records = stored(db, env)
    assert records and {(r["device"], r["kind"], r["status"]) for r in records} == {("local", "interleaved", "passed")}
    assert "(passed)" in proc.stdout


def test_capacity_skips_a_device_that_cannot_be_reached_and_measures_the_others(
    tmp_path: Path, env: dict[str, str], local_lab_text: Callable[[Path], str], tiny_catalog: Path
) -> None:
    db = tmp_path / "c.sqlite"
    lab = two_device_lab(tmp_path, local_lab_text)
    proc = edgebench(
        "capacity", "--lab", lab, "--catalog", tiny_catalog, "--db", db, "--fps", "30", "--max-streams", "1",
        env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (offline,) = table_rows(proc.stdout, "board")
    assert "skipped: device 'board'" in offline and "connection refused" in offline
    (local,) = table_rows(proc.stdout, "local")
    assert "ok" in local
    records = stored(db, env)
    assert [(r["device"], r["kind"], r["status"]) for r in records] == [("local", "capacity", "passed")]


def test_run_measures_a_production_model_once_when_its_candidate_sorts_first(
    tmp_path: Path,
    env: dict[str, str],
    local_lab: Path,
    tiny_onnx: Path,
    tiny_catalog_yaml: Callable[..., str],
) -> None:
    """aaa-next would replace tiny-cnn: its jobs run tiny-cnn's first (to compare with them), and the
    run then reaches tiny-cnn's own jobs in catalog order. Each is timed and stored once."""
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    shutil.copyfile(tiny_onnx, catalog / "tiny.onnx")
    (catalog / "tiny-cnn.yaml").write_text(tiny_catalog_yaml(), encoding="utf-8")
    (catalog / "aaa-next.yaml").write_text(tiny_catalog_yaml("aaa-next", budgets="production: tiny-cnn\n"))
    db = tmp_path / "r.sqlite"
    proc = edgebench(
        "run", "--lab", local_lab, "--catalog", catalog, "--db", db, "--report", tmp_path / "r.html",
        "--kinds", "latency", "--backends", "onnxruntime", "--quick", "--max-duration", "0.5",
        env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = stored(db, env)
    counts = Counter((r["job_id"], r["kind"]) for r in records)
    assert [key for key, n in counts.items() if n > 1] == [], counts
    # Every planned job is there: both models' three variants (INT8 skipped: no calibration set).
    models, precisions = ("aaa-next", "tiny-cnn"), ("fp32", "fp16", "int8")
    assert {job for job, _ in counts} == {f"{m}/onnxruntime-{p}-t1/local" for m in models for p in precisions}
    # The candidate was compared with the production jobs the run kept.
    candidate = next(r for r in records if r["job_id"] == "aaa-next/onnxruntime-fp32-t1/local")
    production = next(r for r in records if r["job_id"] == "tiny-cnn/onnxruntime-fp32-t1/local")
    assert candidate["production_model"] == "tiny-cnn"
    assert candidate["production_p50_delta_ms"] == pytest.approx(candidate["p50_ms"] - production["p50_ms"])


def test_interleave_fails_a_device_whose_setup_fails_once_and_skips_its_other_groups(
    tmp_path: Path, env: dict[str, str], local_lab_text: Callable[[Path], str], tiny_catalog: Path,
    tiny_catalog_yaml: Callable[..., str],
) -> None:
    """Two models, so two interleaved groups on the one device: its setup: command fails in the first,
    which errors naming it, and the second is skipped with that reason rather than running it again."""
    (tiny_catalog / "tiny-other.yaml").write_text(tiny_catalog_yaml("tiny-other"), encoding="utf-8")
    ran = tmp_path / "setup-ran"
    lab = tmp_path / "lab.yaml"
    setup = f'    setup: ["echo once >> {ran}; echo clocks not pinned >&2; exit 3"]\n'
    measure = "measure:\n  min_duration_s: 0.2\n  max_duration_s: 1.0\n"
    lab.write_text(local_lab_text(tmp_path / "device") + setup + measure, encoding="utf-8")
    db = tmp_path / "i.sqlite"
    proc = edgebench(
        "interleave", "--lab", lab, "--catalog", tiny_catalog, "--db", db, "--backends", "onnxruntime",
        env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = table_rows(proc.stdout, "local")
    (failed,) = [row for row in rows if "error:" in row]
    assert "setup[0]" in failed and "exited 3" in failed
    (skipped,) = [row for row in rows if "│ tiny-other " in row and "skipped: device 'local'" in row]
    assert "earlier in this run: setup[0]" in skipped
    assert ran.read_text().splitlines() == ["once"], "the failing setup command ran again for the second group"
