"""One error hierarchy: every message says what went wrong, where, the bad value and how to fix it.

The CLI turns these into a one-line message and exit code 2 (bad input or setup); a failed gate is a
result, not an error, and the CLI exits 1 for it. Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class EdgebenchError(Exception):
    """Base of every error edgebench raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.fix:
            text = f"{text}; fix: {self.fix}"
        return text.replace("\n", " ")


class ConfigError(EdgebenchError):
    """A catalog, inventory, budget or option value is wrong; names file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = Path(file) if file is not None else None
        self.line = line
        self.key = key
        where = ""
        if file is not None:
            where = str(file)
            if line is not None:
                where += f":{line}"
            where += ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message, fix=fix)


class BuildError(EdgebenchError):
    """A host-side export or compile step failed, or its input is unusable."""


class ToolchainMissing(BuildError):
    """An optional host toolchain (a vendor compiler or converter) is not installed; its targets are skipped."""


class UnknownNameError(ConfigError):
    """A registry lookup (backend, transport, platform, data set) missed; lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...], **where: object) -> None:
        super().__init__(
            f"unknown {kind} {name!r}",
            fix=f"use one of: {', '.join(sorted(known))}",
            **where,  # type: ignore[arg-type]
        )


class TransportError(EdgebenchError):
    """Reaching, authenticating to or talking with a device failed."""

    def __init__(self, message: str, *, device: str, fix: str | None = None) -> None:
        self.device = device
        super().__init__(f"device {device!r}: {message}", fix=fix)


class DeviceOffline(TransportError):
    """The device cannot be reached (or its login is not set up here); its jobs are skipped, the lab carries on."""


class DeviceRefused(TransportError):
    """The device answered but refused the login: an unknown or changed host key, or our key not accepted.

    An error, not a skip: a changed key is what a man-in-the-middle looks like, and a lab that skipped
    the device would pass without it.
    """


class CommandTimeout(TransportError):
    """A remote command exceeded its hard timeout; its process group was killed."""


class SetupFailed(TransportError):
    """A device's ``setup:`` command exited non-zero or hung: the job is an error, never measured without it.

    A TransportError, so the device is marked failed and its later jobs in the run skip with this
    reason instead of running the same broken command again.
    """


class RunnerError(EdgebenchError):
    """The on-device runner failed; carries the remote command's exit status and the tail of its stderr."""

    def __init__(
        self, message: str, *, device: str, command_exit: int | None = None, stderr: str = "", stdout: str = ""
    ) -> None:
        self.device = device
        self.command_exit = command_exit
        self.stderr = stderr
        self.stdout = stdout
        tail = stderr.strip().splitlines()[-3:]
        detail = f" (exit {command_exit})" if command_exit is not None else ""
        if tail:
            detail += ": " + " | ".join(tail)
        super().__init__(f"device {device!r}: runner {message}{detail}")


class CapabilityMissing(EdgebenchError):
    """A job needs a runtime or feature the device does not have; the job is skipped with this reason."""


class StoreError(EdgebenchError):
    """The results database cannot be opened, migrated or written."""
