"""The plugin is tested through pytester: a real inner pytest session per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parents[2] / "suites"


@pytest.fixture
def copy_suite(pytester: pytest.Pytester) -> Callable[[str], Path]:
    """Copy one of the repository's suites (by file name) into the inner session's directory, unchanged."""

    def copy(name: str) -> Path:
        return Path(shutil.copyfile(SUITES / name, pytester.path / name))

    return copy
