"""The device cache keeps within its size and age limits, least recently used first (real local transport)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from harness.deploy import Deployable, DeviceCache
from harness.transport.local import LocalTransport


def _file(tmp: Path, name: str, size: int) -> Deployable:
    path = tmp / name
    path.write_bytes(os.urandom(size))
    return Deployable(path, hashlib.sha256(path.read_bytes()).hexdigest(), "bin")


def test_eviction_drops_the_least_recently_used_beyond_the_size_cap_and_keeps_what_is_pinned(tmp_path: Path) -> None:
    cache = DeviceCache(LocalTransport("dev"), sys.executable, str(tmp_path / "device"))
    old, middle, new = (_file(tmp_path, n, 4096) for n in ("old", "middle", "new"))
    cache.ensure([old, middle, new])
    now = time.time()
    for age, item in ((300, old), (200, middle), (100, new)):
        os.utime(cache.path(item), (now - age, now - age))
    evicted = cache.evict(max_bytes=2 * 4096, max_age_s=3600, keep=[old.name])
    assert evicted == [middle.name]  # the oldest unpinned one goes; the pinned runner stays
    assert Path(cache.path(old)).exists() and Path(cache.path(new)).exists()
    # Evicted files are uploaded again when a job needs them.
    cache.ensure([middle])
    assert Path(cache.path(middle)).exists()


def test_eviction_drops_files_older_than_the_age_cap(tmp_path: Path) -> None:
    cache = DeviceCache(LocalTransport("dev"), sys.executable, str(tmp_path / "device"))
    stale, fresh = _file(tmp_path, "stale", 100), _file(tmp_path, "fresh", 100)
    cache.ensure([stale, fresh])
    past = time.time() - 40 * 86400
    os.utime(cache.path(stale), (past, past))
    assert cache.evict(max_bytes=1 << 30, max_age_s=30 * 86400) == [stale.name]
    assert Path(cache.path(fresh)).exists()
