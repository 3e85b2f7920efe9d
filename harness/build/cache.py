"""The content-addressed artifact cache: a build's key is the hash of its source and options.

A build writes into a temporary directory and renames it into place, so a crash never leaves a
half-built artifact that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..paths import cache_dir


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_of(parts: Mapping[str, Any]) -> str:
    """A stable hash of JSON-able build inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ArtifactCache:
    """Directories under ``<cache>/artifacts/<kind>/<key>/``, each holding one build's files."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "artifacts"

    def get_or_build(self, kind: str, parts: Mapping[str, Any], build: Callable[[Path], Path]) -> tuple[Path, bool]:
        """Return (artifact path, built_now). ``build(tmpdir)`` must return the artifact inside tmpdir."""
        key = key_of({"kind": kind, **parts})
        target = self.root / kind / key[:24]
        meta_file = target / "build.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            artifact = target / meta["artifact"]
            if artifact.exists():
                return artifact, False
            shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=target.parent))
        try:
            artifact = build(tmp)
            rel = artifact.relative_to(tmp)
            (tmp / "build.json").write_text(json.dumps({"key": key, "parts": parts, "artifact": str(rel)}, default=str))
            try:
                tmp.rename(target)
            except OSError:
                # Another process built the same key first; its result is as good as ours.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target / rel, True
