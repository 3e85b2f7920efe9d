"""The edgebench command as a user types it: run, results (json, csv, table), report, and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.command_line import edgebench

TINY_JOB = "tiny-cnn/onnxruntime-fp32-t1/local"


def latency_record(records: list[dict[str, Any]], job_id: str = TINY_JOB) -> dict[str, Any]:
    """The latency record of one job (a lab plans more variants than the FP32 one the tests look at)."""
    found = [r for r in records if r["job_id"] == job_id and r.get("kind", "latency") == "latency"]
    assert len(found) == 1, [r["job_id"] for r in records]
    return found[0]


@dataclass(frozen=True)
class Workspace:
    root: Path
    catalog: Path
    lab: Path
    db: Path
    report: Path
    env: dict[str, str]


def workspace(root: Path) -> Workspace:
    """The paths and environment of a workspace under root (made by make_workspace)."""
    env = dict(os.environ)
    env.update(EDGEBENCH_CACHE=str(root / "cache"), EDGEBENCH_HOME=str(root / "home"), OMP_NUM_THREADS="1")
    env.pop("EDGEBENCH_DEBUG", None)
    return Workspace(
        root, root / "catalog", root / "lab.yaml", root / "out" / "results.sqlite", root / "out" / "report.html", env
    )


def make_workspace(root: Path, tiny_onnx: Path, entry_text: str, lab_text: str) -> Workspace:
    ws = workspace(root)
    ws.catalog.mkdir(parents=True)
    shutil.copyfile(tiny_onnx, ws.catalog / "tiny.onnx")
    (ws.catalog / "tiny-cnn.yaml").write_text(entry_text, encoding="utf-8")
    ws.lab.write_text(lab_text, encoding="utf-8")
    return ws


@dataclass(frozen=True)
class Ran:
    ws: Workspace
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def ran(
    run_once: Callable[[str, Callable[[Path], Any]], tuple[Path, Any]],
    tiny_onnx: Path,
    tiny_catalog_yaml: Callable[..., str],
    local_lab_text: Callable[[Path], str],
) -> Ran:
    """One `edgebench run --quick` of the tiny model on a local lab, shared by the read-back tests."""

    def run(root: Path) -> dict[str, Any]:
        ws = make_workspace(root, tiny_onnx, tiny_catalog_yaml(), local_lab_text(root / "device"))
        proc = edgebench(
            "run", "--lab", ws.lab, "--catalog", ws.catalog, "--db", ws.db, "--report", ws.report, "--quick",
            env=ws.env,
        )
        return {"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    root, done = run_once("cli-run", run)
    ws = workspace(root)
    return Ran(ws, subprocess.CompletedProcess(done["args"], done["returncode"], done["stdout"], done["stderr"]))


def test_run_passes_and_says_where_the_report_and_database_are(ran: Ran) -> None:
    assert ran.proc.returncode == 0, ran.proc.stderr
    lines = ran.proc.stdout.splitlines()
    assert f"report: {ran.ws.report.resolve()}" in lines
    assert f"database: {ran.ws.db}" in lines
    assert any(line.startswith("run: ") and line.endswith("(passed)") for line in lines)
    assert ran.ws.report.is_file() and ran.ws.db.is_file()
    # Progress goes to stderr, one line per job, so stdout stays machine-readable.
    assert any(line.startswith("PASSED") and TINY_JOB in line for line in ran.proc.stderr.splitlines())
    assert "Traceback" not in ran.proc.stderr


def test_run_leaves_the_user_directories_alone(ran: Ran) -> None:
    # The device cache is where the lab file says; the build cache is EDGEBENCH_CACHE.
    assert any((ran.ws.root / "device" / "files").glob("*.pyz"))
    assert any((ran.ws.root / "cache").rglob("*.npz"))


def test_results_json_has_the_promised_fields_and_valid_intervals(ran: Ran, record_fields: tuple[str, ...]) -> None:
    proc = edgebench("results", "--db", ran.ws.db, "--format", "json", env=ran.ws.env)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert isinstance(records, list) and len(records) >= 1
    for record in records:
        assert [f for f in record_fields if f not in record] == [], record["job_id"]
    r = latency_record(records)
    assert r["job_id"] == TINY_JOB and r["model"] == "tiny-cnn" and r["device"] == "local"
    assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
    assert r["input_shape"] == [1, 3, 16, 16]
    assert len(r["model_sha256"]) == 64
    assert r["status"] == "passed"
    assert r["valid"] is True and r["invalid_reasons"] == []
    assert r["n"] >= 368, "a VALID P99 needs at least 368 samples"
    for q in ("p50", "p95", "p99"):
        ci = r[f"{q}_ci_ms"]
        assert isinstance(ci, list) and len(ci) == 2
        assert 0 < ci[0] <= r[f"{q}_ms"] <= ci[1]
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["mean_ms"] > 0 and r["std_ms"] >= 0
    assert r["first_inference_ms"] > 0
    assert r["message"]


def test_results_csv_parses_and_agrees_with_json(ran: Ran, record_fields: tuple[str, ...]) -> None:
    as_csv = edgebench("results", "--db", ran.ws.db, "--format", "csv", env=ran.ws.env)
    as_json = edgebench("results", "--db", ran.ws.db, "--run", "latest", "--format", "json", env=ran.ws.env)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    records = json.loads(as_json.stdout)
    assert len(rows) == len(records)
    assert set(record_fields) <= set(rows[0])
    index = records.index(latency_record(records))
    row, record = rows[index], records[index]
    assert row["job_id"] == record["job_id"]
    assert float(row["p99_ms"]) == record["p99_ms"]
    assert json.loads(row["p99_ci_ms"]) == record["p99_ci_ms"]
    assert json.loads(row["input_shape"]) == [1, 3, 16, 16]
    assert row["valid"] == "True"


def test_results_by_run_id_prefix_and_the_list_of_runs(ran: Ran) -> None:
    runs = json.loads(edgebench("results", "--db", ran.ws.db, "--runs", "--format", "json", env=ran.ws.env).stdout)
    assert len(runs) == 1 and runs[0]["status"] == "passed" and runs[0]["lab_name"] == "testlab"
    run_id = runs[0]["id"]
    by_prefix = edgebench("results", "--db", ran.ws.db, "--run", run_id[:5], "--format", "json", env=ran.ws.env)
    assert {r["run_id"] for r in json.loads(by_prefix.stdout)} == {run_id}
    table = edgebench("results", "--db", ran.ws.db, env=ran.ws.env)
    assert table.returncode == 0 and "VALID" in table.stdout


def test_report_writes_the_file_it_names(ran: Ran) -> None:
    out = ran.ws.root / "elsewhere" / "r.html"
    proc = edgebench("report", "--db", ran.ws.db, "--out", out, env=ran.ws.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report: {out.resolve()}"
    html = out.read_text(encoding="utf-8")
    assert TINY_JOB in html and "VALID" in html


def test_results_of_an_unknown_run_is_exit_2_in_one_line(ran: Ran) -> None:
    proc = edgebench("results", "--db", ran.ws.db, "--run", "zzzz", env=ran.ws.env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "edgebench: error: --run: run 'zzzz' not found; fix: pass 'latest' or a run id from 'edgebench results --runs'"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--bogus"], "No such option: --bogus; fix: see 'edgebench run --help'"),
        (["results", "--format", "xml"], "'xml' is not one of"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_a_command_line_mistake_is_exit_2_in_one_line(
    tmp_path: Path, subprocess_env: dict[str, str], args: list[str], expected: str
) -> None:
    proc = edgebench(*args, env=subprocess_env)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgebench: error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_arguments_prints_help(subprocess_env: dict[str, str]) -> None:
    proc = edgebench(env=subprocess_env)
    assert proc.returncode == 0
    assert "Usage: edgebench" in proc.stdout and "run" in proc.stdout


def test_a_broken_budget_fails_the_run_with_exit_1(
    tmp_path: Path,
    tiny_onnx: Path,
    tiny_catalog_yaml: Callable[..., str],
    local_lab_text: Callable[[Path], str],
) -> None:
    entry = tiny_catalog_yaml(budgets="budgets:\n  p99_ms: 0.000001\n")
    ws = make_workspace(tmp_path, tiny_onnx, entry, local_lab_text(tmp_path / "device"))
    proc = edgebench(
        "run", "--lab", ws.lab, "--catalog", ws.catalog, "--db", ws.db, "--report", ws.report, "--quick",
        env=ws.env,
    )
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED") and TINY_JOB in line]
    assert len(failed) == 1, proc.stderr
    assert "P99" in failed[0] and "exceeds budget 1e-06 ms" in failed[0]
    assert any(line.endswith("(failed)") for line in proc.stdout.splitlines())
    # A failed gate still stores the evidence and writes the report.
    assert ws.report.is_file()
    record = latency_record(json.loads(edgebench("results", "--db", ws.db, "--format", "json", env=ws.env).stdout))
    assert record["status"] == "failed" and "P99" in record["message"] and record["valid"] is True
