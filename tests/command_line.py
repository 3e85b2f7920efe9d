"""The installed ``edgebench`` command, run as a user runs it: in a fresh process, output captured."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def edgebench_exe() -> str:
    """The installed ``edgebench`` console script."""
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
