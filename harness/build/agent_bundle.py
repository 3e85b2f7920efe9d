"""Package ``harness.agent`` as a zipapp the device runs with ``python3 agent.pyz``.

The archive is deterministic (sorted entries, fixed timestamps), so its sha256 changes only when the
runner's code does, and the device cache re-uploads it only then.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from .. import agent
from ..paths import cache_dir

_PACKAGE = "eb_agent"
_MAIN = "import sys\nfrom eb_agent.main import main\nsys.exit(main(sys.argv[1:]))\n"
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _sources() -> list[tuple[str, bytes]]:
    root = Path(agent.__file__).parent
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts and p.name != "__main__.py")
    return [(f"{_PACKAGE}/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in files]


def agent_archive() -> bytes:
    """The zipapp's bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in [("__main__.py", _MAIN.encode()), *_sources()]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def build_agent_bundle(directory: Path | None = None) -> tuple[Path, str]:
    """Write the bundle into the cache (once per content); return its path and sha256."""
    data = agent_archive()
    digest = hashlib.sha256(data).hexdigest()
    target = (directory or cache_dir() / "agent") / f"agent-{digest[:16]}.pyz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target, digest
