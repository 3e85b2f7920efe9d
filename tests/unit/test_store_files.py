"""What the SQLite store leaves on disk: a creation cut short leaves no tables."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection

from harness.errors import ConfigError
from harness.store import RunInfo, Store
from harness.store import schema as store_schema

MakeRun = Callable[..., RunInfo]


def tables_in(path: Path) -> set[str]:
    """The tables of a SQLite file, read without changing it (mode=ro)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def read_everything(path: Path, run_id: str) -> list[str]:
    """What ``edgebench results`` and ``report`` do: open read-only, query, close; the jobs of ``run_id``."""
    reader = Store(path, read_only=True)
    try:
        assert reader.resolve_run(run_id) == run_id
        reader.list_runs(), reader.run_info(run_id), reader.device_facts(run_id), reader.health()
        return [r["job_id"] for r in reader.results(run_id)]
    finally:
        reader.close()


def python(code: str, path: Path) -> subprocess.Popen[str]:
    """``code`` in another Python process with ``path`` as its argument; its stdin and stdout are pipes of text."""
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


# The other process stops in the middle of creating the schema: the tables of version 1 and the version
# row are made, device_health (version 2) is next.
CREATE_AND_HANG = """
import sys, time
from harness.store import Store, schema
def hang(conn):
    print("inside", flush=True)
    time.sleep(600)
schema.MIGRATIONS[2] = hang
Store(sys.argv[1])
"""


def test_a_writer_killed_while_creating_a_database_leaves_no_tables_and_the_next_open_creates_it(
    tmp_path: Path, make_run: MakeRun
) -> None:
    path = tmp_path / "new.sqlite"
    proc = python(CREATE_AND_HANG, path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)  # a crash: no Python cleanup, no rollback by the dying process
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert tables_in(path) == set(), "the tables and the version row went with the transaction"
    with pytest.raises(ConfigError, match="is not an edgebench results database"):
        Store(path, read_only=True)
    writer = Store(path)
    try:
        writer.start_run(make_run("after0000001"))
    finally:
        writer.close()
    assert read_everything(path, "after0000001") == []
    assert {"schema_info", "runs", "results", "samples", "metrics", "device_health"} <= tables_in(path)


def test_two_writers_creating_one_new_database_at_once_both_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first stops inside its creation transaction; the second starts then, finds no tables yet and
    # must wait for the first (its BEGIN takes the write lock) instead of creating them a second time.
    path = tmp_path / "new.sqlite"
    real = store_schema.MIGRATIONS[2]
    inside, go_on = threading.Event(), threading.Event()

    def slow(conn: Connection) -> None:
        inside.set()
        assert go_on.wait(30)
        real(conn)

    monkeypatch.setitem(store_schema.MIGRATIONS, 2, slow)
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            Store(path).close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    first = threading.Thread(target=open_and_close)
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=open_and_close)
    second.start()
    time.sleep(0.5)  # the second is waiting at its BEGIN now (it waits up to the 5 s busy timeout)
    go_on.set()
    first.join(30)
    second.join(30)
    assert errors == []
    reader = Store(path, read_only=True)
    reader.close()
