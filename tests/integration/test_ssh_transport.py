"""The SSH transport against real OpenSSH servers: quoting, reuse, files, timeouts, keys, config, jumps."""

from __future__ import annotations

import _thread
import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import CommandTimeout, DeviceOffline, TransportError
from harness.lab.inventory import Device
from harness.lab.loopback import LoopbackLab, stop_server, wait_for_processes
from harness.transport.ssh import HostKeyRejected, SshTransport, command_line, resolve

pytestmark = pytest.mark.integration


@pytest.fixture
def transport(shared_lab: LoopbackLab) -> Iterator[SshTransport]:
    t = SshTransport.connect(shared_lab.lab.devices[0])
    yield t
    t.close()


def _logins(log: Path) -> int:
    return log.read_text(errors="replace").count("Accepted publickey")


ARG = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)


@settings(max_examples=25, deadline=None)
@given(argv=st.lists(ARG, max_size=5), value=ARG)
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_the_command_string_gives_any_argv_and_env_back_exactly(shell: str, argv: list[str], value: str) -> None:
    """What sshd does with the string (``$SHELL -c string``), done here with the device's usual shells."""
    script = 'printf "%s\\0" "$EB_V" "$@"'  # the env value, then every argument, NUL-separated
    words = ["sh", "-c", script, "sh", *argv, "$EB_V"]
    command = command_line(words, env={"EB_V": value}, token="edgebench-cmd-t", device_deadline_s=60)
    done = subprocess.run([shell, "-c", command], capture_output=True, timeout=10, check=True)
    assert done.stdout.decode().split("\0")[:-1] == [value, *argv, "$EB_V"]
    assert done.stderr.startswith(b"edgebench-pgid:")


def test_argv_reaches_the_device_exactly_with_stdin_env_and_exit_code(transport: SshTransport) -> None:
    tricky = ["a b", "it's", '"q"', "$HOME", "`id`", "x;y", "*", "", "é"]
    result = transport.run(["printf", "%s\\n", *tricky], timeout_s=10)
    assert result.exit_code == 0
    assert result.stdout.decode().split("\n")[:-1] == tricky

    result = transport.run(
        ["sh", "-c", 'cat; echo "$EB_VALUE"; echo to-stderr >&2; exit 7'],
        timeout_s=10,
        stdin=b"from stdin\n",
        env={"EB_VALUE": "it's $HOME; `x`"},
    )
    assert result.exit_code == 7
    assert result.stdout == b"from stdin\nit's $HOME; `x`\n"
    assert result.stderr == b"to-stderr\n"  # the wrapper's own bookkeeping is not the command's output


def test_death_by_a_signal_reads_as_it_does_for_a_local_subprocess(transport: SshTransport) -> None:
    result = transport.run(
        [sys.executable, "-c", "import os, sys; print('bye', file=sys.stderr); os.abort()"], timeout_s=10
    )
    assert result.exit_code == -6  # SIGABRT
    assert result.stderr == b"bye\n"  # the shell's own "Aborted ..." line does not bury the last words
    missing = transport.run(["/nonexistent/python3", "-V"], timeout_s=10)
    assert missing.exit_code == 127 and b"/nonexistent/python3" in missing.stderr


def test_one_connection_serves_every_command_and_file(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    device = shared_lab.lab.devices[1]
    log = shared_lab.server(device.name).log_file
    before = _logins(log)
    transport = SshTransport.connect(device)
    try:
        home = transport.home()
        assert home == str(Path.home())
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(300_000))
        remote = f"{device.cache_dir}/deep/er/payload.bin"
        assert transport.put(payload, remote) == 300_000
        for _ in range(3):
            assert transport.run(["cmp", str(payload), remote], timeout_s=10).exit_code == 0
        back = tmp_path / "back.bin"
        assert transport.get(remote, back) == 300_000
        assert back.read_bytes() == payload.read_bytes()
    finally:
        transport.close()
    assert _logins(log) - before == 1


def test_a_timeout_kills_the_whole_remote_session_and_the_connection_lives_on(
    transport: SshTransport, tmp_path: Path
) -> None:
    marker = f"eb-timeout-{tmp_path.name}"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        transport.run(["sh", "-c", f"sleep 300 & sleep 301; echo {marker}", marker], timeout_s=1.5)
    assert time.monotonic() - started < 5
    assert "exceeded its 1.5 s timeout" in str(info.value)
    assert "were killed" in str(info.value)
    assert wait_for_processes(marker, gone=True, timeout_s=3) == []
    assert transport.run(["true"], timeout_s=10).exit_code == 0


def test_ctrl_c_kills_the_remote_command(transport: SshTransport, tmp_path: Path) -> None:
    marker = f"eb-ctrl-c-{tmp_path.name}"

    def interrupt_when_running() -> None:
        wait_for_processes(marker, gone=False, timeout_s=10)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        transport.run(["sh", "-c", "sleep 300; true", marker], timeout_s=60)
    assert wait_for_processes(marker, gone=True, timeout_s=3) == []
    # The interrupt may have landed inside paramiko: that connection is not trusted again.
    with pytest.raises(TransportError, match=r"interrupted \(Ctrl-C\)"):
        transport.run(["true"], timeout_s=10)


def test_an_unknown_host_key_is_refused_with_the_command_that_adds_it(shared_lab: LoopbackLab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    device = shared_lab.lab.devices[0].model_copy(update={"known_hosts": str(empty)})
    with pytest.raises(HostKeyRejected) as info:
        SshTransport.connect(device)
    message = str(info.value)
    assert f"[127.0.0.1]:{device.port}" in message
    assert re.search(r"ssh-ed25519 SHA256:[A-Za-z0-9+/]{43}", message)
    assert f"ssh-keyscan -p {device.port} -t ed25519 127.0.0.1 >> {empty}" in message
    assert empty.read_text() == ""  # never added by itself


def test_a_server_that_never_answers_hits_the_connect_timeout(make_lab: Callable[..., LoopbackLab]) -> None:
    loop = make_lab(1)
    server = loop.server("loop-1")
    listener = server.pid()
    assert listener is not None
    os.kill(listener, signal.SIGSTOP)  # the kernel still accepts the TCP connection; sshd never speaks
    try:
        started = time.monotonic()
        with pytest.raises(DeviceOffline) as info:
            SshTransport.connect(loop.lab.devices[0].model_copy(update={"connect_timeout_s": 1.0}))
        assert time.monotonic() - started < 5
    finally:
        os.kill(listener, signal.SIGCONT)
    assert "the SSH server did not answer within 1 s" in str(info.value)


def test_ssh_config_alias_user_port_identity_and_proxyjump(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    loop = make_lab(2)
    state = loop.state
    jump, target = state.servers
    config = tmp_path / "ssh_config"
    config.write_text(
        textwrap.dedent(
            f"""\
            Host bastion
              HostName 127.0.0.1
              Port {jump.port}
              IdentityFile {state.client_key}
            Host board-*
              User {getpass.getuser()}
              IdentityFile {state.client_key}
            Host board-7
              HostName 127.0.0.1
              Port {target.port}
              ProxyJump bastion
            """
        )
    )
    device = Device(
        name="board-7",
        platform="generic-linux",
        host="board-7",
        ssh_config=str(config),
        known_hosts=str(state.known_hosts),
        python=sys.executable,
    )
    endpoint = resolve(device)
    assert (endpoint.hostname, endpoint.port, endpoint.identities) == (
        "127.0.0.1",
        target.port,
        (str(state.client_key),),
    )
    assert endpoint.jump is not None and endpoint.jump.port == jump.port

    jump_logins, target_logins = _logins(jump.log_file), _logins(target.log_file)
    transport = SshTransport.connect(device)
    try:
        assert transport.run([sys.executable, "-c", "print(6 * 7)"], timeout_s=10).stdout == b"42\n"
    finally:
        transport.close()
    assert _logins(jump.log_file) == jump_logins + 1
    assert _logins(target.log_file) == target_logins + 1

    stop_server(jump)  # without the jump host the board is unreachable, and the error says through what
    with pytest.raises(DeviceOffline) as info:
        SshTransport.connect(device)
    assert f"jump host {getpass.getuser()}@127.0.0.1:{jump.port}: connection refused" in str(info.value)


def test_inventory_fields_win_over_the_ssh_config(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host dev\n  HostName 10.0.0.9\n  Port 2200\n  User cfguser\n  ConnectTimeout 3\n")
    from_config = resolve(Device(name="d", platform="mac", host="dev", ssh_config=str(config)))
    assert (from_config.hostname, from_config.port, from_config.user) == ("10.0.0.9", 2200, "cfguser")
    assert from_config.connect_timeout_s == 3
    explicit = resolve(
        Device(name="d", platform="mac", host="dev", ssh_config=str(config), port=22, user="me", connect_timeout_s=9)
    )
    assert (explicit.hostname, explicit.port, explicit.user, explicit.connect_timeout_s) == ("10.0.0.9", 22, "me", 9)


def test_keys_from_the_ssh_agent_log_in(
    shared_lab: LoopbackLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = shutil.which("ssh-agent")
    if agent is None:
        pytest.skip("ssh-agent is not installed")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([agent, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", str(shared_lab.state.client_key)], check=True, capture_output=True)
        device = shared_lab.lab.devices[2].model_copy(update={"identity": None})
        transport = SshTransport.connect(device)
        try:
            assert transport.run(["true"], timeout_s=10).exit_code == 0
        finally:
            transport.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


def test_a_process_left_on_a_shared_lab_device_is_found(shared_lab: LoopbackLab, transport: SshTransport) -> None:
    """The leftover check the shared lab's teardown makes (after its last test, whatever the order under
    xdist) sees a process a command left running on a device; once that one is stopped, nothing of the
    tests that ran before this one is left either."""
    marker = f"{shared_lab.lab.devices[0].cache_dir}/eb-leftover-{os.getpid()}"
    detach = '"$0" -c "import time; time.sleep(300)" "$1" </dev/null >/dev/null 2>&1 & echo $!'
    started = transport.run(["sh", "-c", detach, sys.executable, marker], timeout_s=10)
    assert started.exit_code == 0, started.stderr
    pid = started.stdout.decode().strip()
    try:
        assert wait_for_processes(marker, gone=False, timeout_s=10) != []
        assert any(line.startswith(f"{pid}: ") for line in shared_lab.state.device_processes())
    finally:
        transport.run(["kill", pid], timeout_s=10)
    assert wait_for_processes(str(shared_lab.state.directory), gone=True, timeout_s=15) == []
