"""The Transport protocol: run a command, move a file, close. Implementations do not inherit from it.

Paths on the device are POSIX strings. Commands are argv lists; an implementation that needs a
shell string (SSH) builds it with ``shlex.quote`` from the argv, never by formatting user text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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
    ) -> CommandResult:
        """Run argv on the device; kill its whole process group at the timeout (raise CommandTimeout)."""
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
