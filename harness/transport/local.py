"""The local transport: the device is this machine, the runner a subprocess under the same contract.

It runs the exact argv, job spec and file layout an SSH device gets, so the embedded default lab
exercises the real runner protocol with no server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import CommandTimeout, TransportError
from .protocol import JOB_TIMEOUT_FIX, CommandResult


def _start_fix(program: str) -> str:
    """How to make a program start here; a python* one is the interpreter the device's python: key names.

    The transport is given argv, not the device: the program's name is what tells the interpreter
    from the other programs it starts (sh, taskset).
    """
    if Path(program).name.startswith("python"):
        return (
            "set the device's python: in the lab file to an interpreter that exists and is executable, "
            f"or remove python: to use this one ({sys.executable})"
        )
    return f"install {Path(program).name} on this machine, or put its directory on PATH"


class LocalTransport:
    """Runs commands as local subprocesses in their own process group."""

    def __init__(self, device: str) -> None:
        self.device = device

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_fix: str | None = None,
    ) -> CommandResult:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # its own process group, so a timeout kills the whole tree
            )
        except OSError as exc:
            raise TransportError(
                f"cannot start {argv[0]!r}: {exc.strerror}", device=self.device, fix=_start_fix(argv[0])
            ) from None
        try:
            out, err = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise CommandTimeout(
                f"{argv[0]} exceeded its {timeout_s:g} s timeout and was killed",
                device=self.device,
                fix=timeout_fix or JOB_TIMEOUT_FIX,
            ) from None
        except BaseException:
            # Ctrl-C or any other interruption: leave nothing running behind us.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return CommandResult(tuple(argv), proc.returncode, out, err, time.monotonic() - started)

    def put(self, local: Path, remote: str) -> int:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        return target.stat().st_size

    def get(self, remote: str, local: Path) -> int:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)
        return local.stat().st_size

    def home(self) -> str:
        return str(Path.home())

    def close(self) -> None:
        return None
