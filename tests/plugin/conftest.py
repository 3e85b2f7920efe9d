"""The plugin is tested through pytester: a real inner pytest session per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parents[2] / "suites"


@pytest.fixture
def copy_suite(pytester: pytest.Pytester) -> Callable[..., Path]:
    """Copy one of the repository's suites (by file name) into the inner session's directory, unchanged.

    ``as_name`` renames the copy: the inner session runs in this process, where a module of the same
    name (tests/unit/test_parity.py) may already be imported.
    """

    def copy(name: str, as_name: str | None = None) -> Path:
        return Path(shutil.copyfile(SUITES / name, pytester.path / (as_name or name)))

    return copy
