"""The SSH transport against real OpenSSH servers: quoting, reuse, files, timeouts, keys, config, jumps."""

from __future__ import annotations

import _thread
import contextlib
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
from harness.lab.loopback import LoopbackLab, rekey, stop_server, wait_for_processes
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


def test_a_device_that_stops_answering_is_given_up_after_its_keepalives_not_at_the_timeout(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """The device's sshd session is frozen (SIGSTOP) mid-command, as a device that lost power or its link
    looks from the host: the TCP connection stays open and nothing answers. With keepalive_s 1 and
    keepalive_count 3 the command is given up in about 4 s, not at its 120 s timeout, and it is killed
    over a new connection (the server itself still accepts one)."""
    loop = make_lab(1)
    server = loop.server("loop-1")
    device = loop.lab.devices[0].model_copy(update={"keepalive_s": 1.0, "keepalive_count": 3})
    transport = SshTransport.connect(device)
    marker = f"eb-silent-{tmp_path.name}"
    # A healthy command longer than the window: every keepalive is answered, nothing is given up.
    assert transport.run(["sh", "-c", "sleep 3.5; echo done", marker], timeout_s=60).stdout == b"done\n"
    stopped: list[int] = []

    def freeze() -> None:
        if wait_for_processes(marker + "-2", gone=False, timeout_s=10):
            stopped.extend(server.session_pids())
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)

    watcher = threading.Thread(target=freeze, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as info:
            transport.run(["sh", "-c", "sleep 300; true", marker + "-2"], timeout_s=120)
        elapsed = time.monotonic() - started
    finally:
        watcher.join(10)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        transport.close()
    assert stopped, "the command never started"
    assert elapsed < 30, elapsed
    message = str(info.value)
    assert "the device stopped answering while running sh -c" in message
    assert "no reply to SSH keepalives for 3 s (3 x keepalive_s 1)" in message
    assert "killed over a new connection" in message and "fix: check the device's power and network" in message
    assert wait_for_processes(marker + "-2", gone=True, timeout_s=5) == []


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


def test_behind_a_jump_host_the_unknown_key_fix_scans_from_the_jump_host_and_works(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """Only the jump host can reach a device behind it, so the command the error gives runs ssh-keyscan
    there (logging in as edgebench does: the same ssh config, keys and known_hosts). Run as printed, it
    adds the device's key, and the next connection succeeds."""
    loop = make_lab(2)
    state = loop.state
    jump, target = state.servers
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {jump.port}\n  IdentityFile {state.client_key}\n"
        f"Host board-9\n  HostName 127.0.0.1\n  Port {target.port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {state.client_key}\n  ProxyJump bastion\n"
    )
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts_line() + "\n")  # the jump host is known, the board is not
    device = Device(
        name="board-9", platform="generic-linux", host="board-9", ssh_config=str(config), known_hosts=str(known),
        python=sys.executable,
    )
    with pytest.raises(HostKeyRejected) as info:
        SshTransport.connect(device)
    fix = str(info.value).split("then run: ", 1)[1]
    assert fix.startswith(f"ssh -F {config} -o UserKnownHostsFile={known} -i {state.client_key} -p {jump.port} ")
    assert f"@bastion 'ssh-keyscan -p {target.port} -t ed25519 127.0.0.1' >> {known}" in fix
    added = subprocess.run(fix, shell=True, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    transport = SshTransport.connect(device)
    try:
        assert transport.run([sys.executable, "-c", "print(6 * 7)"], timeout_s=10).stdout == b"42\n"
    finally:
        transport.close()


def test_keys_are_trusted_from_every_known_hosts_file_and_a_changed_global_one_is_overridden(
    make_lab: Callable[..., LoopbackLab], tmp_path: Path
) -> None:
    """As OpenSSH: every UserKnownHostsFile and the GlobalKnownHostsFile (a managed lab ships its keys in
    /etc/ssh/ssh_known_hosts; here the ssh config points it at a test file). A key changed against the
    global file names that file, and the fix overrides it in the user's own file, which then wins."""
    loop = make_lab(1)
    server = loop.server("loop-1")
    lab_keys, empty = tmp_path / "lab_known_hosts", tmp_path / "known_hosts"
    lab_keys.write_text(server.known_hosts_line() + "\n")
    empty.write_text("")
    base = loop.lab.devices[0].model_dump(exclude_unset=True)
    base.pop("known_hosts", None)

    def device_with(config_lines: str) -> Device:
        config = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}"
        config.write_text(f"Host *\n{config_lines}")
        return Device.model_validate({**base, "ssh_config": str(config)})

    second = device_with(f"  UserKnownHostsFile {empty} {lab_keys}\n  GlobalKnownHostsFile none\n")
    SshTransport.connect(second).close()
    global_only = device_with(f"  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile {lab_keys}\n")
    SshTransport.connect(global_only).close()
    nowhere = device_with(f"  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile {empty}\n")
    with pytest.raises(HostKeyRejected, match=rf"is not in {empty}; edgebench never adds"):
        SshTransport.connect(nowhere)

    lab_file = lab_keys.read_text()
    rekey(server)
    with pytest.raises(HostKeyRejected) as info:
        SshTransport.connect(global_only)
    message = str(info.value)
    assert "host key CHANGED" in message and f"but {lab_keys} holds SHA256:" in message
    fix = message.split(f"or override it in {empty}: ", 1)[1]
    assert fix.startswith(f"ssh-keyscan -p {server.port} -t ed25519 127.0.0.1 >> {empty}"), fix
    added = subprocess.run(fix, shell=True, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert lab_keys.read_text() == lab_file  # the global file is not ours to write
    SshTransport.connect(global_only).close()  # the user's file is read first, as OpenSSH reads it


def test_inventory_fields_win_over_the_ssh_config(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host dev\n  HostName 10.0.0.9\n  Port 2200\n  User cfguser\n  ConnectTimeout 3\n"
        "  ServerAliveInterval 7\n  ServerAliveCountMax 5\n"
    )
    from_config = resolve(Device(name="d", platform="mac", host="dev", ssh_config=str(config)))
    assert (from_config.hostname, from_config.port, from_config.user) == ("10.0.0.9", 2200, "cfguser")
    assert (from_config.connect_timeout_s, from_config.keepalive_s, from_config.keepalive_count) == (3, 7, 5)
    explicit = resolve(
        Device(
            name="d", platform="mac", host="dev", ssh_config=str(config), port=22, user="me", connect_timeout_s=9,
            keepalive_s=2, keepalive_count=4,
        )
    )
    assert (explicit.hostname, explicit.port, explicit.user, explicit.connect_timeout_s) == ("10.0.0.9", 22, "me", 9)
    assert (explicit.keepalive_s, explicit.keepalive_count) == (2, 4)


def test_ssh_config_times_in_openssh_format_zero_turns_probes_off_and_a_bad_one_names_the_key(
    shared_lab: LoopbackLab, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host dev\n  ServerAliveInterval 1m30s\n  ConnectTimeout 2m\n")
    endpoint = resolve(Device(name="d", platform="mac", host="dev", ssh_config=str(config)))
    assert (endpoint.keepalive_s, endpoint.connect_timeout_s) == (90, 120)
    config.write_text("Host dev\n  ServerAliveInterval soon\n")
    with pytest.raises(TransportError, match=r"ssh config ServerAliveInterval 'soon' is not a time; fix: write"):
        resolve(Device(name="d", platform="mac", host="dev", ssh_config=str(config)))
    # ServerAliveInterval 0 (a common ~/.ssh/config line): no probes, and commands run as before.
    config.write_text("Host *\n  ServerAliveInterval 0\n")
    base = shared_lab.lab.devices[0].model_dump(exclude_unset=True)
    base.pop("keepalive_s", None)
    device = Device.model_validate({**base, "ssh_config": str(config)})
    assert resolve(device).keepalive_s == 0
    transport = SshTransport.connect(device)
    try:
        assert transport.run(["sh", "-c", "sleep 1.5; echo fine"], timeout_s=30).stdout == b"fine\n"
    finally:
        transport.close()


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
