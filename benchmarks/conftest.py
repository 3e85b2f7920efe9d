"""Shared fixtures for the project's own benchmarks: an isolated cache and results home per session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

RESULTS = Path(__file__).parent / "results"


@pytest.fixture(scope="session", autouse=True)
def _edgebench_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("EDGEBENCH_HOME",)}
    os.environ["EDGEBENCH_HOME"] = str(home)
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def save_numbers(name: str, numbers: dict[str, object]) -> None:
    """Keep a benchmark's headline numbers in benchmarks/results/<name>.json (quoted in the README)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")
