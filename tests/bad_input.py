"""What the bad-input tests check errors against: the line a YAML key sits on, a database that is not ours."""

from __future__ import annotations

import sqlite3
from pathlib import Path


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
