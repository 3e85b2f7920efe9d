"""The SSH transport and the loopback lab when things go wrong, against real OpenSSH servers on loopback: a stalled file
transfer, an ssh config that names a key file this machine lacks, a command's timeout that job_timeout_s
does not govern, an sshd that will not start."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.deploy import DeviceCache
from harness.errors import CommandTimeout, TransportError
from harness.lab import health
from harness.lab.health import check_device
from harness.lab.inventory import Device
from harness.lab.loopback import (
    LoopbackError,
    LoopbackLab,
    LoopbackServer,
    start_server,
    stop_server,
    wait_for_processes,
)
from harness.transport import ssh
from harness.transport.ssh import AuthenticationFailed, SshTransport

pytestmark = pytest.mark.integration

STALL_S = 3.0  # SFTP_IO_TIMEOUT_S for the stall tests (60 s in use)


@contextlib.contextmanager
def frozen_when(server: LoopbackServer, grown: Path, min_bytes: int) -> Iterator[list[int]]:
    """SIGSTOP the server's sessions once ``grown`` (a file the transfer writes) holds ``min_bytes``:
    to the host, a device whose link died mid-transfer. Resumed on exit; yields the stopped PIDs."""
    stopped: list[int] = []
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if grown.stat().st_size >= min_bytes:
                    stopped.extend(server.session_pids())
                    for pid in stopped:
                        os.kill(pid, signal.SIGSTOP)
                    return
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield stopped
    finally:
        done.set()
        thread.join(5)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_a_stalled_upload_says_it_stalled_after_one_wait(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device's sshd freezes mid-upload: the error says the transfer made no progress (not an empty
    OS error with a free-space fix), comes after about one SFTP wait (no remove or df on the stalled
    connection after it), and the connection is given up."""
    monkeypatch.setattr(ssh, "SFTP_IO_TIMEOUT_S", STALL_S)
    loop = make_lab(1)
    server = loop.server("loop-1")
    transport = SshTransport.connect(loop.lab.devices[0])
    payload = tmp_path / "model.bin"
    payload.write_bytes(os.urandom(48 << 20))
    remote = server.cache_dir / "files" / "model.bin"
    try:
        warm_up = tmp_path / "warm-up"
        warm_up.write_bytes(b"x")
        transport.put(warm_up, str(remote.with_name("warm-up")))  # SFTP open, directory made
        with frozen_when(server, remote, 1 << 20) as stopped:
            started = time.monotonic()
            with pytest.raises(TransportError) as info:
                transport.put(payload, str(remote))
            elapsed = time.monotonic() - started
        assert stopped, "the upload finished before the server could be frozen"
        message = str(info.value)
        assert f"upload of model.bin to {remote}: no progress for 3 s (the connection stalled)" in message
        assert "fix: check the device's network and sshd" in message
        # One wait: not a second one for paramiko's close on the stalled channel, nor a remove and df after.
        assert elapsed < 5.0, elapsed
        with pytest.raises(TransportError, match="the SSH connection is unusable: a file transfer stalled"):
            transport.run(["true"], timeout_s=10)
    finally:
        transport.close()


def test_a_stalled_download_says_it_stalled_and_leaves_no_partial_file(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh, "SFTP_IO_TIMEOUT_S", STALL_S)
    loop = make_lab(1)
    server = loop.server("loop-1")
    remote = server.cache_dir / "outputs.npz"
    remote.write_bytes(os.urandom(48 << 20))
    local = tmp_path / "back" / "outputs.npz"
    transport = SshTransport.connect(loop.lab.devices[0])
    try:
        assert transport.home()  # SFTP open
        with frozen_when(server, local, 1 << 20) as stopped:
            started = time.monotonic()
            with pytest.raises(TransportError) as info:
                transport.get(str(remote), local)
            elapsed = time.monotonic() - started
        assert stopped, "the download finished before the server could be frozen"
        message = str(info.value)
        assert f"download of {remote}: no progress for 3 s (the connection stalled)" in message
        assert "fix: check the device's network and sshd" in message
        assert elapsed < 5.0, elapsed
        assert not local.exists()  # no half file that a later step could mistake for the outputs
        with pytest.raises(TransportError, match="the SSH connection is unusable: a file transfer stalled"):
            transport.run(["true"], timeout_s=10)
    finally:
        transport.close()


# ---- the ssh config's IdentityFile, as OpenSSH reads it ------------------------------------------------
def _config_device(loop: LoopbackLab, config: Path) -> Device:
    """The lab's first device reached through an ssh config alone: no identity: of its own."""
    base = loop.lab.devices[0].model_dump(exclude_unset=True)
    base.pop("identity", None)
    return Device.model_validate({**base, "host": "board", "port": None, "ssh_config": str(config)})


def test_a_missing_identity_file_from_a_host_star_block_is_skipped_as_openssh_does(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """A ~/.ssh/config often names a key for every host (``Host *``) that only some machines have; OpenSSH
    passes over it and logs in with the key that exists, and so does edgebench."""
    loop = make_lab(1)
    server = loop.server("loop-1")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host board\n  HostName 127.0.0.1\n  Port {server.port}\n  IdentityFile {loop.state.client_key}\n"
        f"Host *\n  IdentityFile {tmp_path}/id_of_another_laptop\n"
    )
    transport = SshTransport.connect(_config_device(loop, config))
    try:
        assert transport.run(["echo", "in"], timeout_s=10).stdout == b"in\n"
    finally:
        transport.close()


def test_when_every_identity_file_of_the_ssh_config_is_missing_the_error_says_so(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    loop = make_lab(1)
    server = loop.server("loop-1")
    config = tmp_path / "ssh_config"
    missing = tmp_path / "id_board_on_the_other_laptop"
    config.write_text(f"Host board\n  HostName 127.0.0.1\n  Port {server.port}\n  IdentityFile {missing}\n")
    with pytest.raises(AuthenticationFailed) as info:  # (the session fixture unset SSH_AUTH_SOCK: no agent)
        SshTransport.connect(_config_device(loop, config))
    message = str(info.value)
    assert f"every IdentityFile the ssh config names is missing here ({missing})" in message
    assert "only the SSH agent was tried" in message
    assert f"fix: correct IdentityFile in {config}, or set identity: in the inventory" in message


# ---- a line on stdout before the cache script's reply --------------------------------------------------
def _greeting_shell(server: LoopbackServer, rc: Path, *, internal_sftp: bool) -> None:
    """Restart the server so that its sessions' bash reads ``rc`` (BASH_ENV, set by sshd: the real user's
    home is not touched), which echoes a greeting for every command, as a careless ~/.bashrc does."""
    rc.write_text('echo "Welcome to the board, $USER"\n')
    stop_server(server)
    text = server.config.read_text().replace("SetEnv SHLVL=1", f"SetEnv SHLVL=1 BASH_ENV={rc}")
    if internal_sftp:
        text = "\n".join("Subsystem sftp internal-sftp" if line.startswith("Subsystem sftp") else line
                         for line in text.splitlines()) + "\n"
    server.config.write_text(text)
    start_server(server)


def test_a_device_whose_shell_prints_for_every_command_passes_devices_check(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """Every command's stdout starts with the shell's greeting; the health check and the deploy read the
    reply on the last line. (SFTP runs inside sshd here, so the greeting cannot reach it.)"""
    loop = make_lab(1)
    _greeting_shell(loop.server("loop-1"), tmp_path / "board_rc", internal_sftp=True)
    device = loop.lab.devices[0]
    transport = SshTransport.connect(device)
    try:
        assert transport.run(["true"], timeout_s=10).stdout.startswith(b"Welcome to the board")
    finally:
        transport.close()
    record = check_device(device)
    assert record.state != "offline", record.reason
    assert record.python == sys.version.split()[0] and record.runtimes.get("onnxruntime")


def test_a_shell_greeting_that_garbles_sftp_is_reported_not_raised(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """With an external sftp-server (Debian's default), sshd starts it through the same shell, whose
    greeting then arrives where the SFTP reply should: devices check says so and how to fix it."""
    loop = make_lab(1)
    _greeting_shell(loop.server("loop-1"), tmp_path / "board_rc", internal_sftp=False)
    record = check_device(loop.lab.devices[0])
    assert record.state == "offline"
    assert "cannot open SFTP: Garbage packet received (the login shell printed text" in record.reason
    assert "fix: make the login shell print nothing for non-interactive sessions" in record.reason


# ---- a timeout job_timeout_s does not govern -------------------------------------------------------------
def test_a_health_probe_timeout_over_ssh_names_the_probe_limit(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "PROBE_TIMEOUT_S", 1.0)
    loop = make_lab(1)
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nsleep 60\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    record = check_device(loop.lab.devices[0].model_copy(update={"python": str(python)}))
    assert record.state == "offline"
    assert "exceeded its 1 s timeout" in record.reason and "were killed" in record.reason
    assert "fix: the health check's probes have a fixed 1 s limit" in record.reason
    assert "job_timeout_s" not in record.reason


def test_a_cache_timeout_over_ssh_names_the_cache_limit(make_lab: Callable[..., LoopbackLab], tmp_path: Path) -> None:
    loop = make_lab(1)
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nsleep 60\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    transport = SshTransport.connect(loop.lab.devices[0])
    try:
        cache = DeviceCache(transport, str(python), str(loop.server("loop-1").cache_dir / "files"), timeout_s=1.0)
        with pytest.raises(CommandTimeout) as info:
            cache.evict(max_bytes=1 << 30, max_age_s=86400)
    finally:
        transport.close()
    assert info.value.fix is not None and info.value.fix.startswith("the device cache's 1 s limit is fixed")
    assert "job_timeout_s" not in str(info.value)


# ---- an sshd that will not start -------------------------------------------------------------------------
def test_an_sshd_config_error_is_quoted_from_the_log(make_lab: Callable[..., LoopbackLab]) -> None:
    loop = make_lab(1)
    server = loop.server("loop-1")
    stop_server(server)
    server.config.write_text(server.config.read_text() + "BogusOption yes\n")
    with pytest.raises(LoopbackError) as info:
        start_server(server)
    message = str(info.value)
    assert "did not start (exit 255)" in message
    assert f"{server.config}: line " in message and "Bad configuration option: BogusOption" in message
    assert f"fix: see {server.log_file}" in message


def test_an_sshd_that_cannot_write_its_pid_file_fails_at_once_with_the_reason(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """sshd logs the problem and runs on without a pid file: the start fails with that line within a
    moment, not after the 10 s wait with no reason, and the stray listener is stopped."""
    loop = make_lab(1)
    server = loop.server("loop-1")
    stop_server(server)
    nowhere = tmp_path / "no-such-dir" / "sshd.pid"
    server.config.write_text(server.config.read_text().replace(f"PidFile {server.pid_file}", f"PidFile {nowhere}"))
    started = time.monotonic()
    with pytest.raises(LoopbackError) as info:
        start_server(server)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f'failed: Couldn\'t create pid file "{nowhere}": No such file or directory' in message
    assert f"fix: see {server.log_file}" in message
    assert wait_for_processes(str(server.config), gone=True, timeout_s=3) == []
