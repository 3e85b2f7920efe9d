"""The SSH transport: paramiko, strict host keys, ~/.ssh/config with ProxyJump, hard remote timeouts.

Where to log in is resolved once per device from the inventory and the ssh config (inventory fields win,
then the config's ``Host`` block, then OpenSSH's defaults). Host keys are checked against known_hosts and
never added: an unknown or changed key is an error that says which command adds the right one.

Every command is one string built with ``shlex.quote`` from the argv and run by the login user's POSIX
shell (sshd runs ``$SHELL -c string``; there is no other way), never as a login shell, and the device's
Python is called by absolute path. The string first prints the shell's PID on stderr: sshd makes each
session's shell a session leader, so that PID names every process the command starts. On a timeout,
Ctrl-C or a lost connection they are all killed (SIGKILL to the session) over a fresh channel, or over a
fresh connection when the old one has stalled. While a command runs, the host asks the server for a reply
every ``keepalive_s`` (OpenSSH's ServerAliveInterval / ServerAliveCountMax, done by hand because paramiko's
own keepalive wants no reply): a device that stops answering, powered off or cut off, is given up after
``keepalive_count`` intervals, not at the job's timeout nor TCP's quarter of an hour. Where coreutils
``timeout`` exists the command also carries a device-side deadline, so a runner whose host vanished
still dies. All waiting is done against a deadline (select, channel timeouts, a timer that closes the
channel), never in a blocking read.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import logging
import math
import posixpath
import re
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import paramiko

from ..errors import CommandTimeout, DeviceOffline, DeviceRefused, TransportError
from ..lab.inventory import Device
from .protocol import JOB_TIMEOUT_FIX, CommandResult

log = logging.getLogger(__name__)


class _AsDebug(logging.Filter):
    """paramiko logs from its own thread (an ERROR for a stuck server); each failure already reaches the
    user as one TransportError with a fix, so its records are demoted to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


_PARAMIKO_LOG = f"{__name__}.paramiko"
for _name in (_PARAMIKO_LOG, f"{_PARAMIKO_LOG}.sftp"):
    logging.getLogger(_name).addFilter(_AsDebug())

_PGID_MARK = "edgebench-pgid:"
_TOKEN_PREFIX = "edgebench-cmd-"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Extra seconds the device-side deadline gives a command beyond the host's own timeout; the host kills
# first whenever it is still there.
DEVICE_DEADLINE_GRACE_S = 10.0
# How long the host waits for a kill to be delivered, or for a stalled transfer to move.
KILL_TIMEOUT_S = 5.0
SFTP_IO_TIMEOUT_S = 60.0
_MAX_JUMPS = 8
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"  # OpenSSH's default UserKnownHostsFile
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)  # OpenSSH's default GlobalKnownHostsFile

T = TypeVar("T")


class HostKeyRejected(DeviceRefused):
    """The server answered, but its host key is unknown or changed; nothing was sent to it."""


class AuthenticationFailed(DeviceRefused):
    """The server answered and its host key checked out, but it did not accept our keys."""


# ---- where to log in ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One SSH server to log in to, resolved from the inventory and the ssh config."""

    alias: str  # as written in the inventory or in ProxyJump
    hostname: str
    port: int
    user: str
    identities: tuple[str, ...]  # key files to offer (each exists, or connecting says it does not)
    known_hosts: Path  # the file a fix adds keys to: the first UserKnownHostsFile
    connect_timeout_s: float
    keepalive_s: float
    keepalive_count: int = 3
    use_agent: bool = True
    jump: Endpoint | None = None
    ssh_config: str | None = None  # the config file the route was read from, when not ~/.ssh/config
    also_known: tuple[Path, ...] = ()  # further files keys are trusted from: more UserKnownHostsFile, the global ones
    skipped_identities: tuple[str, ...] = ()  # the ssh config's IdentityFile entries not on this machine

    @property
    def look_for_keys(self) -> bool:
        """Whether to try the default keys in ~/.ssh: as OpenSSH, only when no IdentityFile was named at all."""
        return not (self.identities or self.skipped_identities)

    @property
    def known_files(self) -> tuple[Path, ...]:
        return (self.known_hosts, *self.also_known)

    @property
    def silent_after_s(self) -> float:
        """How long a keepalive may go unanswered before the device counts as gone (0: never probed)."""
        return self.keepalive_s * self.keepalive_count

    @property
    def known_hosts_name(self) -> str:
        """The name this server's key has in known_hosts (OpenSSH's ``[host]:port`` form off port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    def route(self) -> str:
        hops = []
        jump = self.jump
        while jump is not None:
            hops.append(jump.label)
            jump = jump.jump
        return self.label + "".join(f" via {h}" for h in hops)


def load_ssh_config(path: str | None, device: str) -> paramiko.SSHConfig:
    """The device's ssh config file, else ~/.ssh/config, else an empty one."""
    file = Path(path or "~/.ssh/config").expanduser()
    if path and not file.is_file():
        raise TransportError(
            f"ssh_config {file} does not exist", device=device, fix="correct ssh_config: in the inventory"
        )
    if not file.is_file():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except (paramiko.ssh_exception.ConfigParseError, OSError, ValueError) as exc:
        raise TransportError(f"cannot read ssh config {file}: {exc}", device=device, fix="fix that line") from None


def _split_hop(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``ssh://...``) -> (user, host, port)."""
    text = spec.strip()
    text = text.removeprefix("ssh://")
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port = None
    if text.startswith("["):  # [v6addr]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        return user, host, port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            return user, host, int(port_text)
    return user, text, port


_TIME_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _seconds(value: object, key: str, device: Device) -> float:
    """An ssh config time value in seconds: ``30``, or OpenSSH's time format (``1m30s``)."""
    text = str(value).strip()
    if text and _TIME_PART.sub("", text) == "":
        return float(sum(int(n) * _UNIT_S[u.lower()] for n, u in _TIME_PART.findall(text)))
    raise TransportError(
        f"ssh config {key} {text!r} is not a time",
        device=device.name,
        fix=f"write {key} in seconds (30) or in OpenSSH's time format (1m30s)",
    )


def _words(value: object) -> list[str]:
    """A config value that lists files (``UserKnownHostsFile a b``), split as OpenSSH splits it."""
    if not value:
        return []
    text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _resolve_host(
    alias: str,
    config: paramiko.SSHConfig,
    *,
    device: Device,
    user: str | None,
    port: int | None,
    identity: str | None,
    known_hosts: str | None,
    jump_override: Endpoint | None,
    follow_config_jump: bool,
    depth: int,
) -> Endpoint:
    if depth > _MAX_JUMPS:
        raise TransportError(
            f"ProxyJump chain for {alias!r} is longer than {_MAX_JUMPS} hops (a loop?)",
            device=device.name,
            fix="check the ProxyJump lines of your ssh config",
        )
    entry = config.lookup(alias)
    skipped: tuple[str, ...] = ()
    if identity:
        identities: tuple[str, ...] = (identity,)  # the inventory's own: connecting fails if it is missing
    else:
        # paramiko gathers IdentityFile from every matching block, Host * included; OpenSSH passes over the
        # ones that do not exist (a key of another machine's), and so do we.
        named = tuple(dict.fromkeys(str(Path(str(p)).expanduser()) for p in entry.get("identityfile", [])))
        identities = tuple(p for p in named if Path(p).is_file())
        skipped = tuple(p for p in named if p not in identities)
        for missing in skipped:
            log.debug("device %s: no such IdentityFile %s (from the ssh config), skipped", device.name, missing)
    if device.identity and not identities and depth > 0:
        identities = (device.identity,)  # a jump host with no key of its own: try the device's key
    # OpenSSH trusts every UserKnownHostsFile and GlobalKnownHostsFile (a managed lab often ships its keys in
    # /etc/ssh/ssh_known_hosts); the inventory's known_hosts replaces the user files, as -o does.
    user_files = [known_hosts] if known_hosts else _words(entry.get("userknownhostsfile")) or [USER_KNOWN_HOSTS]
    global_files = _words(entry.get("globalknownhostsfile")) or list(GLOBAL_KNOWN_HOSTS)
    known, *more = user_files
    trusted = (Path(f).expanduser() for f in [*more, *global_files] if f.lower() != "none")
    also_known = tuple(dict.fromkeys(f for f in trusted if f != Path(known).expanduser()))
    timeout = device.connect_timeout_s
    if "connect_timeout_s" not in device.model_fields_set and entry.get("connecttimeout"):
        timeout = _seconds(entry["connecttimeout"], "ConnectTimeout", device) or timeout
    keepalive = device.keepalive_s
    if "keepalive_s" not in device.model_fields_set and entry.get("serveraliveinterval"):
        keepalive = _seconds(entry["serveraliveinterval"], "ServerAliveInterval", device)  # 0: no probes
    keepalive_count = device.keepalive_count
    if "keepalive_count" not in device.model_fields_set and str(entry.get("serveralivecountmax", "")).isdigit():
        keepalive_count = max(1, int(entry["serveralivecountmax"]))
    jump = jump_override
    if jump is None and follow_config_jump:
        proxy = entry.get("proxyjump")
        if proxy and proxy.lower() != "none":
            jump = _resolve_chain(proxy, config, device=device, known_hosts=known_hosts, depth=depth + 1)
        elif entry.get("proxycommand"):
            raise TransportError(
                f"the ssh config gives {alias!r} a ProxyCommand, which edgebench does not run",
                device=device.name,
                fix="use ProxyJump (a jump host) instead of ProxyCommand",
            )
    return Endpoint(
        alias=alias,
        hostname=str(entry.get("hostname", alias)),
        port=port or int(str(entry.get("port", 22))),
        user=str(user or entry.get("user") or getpass.getuser()),
        identities=tuple(str(Path(i).expanduser()) for i in identities),
        known_hosts=Path(known).expanduser(),
        connect_timeout_s=timeout,
        keepalive_s=keepalive,
        keepalive_count=keepalive_count,
        use_agent=str(entry.get("identitiesonly", "no")).lower() != "yes",
        jump=jump,
        ssh_config=device.ssh_config,
        also_known=also_known,
        skipped_identities=skipped,
    )


def _resolve_chain(
    proxy: str, config: paramiko.SSHConfig, *, device: Device, known_hosts: str | None, depth: int
) -> Endpoint:
    """``ProxyJump a,b`` means: reach a (through its own ProxyJump), then b through a."""
    previous: Endpoint | None = None
    for index, hop in enumerate(p for p in proxy.split(",") if p.strip()):
        user, host, port = _split_hop(hop)
        previous = _resolve_host(
            host,
            config,
            device=device,
            user=user,
            port=port,
            identity=None,
            known_hosts=known_hosts,
            jump_override=previous,
            follow_config_jump=index == 0,
            depth=depth + index,
        )
    if previous is None:
        raise TransportError(
            f"empty ProxyJump {proxy!r}", device=device.name, fix="name a jump host or remove the line"
        )
    return previous


def resolve(device: Device) -> Endpoint:
    """Where and as whom to log in to a device, with its jump hosts."""
    assert device.host is not None  # an ssh device always has one (inventory validation)
    config = load_ssh_config(device.ssh_config, device.name)
    return _resolve_host(
        device.host,
        config,
        device=device,
        user=device.user,
        port=device.port,
        identity=device.identity,
        known_hosts=device.known_hosts,
        jump_override=None,
        follow_config_jump=True,
        depth=0,
    )


# ---- host keys --------------------------------------------------------------------------------------
def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _login(ep: Endpoint) -> str:
    """The OpenSSH command line that logs in to ``ep`` the way edgebench does (config, keys, jumps)."""
    words = ["ssh"]
    if ep.ssh_config:
        words += ["-F", str(Path(ep.ssh_config).expanduser())]
    if ep.known_hosts != Path(USER_KNOWN_HOSTS).expanduser():
        words += ["-o", f"UserKnownHostsFile={ep.known_hosts}"]
    for identity in ep.identities:
        words += ["-i", identity]
    hops = []
    jump = ep.jump
    while jump is not None:
        hops.append(f"{jump.user}@{jump.alias}" + (f":{jump.port}" if jump.port != 22 else ""))
        jump = jump.jump
    if hops:
        words += ["-J", ",".join(reversed(hops))]  # ProxyJump lists the first hop first
    if ep.port != 22:
        words += ["-p", str(ep.port)]
    words.append(f"{ep.user}@{ep.alias}")
    return " ".join(shlex.quote(w) for w in words)


def _keyscan(ep: Endpoint, key: paramiko.PKey) -> str:
    """The command that appends the server's key to known_hosts; behind a jump host it scans from there,
    since only the jump host can reach the device."""
    # ssh-ed25519 -> ed25519, ecdsa-sha2-nistp256 -> ecdsa, ssh-rsa -> rsa
    kind = key.get_name().removeprefix("ssh-").split("-", 1)[0]
    port = f"-p {ep.port} " if ep.port != 22 else ""
    scan = f"ssh-keyscan {port}-t {kind} {shlex.quote(ep.hostname)}"
    if ep.jump is not None:
        scan = f"{_login(ep.jump)} {shlex.quote(scan)}"
    return f"{scan} >> {shlex.quote(str(ep.known_hosts))}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a host key that known_hosts does not already hold."""

    def __init__(self, ep: Endpoint, device: str) -> None:
        self.ep = ep
        self.device = device

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        where = "" if self.ep.known_hosts.is_file() else " (the file does not exist)"
        others = [str(f) for f in self.ep.also_known if f.is_file()]
        nor = f" nor in {', '.join(others)}" if others else ""
        raise HostKeyRejected(
            f"host key of {self.ep.known_hosts_name} ({key.get_name()} {fingerprint(key)}) is not in "
            f"{self.ep.known_hosts}{where}{nor}; edgebench never adds host keys by itself",
            device=self.device,
            fix=f"check that fingerprint with the device's owner, then run: {_keyscan(self.ep, key)}",
        )


# ---- connecting ---------------------------------------------------------------------------------------
def _offline(
    ep: Endpoint, device: str, what: str, fix: str, kind: type[DeviceOffline | DeviceRefused] = DeviceOffline
) -> DeviceOffline | DeviceRefused:
    return kind(f"{ep.route()}: {what}", device=device, fix=fix)


def _connect_one(ep: Endpoint, device: str, sock: socket.socket | paramiko.Channel | None) -> paramiko.SSHClient:
    """Open one authenticated SSH connection (through ``sock`` when it comes from a jump host)."""
    for identity in ep.identities:
        if not Path(identity).is_file():
            raise _offline(
                ep, device, f"identity file {identity} does not exist", "correct identity: (or IdentityFile)"
            )
    client = paramiko.SSHClient()
    client.set_log_channel(_PARAMIKO_LOG)
    client.set_missing_host_key_policy(_RefuseUnknown(ep, device))
    for known in ep.known_files:
        if known.is_file():
            try:
                client.load_system_host_keys(str(known))
            except OSError as exc:
                if known != ep.known_hosts:
                    log.debug("device %s: skipping unreadable %s: %s", device, known, exc)
                    continue  # as OpenSSH: a further file it cannot read is passed over
                raise _offline(
                    ep, device, f"cannot read known_hosts file {known}: {exc.strerror or exc}",
                    "make it readable, or name another file with known_hosts: in the inventory",
                    DeviceRefused,
                ) from None
    timeout = ep.connect_timeout_s
    try:
        if sock is None:
            sock = socket.create_connection((ep.hostname, ep.port), timeout=timeout)
        client.connect(
            ep.hostname,
            port=ep.port,
            username=ep.user,
            # paramiko takes a list of key files here; its stubs say one
            key_filename=list(ep.identities) or None,  # type: ignore[arg-type]
            allow_agent=ep.use_agent,
            look_for_keys=ep.look_for_keys,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            sock=sock,
        )
    except (DeviceOffline, DeviceRefused):  # _RefuseUnknown's, raised from inside connect()
        client.close()
        raise
    except BaseException as exc:
        client.close()
        if sock is not None:
            sock.close()
        raise _connect_error(ep, device, exc) from None
    transport = client.get_transport()
    assert transport is not None
    if ep.keepalive_s > 0:  # ServerAliveInterval 0 in the ssh config: none, as OpenSSH
        transport.set_keepalive(max(1, round(ep.keepalive_s)))
    return client


def _holding(ep: Endpoint, key: paramiko.PKey) -> Path:
    """The known_hosts file that holds ``key`` for this server (the first one, as OpenSSH reads them)."""
    for known in ep.known_files:
        try:
            entries = paramiko.HostKeys(str(known)) if known.is_file() else None
        except OSError:
            continue
        found = entries.lookup(ep.known_hosts_name) if entries is not None else None
        if found is not None and key.get_name() in found and found[key.get_name()] == key:
            return known
    return ep.known_hosts


def _connect_error(ep: Endpoint, device: str, exc: BaseException) -> BaseException:
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        name = ep.known_hosts_name
        holder = _holding(ep, exc.expected_key)
        if holder == ep.known_hosts:
            fix = f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(holder))} && " + _keyscan(ep, exc.key)
        else:  # a file the user may not write (the global one): override it in the user's file
            fix = f"ask its owner to update {holder}, or override it in {ep.known_hosts}: {_keyscan(ep, exc.key)}"
        return _offline(
            ep,
            device,
            f"host key CHANGED: the server offers {exc.key.get_name()} {fingerprint(exc.key)} but "
            f"{holder} holds {fingerprint(exc.expected_key)}; refusing to connect (this is what a "
            "man-in-the-middle looks like)",
            f"if the device was reinstalled, confirm the new fingerprint with its owner, then run: {fix}",
            HostKeyRejected,
        )
    # paramiko's words when it had no key to offer at all (no key file, no agent)
    no_keys = isinstance(exc, paramiko.SSHException) and "no authentication methods available" in str(exc).lower()
    if isinstance(exc, paramiko.AuthenticationException) or no_keys:
        agent = " and the SSH agent" if ep.use_agent else ""
        port = f"-p {ep.port} " if ep.port != 22 else ""
        if not ep.identities and ep.skipped_identities:
            missing = ", ".join(ep.skipped_identities)
            config = ep.ssh_config or "~/.ssh/config"
            return _offline(
                ep,
                device,
                f"authentication failed for user {ep.user!r}: every IdentityFile the ssh config names is missing "
                f"here ({missing}), so {'only the SSH agent was' if ep.use_agent else 'no key was'} tried: {exc}",
                f"correct IdentityFile in {config}, or set identity: in the inventory",
                AuthenticationFailed,
            )
        tried = ", ".join(ep.identities) if ep.identities else "the default keys in ~/.ssh"
        key = ep.identities[0] if ep.identities else "~/.ssh/id_ed25519"
        return _offline(
            ep,
            device,
            f"authentication failed for user {ep.user!r} (tried {tried}{agent}): {exc}",
            f"authorize the key on the device (ssh-copy-id -i {key}.pub {port}{ep.user}@{ep.hostname}) "
            "or set identity: / user: in the inventory",
            AuthenticationFailed,
        )
    if isinstance(exc, ConnectionRefusedError | paramiko.ssh_exception.NoValidConnectionsError):
        return _offline(
            ep,
            device,
            "connection refused (no SSH server listening)",
            "power the device on and start sshd, or correct host:/port: in the inventory",
        )
    if isinstance(exc, socket.gaierror):
        return _offline(ep, device, f"cannot resolve host name {ep.hostname!r}", "correct host: (or the Host alias)")
    if isinstance(exc, TimeoutError):
        return _offline(
            ep,
            device,
            f"no answer within {ep.connect_timeout_s:g} s (connect timeout)",
            "check that the device is on and reachable, or raise connect_timeout_s in the inventory",
        )
    if isinstance(exc, paramiko.SSHException | EOFError | OSError):
        text = str(exc) or type(exc).__name__
        if "banner" in text.lower() or "no existing session" in text.lower():  # paramiko's words for a stuck server
            text = f"the SSH server did not answer within {ep.connect_timeout_s:g} s (it is stuck, or it is not sshd)"
        return _offline(ep, device, f"SSH connection failed: {text}", "check the device's sshd and network")
    return exc


def _open_chain(ep: Endpoint, device: str) -> list[paramiko.SSHClient]:
    """Connect to ``ep`` through its jump hosts; return the clients, the device's last."""
    if ep.jump is None:
        return [_connect_one(ep, device, None)]
    try:
        clients = _open_chain(ep.jump, device)
    except (DeviceOffline, DeviceRefused) as exc:
        what = exc.message.removeprefix(f"device {device!r}: ")
        raise type(exc)(f"jump host {what} (on the way to {ep.label})", device=device, fix=exc.fix) from None
    try:
        hop = clients[-1].get_transport()
        assert hop is not None
        try:
            channel = hop.open_channel(
                "direct-tcpip", (ep.hostname, ep.port), ("127.0.0.1", 0), timeout=ep.connect_timeout_s
            )
        except (paramiko.SSHException, OSError) as exc:
            raise _offline(
                ep,
                device,
                f"the jump host {ep.jump.label} could not connect to {ep.hostname}:{ep.port} ({exc})",
                "check the device from the jump host (is it on? is the port right?)",
            ) from None
        clients.append(_connect_one(ep, device, channel))
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise
    return clients


def _with_timeout(ep: Endpoint, timeout: float) -> Endpoint:
    """The same route with every hop's connect timeout capped."""
    jump = _with_timeout(ep.jump, timeout) if ep.jump is not None else None
    return replace(ep, connect_timeout_s=min(ep.connect_timeout_s, timeout), jump=jump)


# ---- running commands -----------------------------------------------------------------------------------
def command_line(
    argv: Sequence[str], *, env: Mapping[str, str] | None, token: str, device_deadline_s: float | None
) -> str:
    """The one string the device's shell runs for ``argv``: quoted, with its PID first on stderr.

    The shell's own stderr goes to /dev/null (the command keeps the real one as fd 2, via fd 3), so the
    shell's "Aborted ... <command line>" report does not bury the command's last words.
    """
    if not argv:
        raise ValueError("empty argv")
    parts = [f": {token}", "exec 3>&2 2>/dev/null", f"echo {_PGID_MARK}$$ >&3"]
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"environment variable name {name!r} is not a valid shell name")
        parts.append(f"export {name}={shlex.quote(value)}")
    command = " ".join(shlex.quote(a) for a in argv) + " 2>&3 3>&-"
    if device_deadline_s is None:
        parts.append(command)
    else:
        limit = math.ceil(device_deadline_s)
        guarded = f"timeout -s KILL {limit} {command}"
        parts.append(f"if command -v timeout >/dev/null 2>&1; then {guarded}; else {command}; fi")
    return "; ".join(parts)


def _exit_code(status: int) -> int:
    """The shell reports death by signal N as 128+N; return -N for it, as ``subprocess`` does locally."""
    return -(status - 128) if 128 < status <= 128 + 64 else status


def kill_command(pgid: int | None, token: str) -> str:
    """SIGKILL everything in the command's session; find it by its token when its PID never arrived.

    sshd makes the wrapper shell a session and process group leader, so its PID names both. The whole
    session goes, not only the group: coreutils ``timeout`` moves its child into a group of its own.
    """
    pattern = shlex.quote(f"[{token[0]}]{token[1:]}")  # the regex does not match this kill command itself
    parts = ['k() { pkill -KILL -s "$1" 2>/dev/null; kill -KILL -- -"$1" 2>/dev/null; }']
    if pgid is not None:
        parts.append(f"k {pgid}")
    parts.append(f"for p in $(pgrep -f {pattern}); do k $p; done")
    parts.append("exit 0")
    return "; ".join(parts)


class _Expired(Exception):
    """The deadline passed while waiting on the device."""


class _Lost(Exception):
    """The SSH connection went away while a command ran."""


class _Silent(Exception):
    """The server stopped answering keepalives while a command ran."""


def _pgid_of(stderr: bytes) -> int | None:
    mark = _PGID_MARK.encode()
    index = stderr.find(mark)
    if index < 0:
        return None
    end = stderr.find(b"\n", index)
    if end < 0:
        return None
    digits = stderr[index + len(mark) : end].strip()
    return int(digits) if digits.isdigit() else None


def _strip_mark(stderr: bytes) -> bytes:
    mark = _PGID_MARK.encode()
    index = stderr.find(mark)
    if index < 0:
        return stderr
    end = stderr.find(b"\n", index)
    return stderr[:index] + (stderr[end + 1 :] if end >= 0 else b"")


@contextlib.contextmanager
def _closing_at(channel: paramiko.Channel, deadline: float, expired: threading.Event) -> Iterator[None]:
    """Close the channel at the deadline: unblocks paramiko calls that have no timeout of their own."""

    def fire() -> None:
        expired.set()
        channel.close()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _bounded(action: Callable[[], object], timeout_s: float) -> bool:
    """Run ``action`` in a daemon thread and wait at most ``timeout_s``; return whether it finished."""
    done = threading.Event()

    def work() -> None:
        with contextlib.suppress(Exception):
            action()
        done.set()

    threading.Thread(target=work, daemon=True).start()
    return done.wait(timeout_s)


class _Liveness:
    """Ask the server for a reply every ``keepalive_s`` while a command runs; close the channel when one
    does not come within ``silent_after_s`` (the device is powered off, cut off or wedged). With
    ``keepalive_s`` 0 (``ServerAliveInterval 0``) it asks nothing.

    The request is OpenSSH's own ``keepalive@openssh.com``: sshd answers any global request that wants a
    reply (with a failure, for this name), so an answer of either kind proves the route is alive.
    """

    def __init__(
        self, transport: paramiko.Transport, channel: paramiko.Channel, ep: Endpoint, silent: threading.Event
    ) -> None:
        self.transport = transport
        self.channel = channel
        self.ep = ep
        self.silent = silent  # set when the server stopped answering (the channel is then closed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _ask(self) -> None:
        self.transport.global_request("keepalive@openssh.com", wait=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.ep.keepalive_s):
            answered = _bounded(self._ask, self.ep.silent_after_s)
            if self._stop.is_set():
                return
            if not answered and self.transport.is_active():
                self.silent.set()
                self.channel.close()  # unblocks the reader
                return

    def __enter__(self) -> _Liveness:
        if self.ep.keepalive_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


class _StallWatch:
    """Close the SFTP channel once a transfer has made no progress for ``timeout_s``.

    paramiko's channel timeout alone is not enough: it fires inside ``put``/``get``, whose file then waits
    the same timeout again to close itself on the stalled channel. A closed channel fails at once.
    """

    def __init__(self, channel: paramiko.Channel, timeout_s: float) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self.stalled = threading.Event()  # set when the watch closed the channel
        self._last = time.monotonic()
        self._stop = threading.Event()
        # Deciding "stalled" and stopping exclude each other: once stop() returns, stalled is final, so
        # a transfer that finished as the watch fired is seen to have lost its channel.
        self._decide = threading.Lock()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def progress(self, done: int = 0, total: int = 0) -> None:
        """paramiko's transfer callback: called after every chunk."""
        self._last = time.monotonic()

    def stop(self) -> None:
        with self._decide:
            self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.5, self.timeout_s / 4)):
            with self._decide:
                if self._stop.is_set() or time.monotonic() - self._last < self.timeout_s:
                    continue
                self.stalled.set()
            # Outside the lock: this may block on the stalled socket (a daemon thread, after the flag), or
            # fail on one the transport has given up already; closed either way, which is all it is for.
            with contextlib.suppress(Exception):
                self.channel.close()
            return

    def __enter__(self) -> _StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _short(argv: Sequence[str]) -> str:
    """A command for a message: programs by their base name, long words cut, at most four words."""
    words = []
    for arg in argv[:4]:
        word = posixpath.basename(arg) if arg.startswith("/") else arg
        words.append(shlex.quote(word if len(word) <= 32 else word[:29] + "..."))
    return " ".join(words) + (" ..." if len(argv) > 4 else "")


class SshTransport:
    """One SSH connection to one device, reused for all its commands and file transfers."""

    def __init__(self, device: Device, endpoint: Endpoint, clients: list[paramiko.SSHClient]) -> None:
        self.device = device.name
        self.endpoint = endpoint
        self._clients = clients
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._made_dirs: set[str] = set()
        self._broken: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, device: Device) -> SshTransport:
        """Resolve, connect and authenticate; raise DeviceOffline (unreachable) or DeviceRefused (host key,
        authentication) with the fix when that fails."""
        endpoint = resolve(device)
        started = time.monotonic()
        clients = _open_chain(endpoint, device.name)
        elapsed = time.monotonic() - started
        log.debug("device %s: connected to %s in %.3f s", device.name, endpoint.route(), elapsed)
        return cls(device, endpoint, clients)

    @property
    def _client(self) -> paramiko.SSHClient:
        return self._clients[-1]

    def _transport(self) -> paramiko.Transport:
        if self._broken is not None:
            raise TransportError(
                f"the SSH connection is unusable: {self._broken}",
                device=self.device,
                fix="check the device (edgebench devices check), then run again",
            )
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self._broken = "the connection was lost"
            raise TransportError(
                "the SSH connection was lost",
                device=self.device,
                fix="check that the device is up and its sshd running (edgebench devices check)",
            )
        return transport

    # ---- commands -------------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_fix: str | None = None,
    ) -> CommandResult:
        token = f"{_TOKEN_PREFIX}{uuid.uuid4().hex[:16]}"
        try:
            command = command_line(argv, env=env, token=token, device_deadline_s=timeout_s + DEVICE_DEADLINE_GRACE_S)
        except ValueError as exc:
            raise TransportError(str(exc), device=self.device, fix="correct env: in the inventory") from None
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            channel = self._transport().open_session(timeout=min(timeout_s, self.endpoint.connect_timeout_s))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._broken = f"opening a channel failed ({exc or type(exc).__name__})"
            raise TransportError(
                f"cannot start {_short(argv)}: {self._broken}",
                device=self.device,
                fix="check the device's sshd (MaxSessions) and network",
            ) from None
        out = bytearray()
        err = bytearray()
        expired = threading.Event()
        silent = threading.Event()
        ep = self.endpoint
        interrupted = False
        try:
            with _closing_at(channel, deadline, expired):
                channel.exec_command(command)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
            if expired.is_set():  # the timer fired just as the last call returned
                raise _Expired()
            with _Liveness(self._transport(), channel, ep, silent):
                self._collect(channel, deadline, out, err)
            # A command whose exit status arrived finished, all its output before it, even if its
            # reply window lapsed as it ended (the watcher may have closed the channel just after).
            if silent.is_set() and channel.exit_status == -1:
                raise _Silent()
        except BaseException as exc:
            pgid = _pgid_of(bytes(err))
            # The closed channel can also surface as a lost connection (a read on its closed event pipe).
            if silent.is_set():
                window = ep.silent_after_s
                self._broken = f"the device stopped answering ({window:g} s without a reply)"
                killed = self._kill(pgid, token)
                raise TransportError(
                    f"the device stopped answering while running {_short(argv)}: no reply to SSH keepalives "
                    f"for {window:g} s ({ep.keepalive_count} x keepalive_s {ep.keepalive_s:g}); {killed}",
                    device=self.device,
                    fix="check the device's power and network (edgebench devices check); on a slow link raise "
                    "keepalive_s or keepalive_count in the inventory",
                ) from None
            if isinstance(exc, _Expired) or expired.is_set():
                killed = self._kill(pgid, token)
                raise CommandTimeout(
                    f"{_short(argv)} exceeded its {timeout_s:g} s timeout; {killed}",
                    device=self.device,
                    fix=timeout_fix or JOB_TIMEOUT_FIX,
                ) from None
            if isinstance(exc, _Lost | paramiko.SSHException | EOFError | OSError):
                self._broken = "the connection was lost"
                killed = self._kill(pgid, token)
                raise TransportError(
                    f"the SSH connection was lost while running {_short(argv)}; {killed}",
                    device=self.device,
                    fix="check that the device is up and its sshd running (edgebench devices check)",
                ) from None
            # Ctrl-C and anything unexpected: leave nothing behind on the device. An interrupt can land
            # inside paramiko while it holds a lock, so the kill goes over a fresh connection and this
            # one is given up.
            interrupted = not isinstance(exc, Exception)
            if interrupted:
                self._broken = "a command was interrupted (Ctrl-C)"
            self._kill(pgid, token)
            raise
        finally:
            if interrupted:
                _bounded(channel.close, KILL_TIMEOUT_S)
            else:
                channel.close()
        return CommandResult(
            tuple(argv),
            _exit_code(channel.exit_status),
            bytes(out),
            _strip_mark(bytes(err)),
            time.monotonic() - started,
        )

    def _collect(self, channel: paramiko.Channel, deadline: float, out: bytearray, err: bytearray) -> None:
        """Read stdout and stderr until the command exits, waiting at most until the deadline."""
        ready_fd = channel.fileno()  # becomes readable whenever stdout or stderr data (or EOF) arrives
        while True:
            while channel.recv_ready():
                out += channel.recv(1 << 16)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(1 << 16)
            if channel.closed or (channel.eof_received and channel.exit_status_ready()):
                while channel.recv_ready():
                    out += channel.recv(1 << 16)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                if channel.exit_status == -1:
                    transport = channel.get_transport()
                    if transport is None or not transport.is_active():
                        raise _Lost()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Expired()
            if channel.eof_received:
                # After EOF the event pipe stays readable; wait for the exit status instead of spinning.
                channel.status_event.wait(min(remaining, 0.05))
            else:
                select.select([ready_fd], [], [], min(remaining, 0.5))

    def _kill(self, pgid: int | None, token: str) -> str:
        """Kill the command's session on the device; say how that went, for the error message."""
        command = kill_command(pgid, token)
        what = "its processes on the device" + (f" (session {pgid})" if pgid is not None else "")
        stalled = ""
        if self._broken is None:
            try:
                self._exec_quick(self._transport(), command, open_timeout_s=2.0)
                return f"{what} were killed"
            except (TransportError, _Expired, _Lost, paramiko.SSHException, OSError, EOFError):
                self._broken = "the connection stalled (the device's sshd stopped answering)"
                stalled = self._broken + "; "
        # The old connection is stalled or gone: kill over a fresh one.
        clients: list[paramiko.SSHClient] = []
        try:
            clients = _open_chain(_with_timeout(self.endpoint, KILL_TIMEOUT_S), self.device)
            transport = clients[-1].get_transport()
            assert transport is not None
            self._exec_quick(transport, command)
            return f"{stalled}{what} were killed over a new connection"
        except (TransportError, _Expired, _Lost, paramiko.SSHException, OSError, EOFError) as exc:
            if isinstance(exc, TransportError):
                detail = exc.message.removeprefix(f"device {self.device!r}: ")
            else:
                detail = str(exc) or type(exc).__name__
            return (
                f"{stalled}could not reconnect to kill {what} ({detail}); where coreutils timeout exists "
                "the device ends them at the deadline"
            )
        finally:
            for client in reversed(clients):
                client.close()

    def _exec_quick(
        self, transport: paramiko.Transport, command: str, *, open_timeout_s: float = KILL_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        channel = transport.open_session(timeout=open_timeout_s)
        expired = threading.Event()
        try:
            with _closing_at(channel, deadline, expired):
                channel.exec_command(command)
                channel.shutdown_write()
            self._collect(channel, deadline, bytearray(), bytearray())
        finally:
            channel.close()
        if expired.is_set():
            raise _Expired()

    # ---- files ------------------------------------------------------------------------------------
    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                sftp = self._client.open_sftp()
            except paramiko.sftp.SFTPError as exc:
                # sshd starts an external sftp-server through the login shell: text that shell prints
                # arrives first and is read as the server's reply.
                raise TransportError(
                    f"cannot open SFTP: {exc} (the login shell printed text before the SFTP server spoke)",
                    device=self.device,
                    fix="make the login shell print nothing for non-interactive sessions (its rc files, BASH_ENV), "
                    "or use Subsystem sftp internal-sftp in the device's sshd_config",
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TransportError(
                    f"cannot open SFTP: {exc or type(exc).__name__}",
                    device=self.device,
                    fix="enable the sftp Subsystem in the device's sshd_config",
                ) from None
            channel = sftp.get_channel()
            assert channel is not None
            channel.settimeout(SFTP_IO_TIMEOUT_S)
            self._sftp = sftp
        return self._sftp

    def _sftp_call(self, what: str, fn: Callable[[paramiko.SFTPClient, _StallWatch], T]) -> T:
        self._transport()
        sftp = self._sftp_client()
        channel = sftp.get_channel()
        assert channel is not None
        with _StallWatch(channel, SFTP_IO_TIMEOUT_S) as watch:
            try:
                result = fn(sftp, watch)
            except Exception as exc:
                # The watch closed the channel (paramiko then raises whatever a closed channel gives), or
                # the channel's own timeout fired (socket.timeout, an OSError): either way, a stall.
                if watch.stalled.is_set() or isinstance(exc, TimeoutError):
                    self._broken = f"a file transfer stalled for {SFTP_IO_TIMEOUT_S:g} s"
                    raise TransportError(
                        f"{what}: no progress for {SFTP_IO_TIMEOUT_S:g} s (the connection stalled)",
                        device=self.device,
                        fix="check the device's network and sshd",
                    ) from None
                if isinstance(exc, paramiko.SSHException | EOFError | paramiko.sftp.SFTPError):
                    self._broken = "the connection was lost"
                    raise TransportError(
                        f"{what}: the SSH connection was lost ({exc or type(exc).__name__})",
                        device=self.device,
                        fix="check that the device is up and its sshd running (edgebench devices check)",
                    ) from None
                raise
        if watch.stalled.is_set():  # it finished just as the watch gave up on it: a new channel next time
            self._sftp = None
            with contextlib.suppress(Exception):
                sftp.close()
        return result

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if not directory or directory in self._made_dirs or directory == "/":
            return
        try:
            sftp.stat(directory)
        except FileNotFoundError:
            self._makedirs(sftp, posixpath.dirname(directory))
            with contextlib.suppress(OSError):  # a concurrent mkdir is fine; a real failure shows on put
                sftp.mkdir(directory)
        self._made_dirs.add(directory)

    def put(self, local: Path, remote: str) -> int:
        size = local.stat().st_size

        def send(sftp: paramiko.SFTPClient, watch: _StallWatch) -> int:
            self._makedirs(sftp, posixpath.dirname(remote))
            try:
                sftp.put(str(local), remote, callback=watch.progress, confirm=True)
            except OSError as exc:
                if watch.stalled.is_set() or isinstance(exc, TimeoutError):
                    raise  # nothing more is asked of a stalled connection; _sftp_call says what happened
                with contextlib.suppress(OSError):
                    sftp.remove(remote)  # never leave a partial file behind
                watch.stop()  # what follows runs commands, not SFTP
                raise self._upload_error(local, remote, size, exc) from None
            return size

        return self._sftp_call(f"upload of {local.name} to {remote}", send)

    def _upload_error(self, local: Path, remote: str, size: int, exc: OSError) -> TransportError:
        directory = posixpath.dirname(remote) or "."
        free = self.free_bytes(directory)
        if isinstance(exc, PermissionError):
            return TransportError(
                f"permission denied writing {remote}",
                device=self.device,
                fix=f"make {directory} writable by {self.endpoint.user}, or point cache_dir elsewhere",
            )
        if free is not None and free < max(size, 1 << 20):
            return TransportError(
                f"the device's disk is full: {local.name} ({size // 1024} KiB) does not fit in {directory} "
                f"({free // 1024} KiB free)",
                device=self.device,
                fix="free space on the device (or lower cache_max_mb), or point cache_dir at a bigger disk",
            )
        return TransportError(
            f"upload of {local.name} to {remote} failed: {exc.strerror or exc}",
            device=self.device,
            fix="check the path and free space on the device",
        )

    def free_bytes(self, path: str) -> int | None:
        """Bytes available to the user on the filesystem holding ``path`` (POSIX ``df``), or None."""
        try:
            result = self.run(
                ["df", "-Pk", path],
                timeout_s=KILL_TIMEOUT_S * 2,
                timeout_fix=f"df has a fixed {KILL_TIMEOUT_S * 2:g} s limit: look for a hung filesystem under {path}",
            )
        except TransportError:
            return None
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        if result.exit_code != 0 or len(lines) < 2:
            return None
        fields = lines[-1].split()
        return int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None

    def get(self, remote: str, local: Path) -> int:
        def fetch(sftp: paramiko.SFTPClient, watch: _StallWatch) -> int:
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                sftp.get(remote, str(local), callback=watch.progress)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    local.unlink(missing_ok=True)  # never leave a partial file behind
                if watch.stalled.is_set() or isinstance(exc, TimeoutError) or not isinstance(exc, OSError):
                    raise  # a stall or a lost connection is _sftp_call's to report
                if isinstance(exc, FileNotFoundError):
                    raise TransportError(
                        f"{remote} does not exist on the device",
                        device=self.device,
                        fix="check the runner's output and the free space on the device",
                    ) from None
                raise TransportError(
                    f"download of {remote} to {local} failed: {exc.strerror or exc}",
                    device=self.device,
                    fix=f"check that {remote} is readable on the device and that {local.parent} has free space",
                ) from None
            return local.stat().st_size

        return self._sftp_call(f"download of {remote}", fetch)

    def home(self) -> str:
        if self._home is None:
            self._home = self._sftp_call("finding the home directory", lambda sftp, _: sftp.normalize("."))
        return self._home

    def close(self) -> None:
        with self._lock:
            sftp, self._sftp = self._sftp, None
            self._broken = self._broken or "the connection was closed"

        def shut() -> None:
            if sftp is not None:
                with contextlib.suppress(Exception):
                    sftp.close()
            for client in reversed(self._clients):
                with contextlib.suppress(Exception):
                    client.close()

        if not _bounded(shut, KILL_TIMEOUT_S):  # a wedged paramiko lock: drop the sockets instead
            for client in self._clients:
                transport = client.get_transport()
                if transport is not None:
                    with contextlib.suppress(Exception):
                        transport.sock.close()
