"""The Transport protocol: run a command, move a file, close. Implementations do not inherit from it.

Paths on the device are POSIX strings. Commands are argv lists; an implementation that needs a
shell string (SSH) builds it with ``shlex.quote`` from the argv, never by formatting user text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class CommandResult:
    """What one command on the device did."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    def json_reply(self) -> dict[str, Any] | None:
        """The JSON object on stdout's last non-empty line, or None: a login shell or a wrapper may print
        before it, and the runner, the cache script and the probes all reply on their last line."""
        lines = [line for line in self.stdout.decode("utf-8", errors="replace").splitlines() if line.strip()]
        try:
            value = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


# What a CommandTimeout tells the user when the caller does not say otherwise: the runner's timeout is the
# device's job_timeout_s. A caller with a fixed limit of its own (a probe, the cache script) passes
# ``timeout_fix`` to say what governs it instead.
JOB_TIMEOUT_FIX = "raise job_timeout_s in the inventory, or look for a hung runtime on the device"


class Transport(Protocol):
    """A connection to one device."""

    device: str

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_fix: str | None = None,
    ) -> CommandResult:
        """Run argv on the device; kill its whole process group at the timeout (raise CommandTimeout, whose
        fix is ``timeout_fix``, by default JOB_TIMEOUT_FIX)."""
        ...

    def put(self, local: Path, remote: str) -> int:
        """Copy a local file to a device path (parent created); return bytes sent."""
        ...

    def get(self, remote: str, local: Path) -> int:
        """Copy a device file to a local path; return bytes received."""
        ...

    def home(self) -> str:
        """The remote user's home directory, for expanding ``~`` in configured paths."""
        ...

    def close(self) -> None:
        ...
