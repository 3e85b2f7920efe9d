"""Where edgebench keeps things on the host: the build cache and the default results database."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """Build and data cache: ``$EDGEBENCH_CACHE``, else the user's cache directory."""
    env = os.environ.get("EDGEBENCH_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("edgebench"))


def data_dir() -> Path:
    """Results and reports: ``$EDGEBENCH_HOME``, else the user's data directory."""
    env = os.environ.get("EDGEBENCH_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("edgebench"))


def default_db_path() -> Path:
    return data_dir() / "results.sqlite"


def default_report_path() -> Path:
    return data_dir() / "report.html"
