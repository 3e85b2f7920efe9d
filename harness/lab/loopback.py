"""The loopback lab: N real OpenSSH servers on 127.0.0.1, each one a "device" with its own cache.

``lab_up`` gives every server its own host key, port, config, pid file and log, makes one client key
that all of them authorize and a known_hosts that holds their host keys, and writes an inventory that
edgebench reads like any other lab. ``lab_down`` stops exactly the servers that call started (their
sessions included), found through a state file next to the inventory. The test fixtures use the same
code, so the tests and ``edgebench lab up`` exercise one thing.

Root's ~/.bashrc on a development machine often runs ``pyenv init`` for every command (90-250 ms here);
a device's .bashrc returns early for non-interactive shells. The servers set ``SHLVL=1`` for their
sessions, which makes bash skip ~/.bashrc the way those devices do, so latency numbers measured here are
the harness's, not this machine's shell start-up.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from ..errors import ConfigError, EdgebenchError
from .inventory import Lab, Platform, load_lab

SSHD = Path("/usr/sbin/sshd")
STATE_VERSION = 1
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 3.0


class LoopbackError(EdgebenchError):
    """A loopback server could not be started or stopped."""


@dataclass(frozen=True)
class LoopbackServer:
    """One sshd on 127.0.0.1: a device of the loopback lab."""

    name: str
    port: int
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def cache_dir(self) -> Path:
        return self.directory / "cache"

    def pid(self) -> int | None:
        """The listener's PID while it runs (checked against its command line), else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and str(self.config) in _cmdline(pid) else None

    def session_pids(self) -> list[int]:
        """The sshd processes serving this server's live connections (to stall or kill them in tests)."""
        pid = self.pid()
        if pid is None:
            return []
        return [p for p in _descendants(pid) if _comm(p) == "sshd"]

    def known_hosts_line(self) -> str:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}"


@dataclass(frozen=True)
class LabState:
    """What ``lab_up`` started, saved next to the inventory so ``lab_down`` stops exactly that."""

    lab_file: Path
    directory: Path
    servers: tuple[LoopbackServer, ...]

    @property
    def client_key(self) -> Path:
        return self.directory / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.directory / "ssh_config"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def server(self, name: str) -> LoopbackServer:
        for server in self.servers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.servers)
        raise ConfigError(
            f"no loopback device named {name!r}", file=self.lab_file, fix=f"use one of: {known}"
        )

    def device_processes(self) -> list[str]:
        """What still runs under this lab's devices: their command lines hold the lab's directory."""
        return processes_under(str(self.directory))

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "lab_file": str(self.lab_file),
            "servers": [
                {"name": s.name, "port": s.port, "directory": str(s.directory)} for s in self.servers
            ],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.state_file)


def state_dir(lab_file: Path) -> Path:
    """Where a loopback lab keeps its keys, servers and state: ``<inventory stem>.loopback/`` beside it."""
    return lab_file.resolve().with_name(lab_file.stem + ".loopback")


def load_state(lab_file: Path) -> LabState:
    directory = state_dir(lab_file)
    path = directory / "state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no loopback lab state at {path}",
            file=lab_file,
            fix="pass the inventory file that 'edgebench lab up --out FILE' wrote",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable loopback lab state {path}: {exc}", file=lab_file) from None
    if data.get("version") != STATE_VERSION:
        raise ConfigError(
            f"loopback lab state {path} has version {data.get('version')!r}; this edgebench reads "
            f"{STATE_VERSION}",
            file=lab_file,
            fix="stop its servers by their pid files and start a new lab",
        )
    servers = tuple(LoopbackServer(s["name"], int(s["port"]), Path(s["directory"])) for s in data["servers"])
    return LabState(Path(data["lab_file"]), directory, servers)


# ---- processes (Linux /proc) -------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_under(marker: str) -> list[str]:
    """``"pid: command line"`` of every process (sshd aside) whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = _cmdline(int(entry.name))
        if marker in cmdline and _comm(int(entry.name)) != "sshd":
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def wait_for_processes(marker: str, *, gone: bool, timeout_s: float) -> list[str]:
    """Poll until processes under ``marker`` exist (``gone=False``) or are all gone; return the last look."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = processes_under(marker)
        if bool(found) != gone or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    return left


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# ---- keys and servers ----------------------------------------------------------------------------------
def _keygen(path: Path, comment: str) -> None:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise LoopbackError(
            "ssh-keygen is not installed", fix="install openssh-client (apt-get install openssh-client)"
        )
    for stale in (path, path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [tool, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sftp_subsystem() -> str:
    for path in (
        "/usr/lib/openssh/sftp-server",
        "/usr/libexec/openssh/sftp-server",
        "/usr/libexec/sftp-server",
    ):
        if Path(path).is_file():
            return path
    return "internal-sftp"


def _write_config(server: LoopbackServer, authorized_keys: Path, user: str) -> None:
    lines = [
        f"Port {server.port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {server.host_key}",
        f"PidFile {server.pid_file}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"AllowUsers {user}",
        "UsePAM no",
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "PrintMotd no",
        "X11Forwarding no",
        "MaxStartups 100",
        "MaxSessions 20",
        "LogLevel VERBOSE",
        "SetEnv SHLVL=1",  # bash then skips ~/.bashrc, as a device's non-interactive shell does (see above)
        f"Subsystem sftp {_sftp_subsystem()}",
    ]
    server.config.write_text("\n".join(lines) + "\n", encoding="utf-8")


# sshd's words for a failed start; with -E its lines carry no "fatal:" or "error:" prefix.
_FAILED = re.compile(r"fatal|error|bind to|cannot|couldn't|unable|failed|bad configuration|terminating", re.IGNORECASE)


def _log_since(server: LoopbackServer, offset: int) -> list[str]:
    """The non-empty lines sshd added to its log after ``offset``."""
    try:
        with server.log_file.open(encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []


def _listeners(server: LoopbackServer) -> list[int]:
    """The sshd processes started with this server's config: its listener, pid file or not."""
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [p for p in pids if _comm(p) == "sshd" and f"-f {server.config} " in _cmdline(p) + " "]


def _quoted(lines: Sequence[str]) -> str:
    return " | ".join(lines[-3:]) if lines else "it logged nothing"


def start_server(server: LoopbackServer) -> int:
    """Start (or restart) one server on its port; return the listener's PID once it accepts connections."""
    if not SSHD.is_file():
        raise LoopbackError(
            f"{SSHD} is not installed", fix="install Debian's openssh-server (apt-get install openssh-server)"
        )
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    server.pid_file.unlink(missing_ok=True)
    log_start = server.log_file.stat().st_size if server.log_file.exists() else 0
    proc = subprocess.run(
        [str(SSHD), "-f", str(server.config), "-E", str(server.log_file)],
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        # -E sends even a config error to the log; stderr is empty then.
        said = _log_since(server, log_start) or proc.stderr.strip().splitlines()
        raise LoopbackError(
            f"sshd for {server.name} did not start (exit {proc.returncode}): {_quoted(said)}",
            fix=f"see {server.log_file} (its config: {server.config})",
        )
    # sshd forked its listener and returned; that one binds the port, writes the pid file, or logs why not
    # and exits.
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        pid = server.pid()
        if pid is not None:
            return pid
        said = _log_since(server, log_start)
        failed = [line for line in said if _FAILED.search(line)]
        listeners = _listeners(server)
        if failed or not listeners or time.monotonic() > deadline:
            _signal(listeners, signal.SIGKILL)  # a half-started server is not left behind
            if failed:
                what = f"failed: {_quoted(failed)}"
            elif not listeners:
                what = f"exited as it started: {_quoted(said)}"
            else:
                what = f"wrote no pid file within {_START_TIMEOUT_S:g} s: {_quoted(said)}"
            raise LoopbackError(f"sshd for {server.name} {what}", fix=f"see {server.log_file}")
        time.sleep(0.02)


def stop_server(server: LoopbackServer) -> bool:
    """Stop one server and the sessions it serves; return whether it was running."""
    pid = server.pid()
    if pid is None:
        return False
    sessions = _descendants(pid)
    _signal([*sessions, pid], signal.SIGCONT)  # a stopped process would not act on SIGTERM
    _signal([pid], signal.SIGTERM)
    _signal(sessions, signal.SIGKILL)
    left = _wait_gone([pid, *sessions], _STOP_TIMEOUT_S)
    if left:
        _signal(left, signal.SIGKILL)
        _wait_gone(left, _STOP_TIMEOUT_S)
    server.pid_file.unlink(missing_ok=True)
    return True


def _start_on_free_port(server: LoopbackServer, authorized_keys: Path, user: str) -> LoopbackServer:
    """Pick a port, start; on a lost race for the port, pick another."""
    last: LoopbackError | None = None
    for _ in range(5):
        candidate = LoopbackServer(server.name, _free_port(), server.directory)
        _write_config(candidate, authorized_keys, user)
        try:
            start_server(candidate)
            return candidate
        except LoopbackError as exc:
            if "Bind to" not in exc.message and "Address already in use" not in exc.message:
                raise
            last = exc
    assert last is not None
    raise last


# The first line of every inventory lab_up writes: what lets it replace its own file, and only that.
_WRITTEN_BY = "written by 'edgebench lab up'"


def _written_by_lab_up(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    return first.startswith("# A loopback lab:") and _WRITTEN_BY in first


def check_out(out: Path, *, force: bool = False) -> None:
    """Refuse an ``--out`` that is a directory, sits under a file, or is an inventory lab_up did not write."""
    if out.is_dir():
        raise ConfigError(
            f"{out} is a directory", key="--out", fix=f"pass a file name, e.g. --out {out / 'loopback.yaml'}"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{parent} is a file, not a directory", key="--out", fix="pass a path in a directory")
            break
    if out.exists() and not force and not _written_by_lab_up(out):
        raise ConfigError(
            f"{out} exists and was not written by 'edgebench lab up'; it is left as it is",
            key="--out",
            fix="pass a new file name, or add --force to replace it",
        )


def lab_up(
    n: int,
    out: Path,
    *,
    runtimes: Sequence[Sequence[str] | None] | None = None,
    platform: Platform = "generic-linux",
    name: str = "loopback",
    force: bool = False,
) -> Path:
    """Start ``n`` OpenSSH servers on 127.0.0.1 and write their inventory to ``out``; return its path.

    ``runtimes`` gives each device's declared runtimes (None: undeclared, found by ``devices check``).
    ``out`` is checked before any server starts: it may be new or an inventory lab_up wrote (any file
    with ``force``), never a directory.
    """
    check_out(out, force=force)
    if n < 1:
        raise ConfigError(
            f"a lab needs at least one device (got {n})", key="--devices", fix="pass --devices 1 or more"
        )
    if runtimes is not None and len(runtimes) != n:
        raise ConfigError(f"runtimes lists {len(runtimes)} devices for a lab of {n}", key="runtimes")
    out = out.resolve()
    directory = state_dir(out)
    if (directory / "state.json").exists():
        running = [s.name for s in load_state(out).servers if s.pid() is not None]
        if running:
            raise ConfigError(
                f"a loopback lab is already running for this file ({', '.join(running)})",
                file=out,
                fix=f"stop it first: edgebench lab down --lab {out}",
            )
    directory.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    state = LabState(out, directory, ())
    _keygen(state.client_key, f"edgebench-loopback-client@{name}")
    authorized = directory / "authorized_keys"
    authorized.write_text(state.client_key.with_suffix(".pub").read_text(), encoding="utf-8")
    servers: list[LoopbackServer] = []
    try:
        for index in range(1, n + 1):
            device_dir = directory / f"loop-{index}"
            (device_dir / "cache").mkdir(parents=True, exist_ok=True)
            server = LoopbackServer(f"loop-{index}", 0, device_dir)
            _keygen(server.host_key, f"edgebench-loopback-host-{index}")
            servers.append(_start_on_free_port(server, authorized, user))
            LabState(out, directory, tuple(servers)).save()  # saved as we go: a failure still stops these
        _write_inventory(LabState(out, directory, tuple(servers)), user, runtimes, platform, name)
    except BaseException as exc:
        # Nothing keeps running when the lab could not be written in full.
        for server in servers:
            stop_server(server)
        if isinstance(exc, OSError):
            raise LoopbackError(
                f"cannot write the loopback lab's files: {exc.strerror or exc}", fix="pass --out a writable path"
            ) from None
        raise
    return out


def _write_inventory(
    state: LabState,
    user: str,
    runtimes: Sequence[Sequence[str] | None] | None,
    platform: Platform,
    name: str,
) -> None:
    """known_hosts, ssh_config and the inventory of the started servers; the inventory must load."""
    servers, out = state.servers, state.lab_file
    state.known_hosts.write_text("".join(s.known_hosts_line() + "\n" for s in servers), encoding="utf-8")
    _write_ssh_config(state, user)
    devices: list[dict[str, Any]] = []
    for index, server in enumerate(servers):
        device: dict[str, Any] = {
            "name": server.name,
            "platform": platform,
            "transport": "ssh",
            "host": "127.0.0.1",
            "port": server.port,
            "user": user,
            "identity": str(state.client_key),
            "known_hosts": str(state.known_hosts),
            "ssh_config": str(state.ssh_config),
            "python": sys.executable,
            "cache_dir": str(server.cache_dir),
            "threads": 1,
            "tags": ["loopback"],
        }
        if runtimes is not None and runtimes[index] is not None:
            device["runtimes"] = list(runtimes[index] or ())
        devices.append(device)
    header = (
        f"# A loopback lab: {len(servers)} OpenSSH server(s) on 127.0.0.1, {_WRITTEN_BY}.\n"
        f"# Stop them with: edgebench lab down --lab {out}\n"
    )
    body = yaml.safe_dump({"schema_version": 1, "name": name, "devices": devices}, sort_keys=False)
    out.write_text(header + body, encoding="utf-8")
    load_lab(out)  # what we wrote must load


def _write_ssh_config(state: LabState, user: str) -> None:
    """A Host block per device, so ``ssh -F <dir>/ssh_config loop-1`` reaches it by hand."""
    blocks = []
    for server in state.servers:
        blocks.append(
            f"Host {server.name}\n  HostName 127.0.0.1\n  Port {server.port}\n  User {user}\n"
            f"  IdentityFile {state.client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {state.known_hosts}\n"
        )
    state.ssh_config.write_text("\n".join(blocks), encoding="utf-8")


def lab_down(lab_file: Path) -> list[str]:
    """Stop the servers ``lab_up`` started for this inventory; return the names of those that ran."""
    state = load_state(lab_file)
    return [server.name for server in state.servers if stop_server(server)]


def rekey(server: LoopbackServer) -> None:
    """Give a server a new host key and restart it on its port (known_hosts keeps the old key)."""
    stop_server(server)
    _keygen(server.host_key, f"edgebench-loopback-host-{server.name}-new")
    start_server(server)


class LoopbackLab:
    """``with LoopbackLab(3, tmp_path) as lab:`` a running loopback lab, stopped on exit."""

    def __init__(
        self,
        n: int,
        directory: Path,
        *,
        runtimes: Sequence[Sequence[str] | None] | None = None,
        platform: Platform = "generic-linux",
        name: str = "loopback",
    ) -> None:
        self.n = n
        self.lab_file = directory / f"{name}.yaml"
        self._options: dict[str, Any] = {"runtimes": runtimes, "platform": platform, "name": name}

    def __enter__(self) -> LoopbackLab:
        lab_up(self.n, self.lab_file, **self._options)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        lab_down(self.lab_file)

    @property
    def state(self) -> LabState:
        return load_state(self.lab_file)

    @property
    def lab(self) -> Lab:
        return load_lab(self.lab_file)

    def server(self, name: str) -> LoopbackServer:
        return self.state.server(name)
