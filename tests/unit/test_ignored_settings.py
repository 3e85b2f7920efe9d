"""Settings the run would ignore without a word, and a store failure that would hide why a run ended."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from harness.cli.runs import finish_on_exit
from harness.errors import ConfigError, RunnerError, StoreError
from harness.lab.inventory import load_lab
from harness.measure.throttle import assess_runs
from harness.pipeline import Pipeline, measure_settings, stop_on_flag
from harness.scenarios import process_facts
from harness.store import Store
from tests.bad_input import line_number
from tests.unit.test_inventory import _measure_lab
from tests.unit.test_throttle import facts

# ---- a fixed count and the stop rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "given"),
    [
        ("--max-duration", {"max_duration_s": 2.0}),
        ("--min-duration", {"min_duration_s": 0.5}),
        ("--half-width", {"max_half_width": 0.02}),
        ("--stop-on", {"stop_on": stop_on_flag("p99")}),
    ],
)
def test_a_stop_rule_flag_beside_the_labs_fixed_count_is_refused_naming_both(
    tmp_path: Path, flag: str, given: dict[str, Any]
) -> None:
    path = _measure_lab(tmp_path, "iterations: 100\n")
    lab = load_lab(path)
    assert measure_settings(lab).spec()["stop"] == {"iterations": 100}, "alone, the count is the stop rule"
    with pytest.raises(ConfigError) as info:
        measure_settings(lab, **given)
    text = info.value.one_line()
    assert info.value.key == flag and text.startswith(f"{flag}: {flag} has no effect: ")
    assert f"{path.resolve()}'s measure.iterations is 100" in text
    assert text.endswith(f"fix: drop measure.iterations to use the stop rule, or drop {flag}")
    assert measure_settings(lab, batch=2, repeats=3).repeats == 3, "flags the count does not replace still apply"


@pytest.mark.parametrize("key", ["min_iterations: 50", "max_duration_s: 3.0", "max_half_width: 0.02", "stop_on: [p99]"])
def test_a_stop_rule_key_beside_iterations_in_the_lab_file_is_refused_at_its_line(tmp_path: Path, key: str) -> None:
    path = _measure_lab(tmp_path, f"iterations: 100\n{key}\n")
    name = key.split(":")[0]
    with pytest.raises(ConfigError) as info:
        measure_settings(load_lab(path))
    error = info.value
    assert (error.file, error.line, error.key) == (path.resolve(), line_number(path, name), f"measure.{name}")
    assert "has no effect beside measure.iterations: 100" in error.one_line()
    assert error.one_line().endswith(f"fix: drop measure.iterations to use the stop rule, or drop measure.{name}")


def test_quick_beside_a_fixed_count_is_not_refused(tmp_path: Path) -> None:
    """--quick also turns throttle retries off, which a fixed count keeps: it is not a stop-rule flag."""
    settings = measure_settings(load_lab(_measure_lab(tmp_path, "iterations: 100\n")), quick=True)
    assert settings.spec()["stop"] == {"iterations": 100} and settings.throttle_retries == 0


# ---- a pooled interleaved variant is judged on every process ------------------------------------------


def test_a_variant_timed_in_several_processes_is_judged_on_each_of_them() -> None:
    quiet, hot = facts(), facts(after_ns=[12_500] * 7)
    pooled = process_facts([hot, quiet])
    assert pooled["repeat_facts"] == [quiet], "the other processes' facts are kept beside the first's"
    verdict = assess_runs(pooled)
    assert verdict.throttled and verdict.reasons[0].startswith("run 1 of 2: calibration workload 25% slower")
    assert "repeat_facts" not in process_facts([quiet]), "one process: its facts as a single job records them"


# ---- a failed write does not hide the error that ended the run -------------------------------------------


def fail_writes(store: Store) -> None:
    """Every INSERT and UPDATE fails as SQLite fails on a full disk (a stand-in: filling a real disk needs a mount)."""

    def refuse(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(store.engine, "before_cursor_execute", refuse)


def test_a_run_that_cannot_be_marked_reports_the_error_that_ended_it(
    tmp_path: Path, local_lab: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "results.sqlite"
    pipeline = Pipeline(load_lab(local_lab), [], Store(db))
    pipeline.start()
    fail_writes(pipeline.results_store())

    def work() -> None:
        raise RunnerError("crashed in the conv kernel", device="local", command_exit=-6)

    with caplog.at_level(logging.ERROR, logger="harness.pipeline"), pytest.raises(RunnerError, match="conv kernel"):
        finish_on_exit(pipeline, work)
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "harness.pipeline"]
    assert f"run {pipeline.run_id} could not be marked error and stays 'running'" in logged
    assert f"database write failed in {db}: database or disk is full" in logged
    assert f"fix: check the free space and permissions of {tmp_path}, then run again" in logged


def test_a_mark_that_fails_with_no_other_error_is_raised(tmp_path: Path, local_lab: Path) -> None:
    pipeline = Pipeline(load_lab(local_lab), [], Store(tmp_path / "results.sqlite"))
    pipeline.start()
    fail_writes(pipeline.results_store())
    with pytest.raises(StoreError, match="database or disk is full; fix: check the free space"):
        pipeline.finish()
