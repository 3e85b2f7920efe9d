"""Deploy: keep a sha256-named file cache on the device, over any Transport.

Every file goes up under a temporary name, its hash is checked on the device, and only then is it
renamed into place, so a half-written or corrupted file is never used. A file already there is
re-hashed once per connection (a corrupted cache entry is detected and uploaded again) and then
trusted for the rest of the session. The device-side work is a short standard-library script run
with the device's Python, because the runner itself is one of the files being deployed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import TransportError
from .transport.protocol import Transport

log = logging.getLogger(__name__)

# Reads {"root":..., "check": [names], "commit": [[tmp, name, sha]], "evict": {...}} on stdin.
_CACHE_SCRIPT = r"""
import hashlib, json, os, sys, time
req = json.load(sys.stdin)
root = req["root"]
os.makedirs(root, exist_ok=True)
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
out = {"present": {}, "committed": {}, "evicted": []}
for name, want in req.get("check", []):
    p = os.path.join(root, name)
    if os.path.isfile(p):
        ok = sha(p) == want
        if not ok:
            os.remove(p)
            out.setdefault("corrupt", []).append(name)
        else:
            os.utime(p)
        out["present"][name] = ok
    else:
        out["present"][name] = False
for tmp, name, want in req.get("commit", []):
    t = os.path.join(root, tmp)
    got = sha(t) if os.path.isfile(t) else None
    if got == want:
        os.replace(t, os.path.join(root, name))
        out["committed"][name] = True
    else:
        if os.path.exists(t):
            os.remove(t)
        out["committed"][name] = got
ev = req.get("evict")
if ev:
    keep = set(ev.get("keep", []))
    now = time.time()
    entries = []
    total = 0
    for n in os.listdir(root):
        p = os.path.join(root, n)
        if os.path.isfile(p):
            st = os.stat(p)
            total += st.st_size  # pinned files count towards the cap but are never evicted
            if n not in keep:
                entries.append((st.st_mtime, st.st_size, n))
    entries.sort()
    for mtime, size, n in entries:
        if now - mtime > ev["max_age_s"] or total > ev["max_bytes"]:
            os.remove(os.path.join(root, n))
            total -= size
            out["evicted"].append(n)
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class Deployable:
    """A local file and the name it takes on the device: ``<sha256>.<suffix>``."""

    local: Path
    sha256: str
    suffix: str

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.suffix}" if self.suffix else self.sha256


@dataclass
class DeployStats:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    reused_files: int = 0
    corrupt_files: int = 0  # found in the cache with the wrong sha256, removed and uploaded again


class DeviceCache:
    """The sha256-named file cache under one root directory on one device."""

    def __init__(
        self,
        transport: Transport,
        python: str,
        root: str,
        *,
        timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self.python = python
        self.root = root
        self.timeout_s = timeout_s
        self.env = dict(env or {})  # the device's env:, so its Python runs as it does for the runner
        self._verified: set[str] = set()
        self.stats = DeployStats()

    def path(self, item: Deployable) -> str:
        return posixpath.join(self.root, item.name)

    def _call(self, request: dict[str, object]) -> dict[str, object]:
        result = self.transport.run(
            [self.python, "-c", _CACHE_SCRIPT],
            timeout_s=self.timeout_s,
            stdin=json.dumps({"root": self.root, **request}).encode(),
            env=self.env,
            timeout_fix=(
                f"the device cache's {self.timeout_s:g} s limit is fixed: look for a slow or failing disk "
                f"under {self.root}, or a device Python that hangs at start-up"
            ),
        )
        if result.exit_code != 0:
            tail = " | ".join(result.stderr_text.strip().splitlines()[-2:])
            raise TransportError(
                f"device cache at {self.root} failed (exit {result.exit_code}): {tail}",
                device=self.transport.device,
                fix="check the device's Python path and that the cache directory is writable",
            )
        reply = result.json_reply()
        if reply is None:
            shown = result.stdout[:200].decode("utf-8", errors="replace")
            raise TransportError(
                f"device cache reply is not JSON: {shown!r}",
                device=self.transport.device,
                fix="make the login shell print nothing for non-interactive sessions (its rc files, BASH_ENV)",
            )
        return reply

    def ensure(self, items: Sequence[Deployable]) -> dict[str, str]:
        """Make every item present and verified on the device; return sha256 -> device path."""
        todo = [i for i in {i.name: i for i in items}.values() if i.name not in self._verified]
        if todo:
            reply = self._call({"check": [[i.name, i.sha256] for i in todo]})
            present = reply["present"]
            assert isinstance(present, dict)
            missing = [i for i in todo if not present.get(i.name)]
            self.stats.reused_files += len(todo) - len(missing)
            corrupt = reply.get("corrupt") or []
            assert isinstance(corrupt, list)
            if corrupt:
                self.stats.corrupt_files += len(corrupt)
                log.warning(
                    "device %s: %d cached file(s) failed their sha256 check and are uploaded again: %s",
                    self.transport.device,
                    len(corrupt),
                    ", ".join(map(str, corrupt)),
                )
            if missing:
                self._upload(missing)
            else:
                log.info(
                    "device %s: %d file(s) already in the cache, uploaded 0 bytes", self.transport.device, len(todo)
                )
            self._verified.update(i.name for i in todo)
        return {i.sha256: self.path(i) for i in items}

    def _upload(self, items: Sequence[Deployable]) -> None:
        commits: list[list[str]] = []
        for item in items:
            tmp = f".tmp-{item.name}"
            try:
                sent = self.transport.put(item.local, posixpath.join(self.root, tmp))
            except TransportError:
                self._settle([*commits, [tmp, item.name, item.sha256]])
                raise
            except OSError as exc:
                self._settle([*commits, [tmp, item.name, item.sha256]])
                raise TransportError(
                    f"upload of {item.local.name} to {self.root} failed: {exc}",
                    device=self.transport.device,
                    fix="free space on the device or point cache_dir at a larger filesystem",
                ) from None
            self.stats.uploaded_files += 1
            self.stats.uploaded_bytes += sent
            commits.append([tmp, item.name, item.sha256])
        reply = self._call({"commit": commits})
        committed = reply["committed"]
        assert isinstance(committed, dict)
        bad = {name: got for name, got in committed.items() if got is not True}
        if bad:
            name, got = next(iter(bad.items()))
            raise TransportError(
                f"uploaded file {name} hashed to {got} on the device (corrupted in transfer or disk full)",
                device=self.transport.device,
                fix="check free space on the device and retry",
            )
        log.info(
            "device %s: uploaded %d file(s), %d bytes",
            self.transport.device,
            len(items),
            sum(i.local.stat().st_size for i in items),
        )

    def _settle(self, commits: Sequence[Sequence[str]]) -> None:
        """After a failed upload: keep the files that arrived whole, delete every temporary file."""
        # If the device is gone as well, the next session's commit or eviction cleans up.
        with contextlib.suppress(TransportError):
            self._call({"commit": [list(c) for c in commits]})

    def evict(self, *, max_bytes: int, max_age_s: float, keep: Sequence[str] = ()) -> list[str]:
        """Drop the least recently used files beyond a size cap, and any older than an age cap."""
        reply = self._call({"evict": {"max_bytes": max_bytes, "max_age_s": max_age_s, "keep": list(keep)}})
        evicted = reply["evicted"]
        assert isinstance(evicted, list)
        self._verified.difference_update(evicted)
        return [str(e) for e in evicted]
