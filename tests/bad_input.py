"""What the bad-input tests check errors against: the line a YAML key sits on, a database that is not ours,
a schema creation that fails midway."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection

from harness.store import schema as store_schema


def line_number(path: Path, startswith: str) -> int:
    """The 1-based number of the first line of ``path`` that starts (after indentation) with ``startswith``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith(startswith):
            return number
    raise AssertionError(f"{startswith!r} not in {path}")


def foreign_sqlite(path: Path) -> bytes:
    """Someone else's SQLite database at ``path``; its bytes, to show it is left as it was."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    return path.read_bytes()


def fail_schema_creation_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next new database's schema creation fail at its end: the last migration makes its table,
    after version 1's tables and the version row, then a CREATE of the same table fails."""
    real = store_schema.MIGRATIONS[2]

    def failing(conn: Connection) -> None:
        real(conn)
        conn.exec_driver_sql("CREATE TABLE device_health (id INTEGER)")

    monkeypatch.setitem(store_schema.MIGRATIONS, 2, failing)
