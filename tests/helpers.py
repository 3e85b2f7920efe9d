"""Helpers several test modules share: the installed command line, a YAML line's number, a foreign database."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path


def edgebench_exe() -> str:
    """The installed ``edgebench`` console script (the command a user runs)."""
    found = shutil.which("edgebench")
    assert found, "the edgebench console script is not installed (pip install -e .)"
    return found


def edgebench(
    *args: str | Path, env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``edgebench ARGS`` in a fresh process, capturing its text output."""
    return subprocess.run(
        [edgebench_exe(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


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
