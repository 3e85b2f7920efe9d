"""The SQLite results store: migrations, the flat record, raw samples, atomic writes, run lookup."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, event, func, inspect, select

from harness.errors import ConfigError, StoreError
from harness.records import JobResult
from harness.store import RunInfo, Store
from harness.store import db as store_db
from harness.store.schema import (
    SCHEMA_VERSION,
    metrics,
    migrate,
    results,
    runs,
    samples,
    schema_info,
)
from harness.store.schema import _v1 as create_v1_tables
from tests.bad_input import fail_schema_creation_midway, foreign_sqlite

MakeResult = Callable[..., JobResult]
MakeRun = Callable[..., RunInfo]


def version_of(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(schema_info.c.version)).scalar_one())
    finally:
        engine.dispose()


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "results.sqlite")
    yield s
    s.close()


def test_a_fresh_database_is_created_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "results.sqlite"
    store = Store(path)
    try:
        assert path.is_file(), "the parent directories are created"
        assert version_of(store.url) == SCHEMA_VERSION
        tables = set(inspect(store.engine).get_table_names())
        assert {"schema_info", "runs", "results", "samples", "metrics", "device_health"} <= tables
    finally:
        store.close()
    # Opening it again is a no-op migration.
    Store(path).close()
    assert version_of(f"sqlite:///{path}") == SCHEMA_VERSION


def _version_1_database(url: str, run: RunInfo, result: JobResult) -> None:
    """A database as a version-1 edgebench left it, holding one run with one result (the store's own
    writes use only version-1 tables, so they stand in for the old code's)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        create_v1_tables(conn)
        conn.execute(schema_info.insert().values(id=1, version=1))
    engine.dispose()
    assert "device_health" not in inspect(create_engine(url)).get_table_names()
    old = Store.__new__(Store)
    old.url, old.engine = url, create_engine(url)
    old.start_run(run)
    old.add_result(result)
    old.engine.dispose()


def test_a_version_1_database_migrates_without_losing_rows(
    tmp_path: Path, make_result: MakeResult, make_run: MakeRun
) -> None:
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    stored = make_result("oldrun000001")
    _version_1_database(url, make_run("oldrun000001"), stored)
    assert version_of(url) == 1

    store = Store(path)
    try:
        assert version_of(url) == SCHEMA_VERSION
        assert store.resolve_run("latest") == "oldrun000001"
        assert store.results("oldrun000001") == [json.loads(json.dumps(stored.flat()))]
        np.testing.assert_array_equal(store.samples_of("oldrun000001", stored.job_id), stored.samples_ns)
        # The version-2 table works.
        store.record_health("2026-11-24T10:00:00+00:00", "local", "healthy", "", {"cpu_count": 2})
        assert [h["device"] for h in store.health()] == ["local"]
    finally:
        store.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    Store(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer .*fix: upgrade edgebench"):
        Store(path)
    # The refusing writer left the newer edgebench's file as it was: not switched to WAL, no -wal or -shm.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.sqlite"]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_migrate_is_idempotent(store: Store) -> None:
    with store.engine.begin() as conn:
        assert migrate(conn) == SCHEMA_VERSION
    assert version_of(store.url) == SCHEMA_VERSION


def test_results_roundtrip_with_every_record_field(
    store: Store, make_result: MakeResult, make_run: MakeRun, record_fields: tuple[str, ...]
) -> None:
    store.start_run(make_run("run000000001"))
    first = make_result("run000000001", "tiny-cnn/onnxruntime-fp32/local", metrics={"top1_acc": 0.97})
    second = make_result("run000000001", "other/onnxruntime-fp32/local", n=50, seed=1)
    store.add_result(first)
    store.add_result(second)
    records = store.results("run000000001")
    assert [r["job_id"] for r in records] == [first.job_id, second.job_id], "in the order recorded"
    for record, result in zip(records, (first, second), strict=True):
        missing = [f for f in record_fields if f not in record]
        assert not missing
        assert record == json.loads(json.dumps(result.flat()))
    top = records[0]
    assert top["valid"] is True and top["invalid_reasons"] == []
    for q in ("p50", "p95", "p99"):
        low, high = top[f"{q}_ci_ms"]
        assert low <= top[f"{q}_ms"] <= high
    assert top["top1_acc"] == 0.97
    assert top["input_shape"] == [1, 3, 16, 16]
    # 50 samples: P50 has an interval, P99 does not, and the record says why.
    small = records[1]
    assert small["valid"] is False
    assert small["p99_ci_ms"] is None and small["p50_ci_ms"] is not None
    assert any("P99 needs n >= 368" in reason for reason in small["invalid_reasons"])
    # Metrics are rows as well, so they can be queried without parsing JSON.
    with store.engine.connect() as conn:
        rows = conn.execute(select(metrics.c.name, metrics.c.value, metrics.c.text)).all()
    by_name = {r.name: (r.value, r.text) for r in rows}
    assert by_name["top1_acc"] == (0.97, None)
    assert by_name["stop_reason"] == (None, '"converged"')


def test_device_facts_and_run_info_come_back(store: Store, make_result: MakeResult, make_run: MakeRun) -> None:
    store.start_run(make_run("run000000001"))
    store.add_result(make_result("run000000001"))
    store.finish_run("run000000001", "2026-11-24T10:05:00+00:00", "passed")
    info = store.run_info("run000000001")
    assert info["status"] == "passed" and info["host"] == "testhost" and info["lab_name"] == "testlab"
    assert store.device_facts("run000000001")["local"]["cpu_model"] == "test CPU"


def test_raw_samples_roundtrip_bit_exact_and_compressed(
    store: Store, make_result: MakeResult, make_run: MakeRun
) -> None:
    store.start_run(make_run("run000000001"))
    result = make_result("run000000001", n=20_000)
    # Extremes a nanosecond clock can produce must survive too.
    raw = result.samples_ns
    assert raw is not None
    raw[:3] = [1, 2**62, 123_456_789_012]
    store.add_result(result)
    back = store.samples_of("run000000001", result.job_id)
    assert back.dtype == np.int64
    assert back.tobytes() == raw.astype("<i8").tobytes()
    with store.engine.connect() as conn:
        row = conn.execute(select(samples.c.codec, samples.c.count, samples.c.data)).mappings().one()
    assert row["codec"] == "zlib-int64le" and row["count"] == 20_000
    assert len(row["data"]) < 0.6 * raw.nbytes


def test_samples_of_an_unknown_job_is_empty(store: Store) -> None:
    assert store.samples_of("nope", "nope").size == 0


def test_a_result_for_an_unknown_run_is_refused_and_leaves_nothing(store: Store, make_result: MakeResult) -> None:
    # The foreign key holds: a result cannot point at a run that was never started.
    with pytest.raises(StoreError, match="database write failed"):
        store.add_result(make_result("never-started"))
    assert count(store, results) == 0 and count(store, samples) == 0 and count(store, metrics) == 0


def test_a_write_failing_midway_leaves_no_partial_result(
    store: Store, make_result: MakeResult, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.start_run(make_run("run000000001"))
    store.add_result(make_result("run000000001", "kept/onnxruntime-fp32/local"))
    real_row = store_db._metric_row

    def bad_row(result_id: int, name: str, value: Any) -> dict[str, Any]:
        row = real_row(result_id, name, value)
        if name == "poison":
            row["name"] = None  # violates NOT NULL after the result and its samples were inserted
        return row

    monkeypatch.setattr(store_db, "_metric_row", bad_row)
    with pytest.raises(StoreError, match="database write failed"):
        store.add_result(make_result("run000000001", "lost/onnxruntime-fp32/local", metrics={"poison": 1.0}))
    assert [r["job_id"] for r in store.results("run000000001")] == ["kept/onnxruntime-fp32/local"]
    assert count(store, results) == 1 and count(store, samples) == 1
    assert store.samples_of("run000000001", "lost/onnxruntime-fp32/local").size == 0


def test_a_full_database_names_its_file_and_how_to_get_the_write_through(
    tmp_path: Path, make_result: MakeResult, make_run: MakeRun
) -> None:
    """SQLite's own "database or disk is full", met for real: each connection may not grow the file
    (``PRAGMA max_page_count`` at its current size), as on a disk with no free block left."""
    path = tmp_path / "full.sqlite"
    store = Store(path)
    try:
        store.start_run(make_run("run000000001"))
        event.listen(store.engine, "checkout", lambda conn, *_: conn.execute("PRAGMA max_page_count = 1"))
        store.engine.dispose()  # the pooled connections were opened before the limit
        with pytest.raises(StoreError) as info:
            store.add_result(make_result("run000000001", n=20_000))
        text = info.value.one_line()
        assert text.startswith(f"database write failed in {path}: database or disk is full; fix: ")
        fix = f"fix: check the free space and permissions of {tmp_path}, then run again (or pass --db elsewhere)"
        assert text.endswith(fix)
        assert store.results("run000000001") == [], "the write was all or nothing"
    finally:
        store.close()


def test_a_duplicate_run_id_is_a_store_error(store: Store, make_run: MakeRun) -> None:
    store.start_run(make_run("run000000001"))
    with pytest.raises(StoreError, match="database write failed"):
        store.start_run(make_run("run000000001"))
    assert count(store, runs) == 1


def test_resolve_run_latest_and_by_prefix(store: Store, make_run: MakeRun) -> None:
    with pytest.raises(ConfigError, match=r"no runs yet.*fix: run edgebench run first"):
        store.resolve_run("latest")
    store.start_run(make_run("aaaa11112222", "2026-11-24T09:00:00.000+00:00"))
    store.start_run(make_run("aaaa33334444", "2026-11-24T11:00:00.000+00:00"))
    store.start_run(make_run("bbbb55556666", "2026-11-24T10:00:00.000+00:00"))
    assert store.resolve_run("latest") == "aaaa33334444"
    assert store.resolve_run() == "aaaa33334444"
    assert store.resolve_run("bbbb") == "bbbb55556666"
    assert store.resolve_run("aaaa1") == "aaaa11112222"
    assert store.resolve_run("aaaa11112222") == "aaaa11112222"
    with pytest.raises(ConfigError, match="run 'aaaa' is ambiguous") as ambiguous:
        store.resolve_run("aaaa")
    assert ambiguous.value.key == "--run"
    with pytest.raises(ConfigError, match="run 'cccc' not found"):
        store.resolve_run("cccc")
    # LIKE wildcards typed by a user are characters, not patterns.
    for wildcard in ("%", "_", "aaaa_"):
        with pytest.raises(ConfigError, match="not found"):
            store.resolve_run(wildcard)
    assert [r["id"] for r in store.list_runs()] == ["aaaa33334444", "bbbb55556666", "aaaa11112222"]


def test_delete_run_removes_its_results_samples_and_metrics(
    store: Store, make_result: MakeResult, make_run: MakeRun
) -> None:
    store.start_run(make_run("run000000001"))
    store.add_result(make_result("run000000001"))
    store.delete_run("run000000001")
    assert count(store, runs) == 0 and count(store, results) == 0
    assert count(store, samples) == 0 and count(store, metrics) == 0


def test_an_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=f"cannot create the directory of the results database {blocker}"):
        Store(blocker / "results.sqlite")


def test_a_reader_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b" / "missing.sqlite"
    with pytest.raises(ConfigError, match=rf"--db: results database {missing} not found; fix: "):
        Store(missing, read_only=True)
    assert not (tmp_path / "a").exists()


def test_a_reader_refuses_a_database_without_the_schema_table_and_leaves_it_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    kept = foreign_sqlite(other)
    for read_only in (True, False):
        with pytest.raises(ConfigError, match=r"is not an edgebench results database .*schema_info"):
            Store(other, read_only=read_only)
    assert other.read_bytes() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["other.sqlite"], "no -wal or -shm beside it"


def test_a_schema_creation_failing_midway_leaves_no_tables_and_the_next_open_creates_it(
    tmp_path: Path, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "new.sqlite"
    fail_schema_creation_midway(monkeypatch)
    with pytest.raises(StoreError, match=r"cannot open or migrate the results database .*already exists"):
        Store(path)
    engine = create_engine(f"sqlite:///{path}")
    assert inspect(engine).get_table_names() == [], "not one table, index or version row is left"
    engine.dispose()
    monkeypatch.undo()
    store = Store(path)
    try:
        store.start_run(make_run("new000000001"))
        assert version_of(store.url) == SCHEMA_VERSION
    finally:
        store.close()


def test_a_database_whose_creation_was_cut_short_is_finished_by_a_writer_and_refused_by_a_reader(
    tmp_path: Path, make_run: MakeRun
) -> None:
    # As an older edgebench left one, when pysqlite committed each CREATE TABLE on its own: a crash after
    # the tables, before the version row (a plain engine still creates them that way).
    path = tmp_path / "cut.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        create_v1_tables(conn)
    engine.dispose()
    with pytest.raises(ConfigError, match=r"whose schema was never finished .*fix: run edgebench run --db"):
        Store(path, read_only=True)
    writer = Store(path)
    try:
        writer.start_run(make_run("cut000000001"))
        assert writer.resolve_run("latest") == "cut000000001"
    finally:
        writer.close()
    check = create_engine(f"sqlite:///{path}")
    with check.connect() as conn:
        assert conn.execute(select(schema_info.c.version)).scalar_one() == SCHEMA_VERSION
    check.dispose()


def test_a_reader_neither_migrates_nor_writes(tmp_path: Path, make_result: MakeResult, make_run: MakeRun) -> None:
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    _version_1_database(url, make_run("oldrun000001"), make_result("oldrun000001"))
    reader = Store(path, read_only=True)
    try:
        assert reader.resolve_run("latest") == "oldrun000001"
        assert len(reader.results("oldrun000001")) == 1
        with pytest.raises(StoreError, match="database write failed"):
            reader.start_run(make_run("newrun000001"))
    finally:
        reader.close()
    assert version_of(url) == 1, "reading did not migrate"


def test_a_url_is_kept_as_a_url_and_its_password_is_not_shown(tmp_path: Path) -> None:
    assert store_db.database_path("postgresql://u:pw@127.0.0.1:1/x") is None
    assert store_db.database_path(f"sqlite:///{tmp_path}/r.sqlite") == tmp_path / "r.sqlite"
    assert store_db.database_path("~/r.sqlite") == Path.home() / "r.sqlite"
    with pytest.raises(StoreError, match=r"postgresql://u:\*\*\*@127\.0\.0\.1:1/x") as refused:
        Store("postgresql://u:pw@127.0.0.1:1/x", read_only=True)
    assert "pw" not in str(refused.value).replace("postgresql", "")
    with pytest.raises(ConfigError, match="--db: cannot read database URL"):
        Store("postgresql://u@host:notaport/x")
