"""Bad input through the edgebench command: one line naming the flag, file or key and the fix, exit 2,
nothing lost, no run left behind; a run that measured nothing is not a pass."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.lab.loopback import check_out, lab_up, state_dir
from harness.records import JobResult
from harness.store import RunInfo, Store
from tests.bad_input import foreign_sqlite
from tests.command_line import edgebench

MakeResult = Callable[..., JobResult]
MakeRun = Callable[..., RunInfo]
JOB = "tiny-cnn/onnxruntime-fp32-t1/local"


def one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The run exited 2 with a single 'edgebench: error:' line holding every fragment, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgebench: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The subprocess environment, with a private TMPDIR so a leftover edgebench-* directory shows."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {**subprocess_env, "TMPDIR": str(tmp), "COLUMNS": "80"}


def leftover_tmp(env: dict[str, str]) -> list[str]:
    return sorted(p.name for p in Path(env["TMPDIR"]).glob("edgebench-*"))


def seeded_db(path: Path, make_run: MakeRun, make_result: MakeResult) -> str:
    """A results database holding one finished run with one result, as 'edgebench run' leaves it."""
    store = Store(path)
    try:
        store.start_run(make_run("run000000001"))
        store.add_result(make_result("run000000001", JOB))
        store.finish_run("run000000001", "2026-11-24T10:05:00+00:00", "passed")
    finally:
        store.close()
    return "run000000001"


def runs_of(db: Path) -> list[dict[str, Any]]:
    store = Store(db, read_only=True)
    try:
        return store.list_runs()
    finally:
        store.close()


def base_run(local_lab: Path, tiny_catalog: Path, db: Path, *extra: str | Path) -> list[str | Path]:
    return ["run", "--lab", local_lab, "--catalog", tiny_catalog, "--db", db, "--kinds", "latency", *extra]


# ---- 1. a report never replaces the database or a file that is not a report ----------------------
def test_report_onto_its_own_database_is_refused_and_the_database_kept(
    tmp_path: Path, env: dict[str, str], make_run: MakeRun, make_result: MakeResult
) -> None:
    db = tmp_path / "clob.sqlite"
    seeded_db(db, make_run, make_result)
    before = db.read_bytes()
    proc = edgebench("report", "--db", db, "--out", db, env=env, cwd=tmp_path)
    one_error_line(proc, "--out", str(db), "is the results database", "fix:")
    assert db.read_bytes() == before
    assert [r["id"] for r in runs_of(db)] == ["run000000001"]


def test_report_onto_a_file_that_is_not_a_report_is_refused(
    tmp_path: Path, env: dict[str, str], make_run: MakeRun, make_result: MakeResult
) -> None:
    db = tmp_path / "results.sqlite"
    seeded_db(db, make_run, make_result)
    other = tmp_path / "other.sqlite"
    kept = foreign_sqlite(other)
    proc = edgebench("report", "--db", db, "--out", other, env=env, cwd=tmp_path)
    one_error_line(proc, "--out", str(other), "is not an HTML report", "fix:")
    assert other.read_bytes() == kept
    # An earlier report is replaced as before.
    html = tmp_path / "report.html"
    assert edgebench("report", "--db", db, "--out", html, env=env, cwd=tmp_path).returncode == 0
    assert edgebench("report", "--db", db, "--out", html, env=env, cwd=tmp_path).returncode == 0
    assert JOB in html.read_text(encoding="utf-8")


def test_run_with_its_report_onto_the_database_is_refused_before_any_job(
    tmp_path: Path,
    env: dict[str, str],
    local_lab: Path,
    tiny_catalog: Path,
    make_run: MakeRun,
    make_result: MakeResult,
) -> None:
    db = tmp_path / "ph.sqlite"
    seeded_db(db, make_run, make_result)
    before = db.read_bytes()
    proc = edgebench(*base_run(local_lab, tiny_catalog, db, "--report", db), env=env, cwd=tmp_path)
    one_error_line(proc, "--report", "is the results database")
    assert db.read_bytes() == before and [r["id"] for r in runs_of(db)] == ["run000000001"]


@pytest.mark.parametrize("command", ["report", "run"])
def test_a_report_path_that_is_a_directory_is_refused_first(
    tmp_path: Path,
    env: dict[str, str],
    local_lab: Path,
    tiny_catalog: Path,
    make_run: MakeRun,
    make_result: MakeResult,
    command: str,
) -> None:
    db = tmp_path / "results.sqlite"
    seeded_db(db, make_run, make_result)
    folder = tmp_path / "reports"
    folder.mkdir()
    if command == "report":
        proc = edgebench("report", "--db", db, "--out", folder, env=env, cwd=tmp_path)
        flag = "--out"
    else:
        proc = edgebench(*base_run(local_lab, tiny_catalog, db, "--report", folder), env=env, cwd=tmp_path)
        flag = "--report"
    one_error_line(proc, flag, f"{folder} is a directory", f"{folder / 'report.html'}")
    assert not (tmp_path / "reports.tmp").exists() and list(folder.iterdir()) == []
    assert [r["id"] for r in runs_of(db)] == ["run000000001"], "no job ran"


# ---- 2. --db takes URLs -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["results", "report", "run"])
def test_a_postgresql_url_to_a_closed_port_is_a_connection_error_and_no_file(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path, command: str
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    url = "postgresql://nouser:secret@127.0.0.1:1/x"
    args: list[str | Path] = [command, "--db", url]
    if command == "run":
        args = base_run(local_lab, tiny_catalog, Path("unused"), "--report", work / "r.html")
        args[args.index(Path("unused"))] = url
    proc = edgebench(*args, env=env, cwd=work)
    line = one_error_line(proc, "cannot open", "postgresql://nouser:***@127.0.0.1:1/x", "fix:")
    assert "secret" not in line, "the password is not printed"
    assert list(work.iterdir()) == [], "no SQLite file named after the URL"
    assert leftover_tmp(env) == []


def _postgres_fixtures() -> ModuleType:
    """The PostgreSQL server fixtures of the store's integration tests, reused (not copied) here."""
    path = Path(__file__).resolve().parents[1] / "integration" / "test_postgres_store.py"
    spec = importlib.util.spec_from_file_location("edgebench_postgres_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_pg = _postgres_fixtures()
postgres = _pg.postgres
database = _pg.database


@pytest.mark.integration
def test_results_and_report_read_a_postgresql_database_by_url(
    tmp_path: Path, env: dict[str, str], database: str, make_run: MakeRun, make_result: MakeResult
) -> None:
    store = Store(database)
    try:
        store.start_run(make_run("pgrun0000001"))
        store.add_result(make_result("pgrun0000001", JOB))
        store.finish_run("pgrun0000001", "2026-11-24T10:05:00+00:00", "passed")
    finally:
        store.close()
    work = tmp_path / "cwd"
    work.mkdir()
    listed = edgebench("results", "--db", database, "--format", "json", env=env, cwd=work)
    assert listed.returncode == 0, listed.stderr
    assert [r["job_id"] for r in json.loads(listed.stdout)] == [JOB]
    html = tmp_path / "pg.html"
    made = edgebench("report", "--db", database, "--out", html, env=env, cwd=work)
    assert made.returncode == 0, made.stderr
    assert JOB in html.read_text(encoding="utf-8")
    assert list(work.iterdir()) == [], "no SQLite file named after the URL"


# ---- 3. bad input leaves no run behind -----------------------------------------------------------
def test_an_unknown_backend_names_the_flag_and_leaves_no_run_nor_tmp_dir(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    db = tmp_path / "ph.sqlite"
    proc = edgebench(*base_run(local_lab, tiny_catalog, db, "--backends", "onnxruntme"), env=env, cwd=tmp_path)
    one_error_line(proc, "--backends: unknown backend 'onnxruntme'", "use one of:", "onnxruntime")
    assert not db.exists()
    assert leftover_tmp(env) == []


def test_interleave_with_an_unknown_backend_records_no_run(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    db = tmp_path / "i.sqlite"
    args: list[str | Path] = [
        "interleave",
        "--lab",
        local_lab,
        "--catalog",
        tiny_catalog,
        "--db",
        db,
        "--backends",
        "nosuch",
    ]
    one_error_line(edgebench(*args, env=env, cwd=tmp_path), "--backends: unknown backend 'nosuch'", "onnxruntime")
    assert not db.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--precision", "fp64"], ["--precision", "'fp64'", "fp32"]),
        (["--backend", "nosuch"], ["--backend: unknown backend 'nosuch'"]),
    ],
)
def test_capacity_refuses_an_unknown_precision_or_backend_before_the_run(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path, flags: list[str], expected: list[str]
) -> None:
    db = tmp_path / "c.sqlite"
    args: list[str | Path] = ["capacity", "--lab", local_lab, "--catalog", tiny_catalog, "--db", db, *flags]
    proc = edgebench(*args, env=env, cwd=tmp_path)
    one_error_line(proc, *expected)
    assert "run:" not in proc.stdout and not db.exists()


# ---- 4. a run that measured nothing is not a pass ------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--backends", "tensorrt"], ["--backends:", "runs tensorrt", "no job was planned", "onnxruntime"]),
        (["--kinds", ","], ["--kinds: no job kind", "latency and/or robustness"]),
        (["--kinds", "robustness"], ["--kinds:", "labelled eval set", "tiny-cnn"]),
    ],
)
def test_a_plan_emptied_by_a_filter_is_exit_2_naming_it(
    tmp_path: Path,
    env: dict[str, str],
    local_lab: Path,
    tiny_catalog: Path,
    flags: list[str],
    expected: list[str],
) -> None:
    db = tmp_path / "e.sqlite"
    args: list[str | Path] = [
        "run",
        "--lab",
        local_lab,
        "--catalog",
        tiny_catalog,
        "--db",
        db,
        "--report",
        tmp_path / "r.html",
    ]
    proc = edgebench(*args, *flags, env=env, cwd=tmp_path)
    one_error_line(proc, *expected)
    assert "(passed)" not in proc.stdout
    assert not db.exists(), "an input that plans nothing creates no results database"
    assert not (tmp_path / "r.html").exists() and leftover_tmp(env) == []


@pytest.mark.parametrize(("command", "flag"), [("interleave", "--backends"), ("capacity", "--backend")])
def test_interleave_or_capacity_with_a_backend_no_device_runs_creates_no_database(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path, command: str, flag: str
) -> None:
    db = tmp_path / "i.sqlite"
    args: list[str | Path] = [command, "--lab", local_lab, "--catalog", tiny_catalog, "--db", db]
    proc = edgebench(*args, flag, "tensorrt", env=env, cwd=tmp_path)
    one_error_line(proc, f"{flag}:", "runs tensorrt", "no job was planned", "fix: use backends its devices run")
    assert "run:" not in proc.stdout and not db.exists()


def ssh_lab(tmp_path: Path, key: str = "identity", missing: Path | None = None) -> Path:
    """A one-device SSH lab whose identity (or ssh_config) file does not exist."""
    missing = missing or tmp_path / "no-such-key"
    lab = tmp_path / "ssh-lab.yaml"
    lab.write_text(
        textwrap.dedent(
            f"""\
            schema_version: 1
            name: sshlab
            devices:
              - name: board
                platform: generic-linux
                host: 127.0.0.1
                port: 1
                user: nobody
                {key}: {missing}
                known_hosts: {tmp_path / "known_hosts"}
                python: {sys.executable}
                runtimes: [onnxruntime]
                threads: 1
            """
        ),
        encoding="utf-8",
    )
    return lab


def test_a_run_where_every_job_was_skipped_is_exit_2_with_the_first_reason(
    tmp_path: Path, env: dict[str, str], tiny_catalog: Path
) -> None:
    db = tmp_path / "s.sqlite"
    lab = ssh_lab(tmp_path)
    proc = edgebench(
        *base_run(lab, tiny_catalog, db, "--report", tmp_path / "r.html", "--backends", "onnxruntime"),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgebench: error: ")]
    assert len(errors) == 1 and "were skipped, nothing was measured" in errors[0], proc.stderr
    assert f"identity file {tmp_path / 'no-such-key'} does not exist" in errors[0]
    assert "Traceback" not in proc.stderr
    (run,) = runs_of(db)
    assert run["status"] == "skipped" and f"run: {run['id']} (skipped)" in proc.stdout
    assert leftover_tmp(env) == []


# ---- 6. reading never writes -----------------------------------------------------------------------
def test_results_of_a_missing_database_says_not_found_and_creates_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "x" / "nonexistent" / "dir" / "missing.sqlite"
    for command in ("results", "report"):
        proc = edgebench(command, "--db", missing, env=env, cwd=tmp_path)
        one_error_line(proc, "--db:", f"results database {missing} not found", "fix:")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["results", "report"])
def test_reading_an_unrelated_sqlite_file_is_refused_and_leaves_it_alone(
    tmp_path: Path, env: dict[str, str], command: str
) -> None:
    other = tmp_path / "other.sqlite"
    kept = foreign_sqlite(other)
    proc = edgebench(command, "--db", other, env=env, cwd=tmp_path)
    one_error_line(proc, "--db:", f"{other} is not an edgebench results database", "schema_info")
    assert other.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("other")) == ["other.sqlite"]


def test_run_into_an_unrelated_sqlite_file_is_refused_too(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    other = tmp_path / "other.sqlite"
    kept = foreign_sqlite(other)
    proc = edgebench(*base_run(local_lab, tiny_catalog, other, "--report", tmp_path / "r.html"), env=env, cwd=tmp_path)
    one_error_line(proc, f"{other} is not an edgebench results database", "a new file name")
    assert other.read_bytes() == kept


# ---- 7. settings that must be finite ---------------------------------------------------------------
def test_an_infinite_time_cap_is_refused(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    db = tmp_path / "f.sqlite"
    proc = edgebench(*base_run(local_lab, tiny_catalog, db, "--max-duration", "inf"), env=env, cwd=tmp_path)
    one_error_line(proc, "--max-duration: inf is not a finite number of seconds", "fix:")
    assert not db.exists()


def test_an_infinite_time_cap_in_the_lab_file_is_refused_naming_it(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    lab = tmp_path / "inf-lab.yaml"
    lab.write_text(local_lab.read_text(encoding="utf-8") + "measure:\n  max_duration_s: .inf\n", encoding="utf-8")
    db = tmp_path / "f.sqlite"
    one_error_line(edgebench(*base_run(lab, tiny_catalog, db), env=env, cwd=tmp_path), str(lab), "max_duration_s")
    assert not db.exists()


# ---- 8. lab up never replaces a hand-written lab ----------------------------------------------------
def test_lab_up_refuses_to_replace_a_hand_written_lab_file(tmp_path: Path, env: dict[str, str]) -> None:
    victim = tmp_path / "victim.yaml"
    victim.write_text("schema_version: 1\nname: mine\ndevices: []\n", encoding="utf-8")
    proc = edgebench("lab", "up", "--devices", "1", "--out", victim, env=env, cwd=tmp_path)
    one_error_line(proc, "--out:", f"{victim} exists and was not written by 'edgebench lab up'", "--force")
    assert victim.read_text(encoding="utf-8") == "schema_version: 1\nname: mine\ndevices: []\n"
    assert not state_dir(victim).exists(), "no server was started"


def test_lab_up_into_a_directory_is_refused_before_any_server_starts(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "labs"
    folder.mkdir()
    proc = edgebench("lab", "up", "--devices", "1", "--out", folder, env=env, cwd=tmp_path)
    one_error_line(proc, "--out:", f"{folder} is a directory", str(folder / "loopback.yaml"))
    assert not state_dir(folder).exists() and list(folder.iterdir()) == []


def test_lab_up_may_replace_its_own_inventory_or_any_file_with_force(tmp_path: Path) -> None:
    own = tmp_path / "own.yaml"
    own.write_text("# A loopback lab: 1 OpenSSH server(s) on 127.0.0.1, written by 'edgebench lab up'.\n")
    check_out(own)
    hand = tmp_path / "hand.yaml"
    hand.write_text("schema_version: 1\n")
    with pytest.raises(ConfigError, match="add --force"):
        lab_up(1, hand)
    check_out(hand, force=True)
    check_out(tmp_path / "new.yaml")


# ---- 9. devices check, interrupted runs -------------------------------------------------------------
@pytest.mark.parametrize("key", ["identity", "ssh_config"])
def test_devices_check_with_a_missing_local_file_is_exit_2(tmp_path: Path, env: dict[str, str], key: str) -> None:
    missing = tmp_path / f"no-such-{key}"
    lab = ssh_lab(tmp_path, key, missing)
    proc = edgebench("devices", "check", "--lab", lab, "--db", tmp_path / "h.sqlite", env=env, cwd=tmp_path)
    one_error_line(proc, str(lab), f"devices[0].{key}", f"{key} file {missing} of device 'board' does not exist")
    assert not (tmp_path / "h.sqlite").exists()


@pytest.mark.slow
def test_an_interrupted_run_is_marked_interrupted(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    db = tmp_path / "int.sqlite"
    args = base_run(local_lab, tiny_catalog, db, "--report", tmp_path / "r.html", "--min-duration", "3")
    found = shutil.which("edgebench")
    assert found
    proc = subprocess.Popen(
        [found, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # the first job's line: the run is recorded and the second job runs
            if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR")):
                break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        rest = proc.stderr.read()  # what the loop above did not read: read() also drains its buffer
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert rest.splitlines()[-1:] == ["edgebench: interrupted"] and "Traceback" not in rest
    (run,) = runs_of(db)
    assert run["status"] == "interrupted" and run["finished_at"]
    assert leftover_tmp(env) == []


# A simulated bug: edgebench's own code raising. The first job raises once the run is recorded.
_BUG = """
import harness.pipeline

def run_job(self, job):
    self.start()
    raise ZeroDivisionError("simulated bug in run_job")

harness.pipeline.Pipeline.run_job = run_job
"""


def test_a_bug_is_exit_3_in_one_line_not_a_failed_gate_and_its_run_is_marked_error(
    tmp_path: Path, env: dict[str, str], local_lab: Path, tiny_catalog: Path
) -> None:
    """A bug in edgebench (simulated: a sitecustomize replaces run_job with one that raises) exits 3, pytest's
    code for an internal error, so a nightly job does not read a crash as a regression (exit 1); one line says
    what and where, and the run it had started is marked error, not left running."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_BUG, encoding="utf-8")
    buggy = {**env, "PYTHONPATH": str(hook)}
    db = tmp_path / "bug.sqlite"
    proc = edgebench(*base_run(local_lab, tiny_catalog, db, "--report", tmp_path / "r.html"), env=buggy, cwd=tmp_path)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgebench:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edgebench: internal error: ZeroDivisionError: simulated bug in run_job at ")
    # The simulated bug lives outside harness/, so the innermost edgebench frame is the one that called it.
    assert " at harness/" in lines[0], lines[0]
    assert "a bug in edgebench" in lines[0] and "fix: rerun with --debug" in lines[0]
    (run,) = runs_of(db)
    assert run["status"] == "error" and run["finished_at"]
    assert leftover_tmp(env) == []
    debug = edgebench(*base_run(local_lab, tiny_catalog, db, "--debug"), env=buggy, cwd=tmp_path)
    assert debug.returncode != 0 and "ZeroDivisionError: simulated bug" in debug.stderr and "Traceback" in debug.stderr


# ---- 10. help and the results table ------------------------------------------------------------------
def test_help_shows_flags_without_values_and_the_global_flags(tmp_path: Path, env: dict[str, str]) -> None:
    top = edgebench("--help", env=env, cwd=tmp_path).stdout
    assert "--debug" in top and "--verbose" in top and "<bool>" not in top
    run = edgebench("run", "--help", env=env, cwd=tmp_path).stdout
    assert "<bool>" not in run
    quick = next(line for line in run.splitlines() if "--quick" in line)
    assert quick.split()[:2] == ["--quick", "Shorter"]
    assert "--debug" in run and "--verbose" in run


def test_results_runs_with_the_pytest_benchmark_format_is_refused(
    tmp_path: Path, env: dict[str, str], make_run: MakeRun, make_result: MakeResult
) -> None:
    db = tmp_path / "results.sqlite"
    seeded_db(db, make_run, make_result)
    proc = edgebench("results", "--db", db, "--runs", "--format", "pytest-benchmark", env=env, cwd=tmp_path)
    one_error_line(proc, "--runs:", "pytest-benchmark", "fix:")


def test_the_results_table_at_80_columns_keeps_whole_job_ids(
    tmp_path: Path, env: dict[str, str], make_run: MakeRun, make_result: MakeResult
) -> None:
    db = tmp_path / "results.sqlite"
    seeded_db(db, make_run, make_result)
    store = Store(db)
    long_id = "a-rather-long-model-name/onnxruntime-int8-dynamic-t4-224/nightly-lab-device-07"
    try:
        store.add_result(make_result("run000000001", long_id))
    finally:
        store.close()
    proc = edgebench("results", "--db", db, env={**env, "COLUMNS": "80"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    assert "…" not in proc.stdout
    # A folded id continues on the next lines of its cell; read the first column back.
    cells = [line.split("│")[1].strip() for line in proc.stdout.splitlines() if line.count("│") > 2]
    assert long_id in "".join(cells) and JOB in "".join(cells)
    runs = edgebench("results", "--db", db, "--runs", "--format", "json", env=env, cwd=tmp_path)
    assert [r["id"] for r in json.loads(runs.stdout)] == ["run000000001"]


def test_results_by_run_with_runs_is_refused(
    tmp_path: Path, env: dict[str, str], make_run: MakeRun, make_result: MakeResult
) -> None:
    db = tmp_path / "results.sqlite"
    seeded_db(db, make_run, make_result)
    one_error_line(edgebench("results", "--db", db, "--runs", "--run", "run0", env=env, cwd=tmp_path), "--runs:")


def test_no_traceback_unless_debug(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "missing.sqlite"
    assert "Traceback" not in edgebench("results", "--db", missing, env=env, cwd=tmp_path).stderr
    debug = edgebench("results", "--db", missing, "--debug", env=env, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
