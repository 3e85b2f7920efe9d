"""The same results store against a real PostgreSQL server that the tests start and stop themselves.

PostgreSQL refuses to run as root, so the server runs as the ``postgres`` system user from a data
directory under /tmp owned by it, on 127.0.0.1 with a free port and its socket in that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, func, inspect, select

from harness.errors import ConfigError, StoreError
from harness.records import JobResult
from harness.store import RunInfo, Store
from harness.store import db as store_db
from harness.store.schema import SCHEMA_VERSION, results, samples, schema_info
from harness.store.schema import _v1 as create_v1_tables
from tests.bad_input import fail_schema_creation_midway

pytestmark = pytest.mark.integration


DEBIAN_SERVERS = Path("/usr/lib/postgresql")  # <major>/bin per installed server: 15 on Debian 12, 17 on 13


def _has_server(directory: Path) -> bool:
    return (directory / "initdb").is_file() and (directory / "pg_ctl").is_file()


def _version(directory: Path) -> tuple[int, ...] | None:
    parts = directory.parent.name.split(".")  # 17, or 9.6 before PostgreSQL 10
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def server_bin(servers: Path = DEBIAN_SERVERS) -> Path | None:
    """Where initdb and pg_ctl are: EDGEBENCH_PG_BIN, else the newest server under ``servers`` that has
    both, else ``pg_config --bindir`` (libpq's: on Debian it may name a version whose server is not
    installed), else PATH."""
    if os.environ.get("EDGEBENCH_PG_BIN"):
        return Path(os.environ["EDGEBENCH_PG_BIN"])
    installed = {d: v for d in servers.glob("*/bin") if (v := _version(d)) is not None and _has_server(d)}
    if installed:
        return max(installed, key=installed.__getitem__)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and _has_server(Path(done.stdout.strip())):
            return Path(done.stdout.strip())
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb is not None and _has_server(Path(initdb).parent) else None


MakeResult = Callable[..., JobResult]
MakeRun = Callable[..., RunInfo]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its base URL (append a database name)."""
    pg_bin = server_bin()
    if pg_bin is None or not _has_server(pg_bin):
        where = pg_bin or f"{DEBIAN_SERVERS}/*/bin, pg_config --bindir or PATH"
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where} (set EDGEBENCH_PG_BIN)")
    if shutil.which("runuser") is None:
        pytest.skip("runuser not found: needed to run PostgreSQL as the postgres user")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'edgebench[postgres]')")
    # Not pytest's tmp_path: its parents are private to root and the postgres user cannot enter them.
    root = Path(tempfile.mkdtemp(prefix="edgebench-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    _as_postgres(pg_bin / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    port = 0
    started = False
    try:
        for _ in range(5):  # another process may grab the port between choosing and binding it
            port = _free_port()
            options = (
                f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=20"
            )
            proc = _as_postgres(
                pg_bin / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "-t", "60", "start",
                check=False,
            )
            if proc.returncode == 0:
                started = True
                break
        if not started:
            log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {proc.stderr}\n{log[-2000:]}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        if started:
            _as_postgres(pg_bin / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres: str) -> Iterator[str]:
    """A fresh, empty database on the server for one test; its URL."""
    name = f"eb_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield f"{postgres}/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    s = Store(database)
    yield s
    s.close()


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


def test_a_fresh_database_is_migrated_to_the_current_schema(store: Store, database: str) -> None:
    assert store.engine.dialect.name == "postgresql"
    assert version_of(database) == SCHEMA_VERSION
    tables = set(inspect(store.engine).get_table_names())
    assert {"schema_info", "runs", "results", "samples", "metrics", "device_health"} <= tables
    Store(database).close()  # a second open is a no-op migration
    assert version_of(database) == SCHEMA_VERSION


def test_a_schema_creation_failing_midway_leaves_no_tables_and_the_next_open_creates_it(
    database: str, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_schema_creation_midway(monkeypatch)
    with pytest.raises(StoreError, match=r"cannot open or migrate the results database .*already exists"):
        Store(database)
    engine = create_engine(database)
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == [], "the whole creation was one transaction"
        indexes = conn.exec_driver_sql("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").scalar_one()
    engine.dispose()
    assert indexes == 0
    monkeypatch.undo()
    store = Store(database)
    try:
        store.start_run(make_run("pgnew0000001"))
        assert version_of(database) == SCHEMA_VERSION
    finally:
        store.close()


def test_a_version_1_database_migrates_without_losing_rows(
    database: str, make_result: MakeResult, make_run: MakeRun
) -> None:
    engine = create_engine(database)
    with engine.begin() as conn:
        create_v1_tables(conn)
        conn.execute(schema_info.insert().values(id=1, version=1))
    engine.dispose()
    old = Store.__new__(Store)  # write as a version-1 edgebench would: v1 tables only, no migration
    old.url, old.engine = database, create_engine(database)
    old.start_run(make_run("pgold0000001"))
    stored = make_result("pgold0000001")
    old.add_result(stored)
    old.engine.dispose()
    assert version_of(database) == 1

    store = Store(database)
    try:
        assert version_of(database) == SCHEMA_VERSION
        assert store.results("pgold0000001") == [json.loads(json.dumps(stored.flat()))]
        store.record_health("2026-11-24T10:00:00+00:00", "nuc", "offline", "no route to host", {})
        assert store.health()[0]["reason"] == "no route to host"
    finally:
        store.close()


def test_results_and_samples_roundtrip(
    store: Store, make_result: MakeResult, make_run: MakeRun, record_fields: tuple[str, ...]
) -> None:
    store.start_run(make_run("pgrun0000001"))
    result = make_result("pgrun0000001", n=5000, metrics={"top1_acc": 0.96, "psnr_db": float("inf")})
    assert result.samples_ns is not None
    result.samples_ns[:2] = [1, 2**62]
    store.add_result(result)
    (record,) = store.results("pgrun0000001")
    assert [f for f in record_fields if f not in record] == []
    assert record["valid"] is True and record["top1_acc"] == 0.96
    assert record["p99_ci_ms"] == [result.latency.p99.ci_low_ms, result.latency.p99.ci_high_ms]  # type: ignore[union-attr]
    back = store.samples_of("pgrun0000001", result.job_id)
    assert back.tobytes() == np.asarray(result.samples_ns, dtype="<i8").tobytes()
    assert store.device_facts("pgrun0000001")["local"]["cpu_model"] == "test CPU"


def test_a_write_failing_midway_leaves_no_partial_result(
    store: Store, make_result: MakeResult, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.start_run(make_run("pgrun0000001"))
    real_row = store_db._metric_row

    def bad_row(result_id: int, name: str, value: Any) -> dict[str, Any]:
        row = real_row(result_id, name, value)
        if name == "poison":
            row["name"] = None
        return row

    monkeypatch.setattr(store_db, "_metric_row", bad_row)
    with pytest.raises(StoreError, match="database write failed"):
        store.add_result(make_result("pgrun0000001", metrics={"poison": 1.0}))
    assert count(store, results) == 0 and count(store, samples) == 0


def test_a_result_for_an_unknown_run_is_refused(store: Store, make_result: MakeResult) -> None:
    with pytest.raises(StoreError, match="database write failed"):
        store.add_result(make_result("never-started"))
    assert count(store, results) == 0


def test_resolve_run_latest_and_by_prefix(store: Store, make_run: MakeRun) -> None:
    store.start_run(make_run("aaaa11112222", "2026-11-24T09:00:00.000+00:00"))
    store.start_run(make_run("aaaa33334444", "2026-11-24T11:00:00.000+00:00"))
    assert store.resolve_run("latest") == "aaaa33334444"
    assert store.resolve_run("aaaa1") == "aaaa11112222"
    with pytest.raises(ConfigError, match="is ambiguous"):
        store.resolve_run("aaaa")
    with pytest.raises(ConfigError, match="not found"):
        store.resolve_run("a%")


def test_a_shared_database_with_another_applications_runs_table_is_refused_and_left_alone(database: str) -> None:
    engine = create_engine(database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE runs (id integer PRIMARY KEY, payload text)")
        conn.exec_driver_sql("INSERT INTO runs VALUES (1, 'theirs')")
        conn.exec_driver_sql("CREATE TABLE invoices (id integer PRIMARY KEY)")
    with pytest.raises(ConfigError) as info:
        Store(database)
    assert "is not an edgebench results database" in info.value.one_line()
    assert info.value.one_line().endswith("or a database of its own")
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert conn.exec_driver_sql("SELECT payload FROM runs").scalar_one() == "theirs"
    engine.dispose()
    assert tables == {"runs", "invoices"}, "nothing was created beside the other application's tables"
    # Other applications' tables alone are fine: a database is often shared.
    other = create_engine(database)
    with other.begin() as conn:
        conn.exec_driver_sql("DROP TABLE runs")
    other.dispose()
    Store(database).close()


def test_an_unreachable_server_is_a_store_error(postgres: str) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/nothing"
    with pytest.raises(StoreError, match="cannot open or migrate the results database"):
        Store(url)


def test_the_newest_installed_server_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian installs each server major under /usr/lib/postgresql/<major>/bin (17 on Debian 13, 15 on 12):
    the newest one with initdb and pg_ctl runs these tests, and EDGEBENCH_PG_BIN overrides the search."""
    monkeypatch.delenv("EDGEBENCH_PG_BIN", raising=False)
    servers = {"9.6": ("initdb", "pg_ctl"), "15": ("initdb", "pg_ctl"), "17": ("initdb", "pg_ctl"), "18": ("pg_ctl",)}
    for major, tools in servers.items():  # 18: a half-installed server without initdb
        (tmp_path / major / "bin").mkdir(parents=True)
        for tool in tools:
            (tmp_path / major / "bin" / tool).write_text("")
    assert server_bin(tmp_path) == tmp_path / "17" / "bin"
    monkeypatch.setenv("EDGEBENCH_PG_BIN", "/opt/pg/bin")
    assert server_bin(tmp_path) == Path("/opt/pg/bin")
