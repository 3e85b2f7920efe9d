"""What the SQLite store leaves on disk: a creation cut short leaves no tables; a reader leaves the
directory as it found it, and reads while a writer in another process has the file open."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection

from harness.errors import ConfigError, StoreError
from harness.records import JobResult
from harness.store import RunInfo, Store
from harness.store import schema as store_schema

MakeResult = Callable[..., JobResult]
MakeRun = Callable[..., RunInfo]


def tables_in(path: Path) -> set[str]:
    """The tables of a SQLite file, read without changing it (mode=ro)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def snapshot(path: Path) -> tuple[list[str], str, int]:
    """The names in the database's directory, the database's hash and its mtime."""
    names = sorted(p.name for p in path.parent.iterdir())
    return names, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


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
    time.sleep(2.0)  # the second is waiting at its BEGIN by now, even on a busy machine (it waits up to 5 s)
    go_on.set()
    first.join(30)
    second.join(30)
    assert errors == []
    reader = Store(path, read_only=True)
    reader.close()


@contextmanager
def unchanged(path: Path) -> Iterator[None]:
    before = snapshot(path)
    yield
    assert snapshot(path) == before, "the directory and the database are as the reader found them"


def test_reading_a_database_its_writer_closed_leaves_the_directory_as_it_was(
    tmp_path: Path, make_result: MakeResult, make_run: MakeRun
) -> None:
    path = tmp_path / "results.sqlite"
    writer = Store(path)
    writer.start_run(make_run("night0000001"))
    writer.add_result(make_result("night0000001"))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    with unchanged(path):
        assert read_everything(path, "night0000001") == ["tiny-cnn/onnxruntime-fp32/local"]
        assert read_everything(path, "night0000001") == ["tiny-cnn/onnxruntime-fp32/local"]


def test_a_writer_process_that_exits_without_closing_its_store_leaves_a_file_a_reader_leaves_alone(
    tmp_path: Path,
) -> None:
    # A pytest session's store is never closed: the process just ends.
    path = tmp_path / "results.sqlite"
    code = (
        "import sys\nfrom harness.store import RunInfo, Store\n"
        "store = Store(sys.argv[1])\n"
        "store.start_run(RunInfo(id='exit00000001', started_at='2026-11-24T10:00:00+00:00', host='h',"
        " harness_version='0.1.0'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    with unchanged(path):
        assert read_everything(path, "exit00000001") == []


# The other process writes a run, then holds a second one in an open transaction until told to commit.
HOLD_A_WRITE = """
import sys
from harness.store import RunInfo, Store
from harness.store.schema import runs
def run(i):
    return RunInfo(id=f"hold0000000{i}", started_at=f"2026-11-24T10:0{i}:00+00:00", host="h", harness_version="0.1.0")
store = Store(sys.argv[1])
store.start_run(run(1))
with store.engine.begin() as conn:
    conn.execute(runs.insert().values(status="running", **run(2).__dict__))
    print("holding", flush=True)
    sys.stdin.readline()
print("committed", flush=True)
sys.stdin.readline()
store.close()
"""


def test_a_reader_reads_while_a_writer_in_another_process_holds_the_database_open(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    Store(path).close()
    writer = python(HOLD_A_WRITE, path)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline().strip() == "holding"
        with unchanged(path):  # the writer's -wal and -shm are there before and after
            started = time.monotonic()
            reader = Store(path, read_only=True)
            assert [r["id"] for r in reader.list_runs()] == ["hold00000001"], "committed rows only"
            assert time.monotonic() - started < 3, "the reader did not wait for the writer"
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "committed"
            assert [r["id"] for r in reader.list_runs()] == ["hold00000002", "hold00000001"]
            reader.close()
        assert {"results.sqlite-wal", "results.sqlite-shm"} <= {p.name for p in tmp_path.iterdir()}
    finally:
        writer.stdin.write("\n")
        writer.stdin.close()
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"], "its last writer cleaned up"


def test_a_writer_that_closes_while_a_reader_reads_leaves_its_wal_to_the_next_writer(
    tmp_path: Path, make_run: MakeRun
) -> None:
    path = tmp_path / "results.sqlite"
    writer = Store(path)
    writer.start_run(make_run("late00000001"))
    reader = Store(path, read_only=True)
    assert reader.resolve_run() == "late00000001"
    writer.close()  # not the last connection: it may not leave WAL mode, and the reader may not clean up
    assert reader.resolve_run() == "late00000001"
    reader.close()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["results.sqlite", "results.sqlite-shm", "results.sqlite-wal"]
    with unchanged(path):  # the next reader uses them and leaves them
        assert read_everything(path, "late00000001") == []
    Store(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    with unchanged(path):
        assert read_everything(path, "late00000001") == []


def test_a_database_an_older_edgebench_left_in_wal_mode_gets_only_sqlites_wal_and_shm_from_a_reader(
    tmp_path: Path, make_run: MakeRun
) -> None:
    # The one trace left: SQLite needs a -shm (and makes an empty -wal) to read a WAL file safely while
    # a writer may start, and a read-only connection cannot remove them. The database's bytes stay.
    path = tmp_path / "results.sqlite"
    writer = Store(path)
    writer.start_run(make_run("old000000001"))
    writer.close()
    older = sqlite3.connect(path)
    assert older.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    older.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    kept = snapshot(path)
    assert read_everything(path, "old000000001") == []
    assert snapshot(path)[1:] == kept[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite", "results.sqlite-shm", "results.sqlite-wal"]
    assert (tmp_path / "results.sqlite-wal").stat().st_size == 0
    Store(path).close()  # the next run's writer leaves the file in rollback-journal mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


# Another program writes a large transaction to the file and dies midway: a hot -journal is left.
DIE_MID_WRITE = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=1")  # pages reach the database file before the commit
conn.execute("BEGIN IMMEDIATE")
for i in range(2000):
    conn.execute("INSERT INTO runs (id, started_at, status, host, harness_version) VALUES (?, 't', 's', ?, 'v')",
                 (f"dead{i:08d}", "x" * 200))
os._exit(9)
"""


def test_a_reader_of_a_file_holding_a_write_cut_short_says_so_and_a_writer_rolls_it_back(
    tmp_path: Path, make_run: MakeRun
) -> None:
    path = tmp_path / "results.sqlite"
    writer = Store(path)
    writer.start_run(make_run("kept00000001"))
    writer.close()
    assert subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(path)], timeout=120).returncode == 9
    assert (tmp_path / "results.sqlite-journal").exists()
    with unchanged(path), pytest.raises(StoreError) as refused:
        Store(path, read_only=True)
    assert refused.value.one_line() == (
        f"cannot open the results database {path}: a write to it was cut short (results.sqlite-journal is "
        "beside it) and a reader may not roll it back; fix: run edgebench run --db with it once (a writer "
        "rolls the write back), or pass another database"
    )
    Store(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    reader = Store(path, read_only=True)
    try:
        assert [r["id"] for r in reader.list_runs()] == ["kept00000001"]
    finally:
        reader.close()
