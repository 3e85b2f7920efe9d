"""The device cache and the health check over the real local transport: a device Python that prints before
its reply, one that needs the device's env:, a command whose timeout job_timeout_s does not govern, and
the ssh config's key files as OpenSSH reads them."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from harness.deploy import Deployable, DeviceCache
from harness.errors import CommandTimeout, TransportError
from harness.lab import health
from harness.lab.health import check_device
from harness.lab.inventory import Device
from harness.transport.local import LocalTransport
from harness.transport.protocol import CommandResult
from harness.transport.ssh import resolve


def _python_wrapper(tmp_path: Path, before: str) -> str:
    """A device "python3" that is a shell script running ``before`` and then this interpreter, as a board's
    vendor wrapper or a login shell's rc file would."""
    path = tmp_path / "bin" / "python3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{before}\nexec {sys.executable} "$@"\n', encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def _item(tmp_path: Path) -> Deployable:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"weights" * 100)
    return Deployable(path, hashlib.sha256(path.read_bytes()).hexdigest(), "onnx")


def _local_device(tmp_path: Path, python: str, **fields: object) -> Device:
    return Device.model_validate(
        {"name": "bench", "platform": "generic-linux", "transport": "local", "python": python,
         "cache_dir": str(tmp_path / "device-cache"), **fields}
    )


# ---- a line before the cache script's reply ----------------------------------------------------------
def test_a_device_python_that_prints_a_banner_still_deploys(tmp_path: Path) -> None:
    python = _python_wrapper(tmp_path, 'echo "Welcome to the board (login banner)"')
    cache = DeviceCache(LocalTransport("bench"), python, str(tmp_path / "device"))
    item = _item(tmp_path)
    paths = cache.ensure([item])
    assert Path(paths[item.sha256]).read_bytes() == item.local.read_bytes()
    assert cache.stats.uploaded_files == 1


class _GarbledCacheReply:
    """A fake transport: the real local one, except that the cache script's stdout is replaced by
    ``stdout`` (no real device here prints garbage in place of the script's reply on cue)."""

    def __init__(self, stdout: bytes) -> None:
        self.inner = LocalTransport("bench")
        self.device = "bench"
        self.stdout = stdout

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_fix: str | None = None,
    ) -> CommandResult:
        result = self.inner.run(argv, timeout_s=timeout_s, stdin=stdin, env=env, timeout_fix=timeout_fix)
        if stdin is not None and b'"root"' in stdin:  # the cache script's request
            return CommandResult(result.argv, 0, self.stdout, result.stderr, result.duration_s)
        return result

    def put(self, local: Path, remote: str) -> int:
        return self.inner.put(local, remote)

    def get(self, remote: str, local: Path) -> int:
        return self.inner.get(remote, local)

    def home(self) -> str:
        return self.inner.home()

    def close(self) -> None:
        self.inner.close()


def test_a_cache_reply_that_is_not_json_names_the_login_shell_fix(tmp_path: Path) -> None:
    cache = DeviceCache(_GarbledCacheReply(b"Welcome!\nLast login: today\n"), sys.executable, str(tmp_path / "d"))
    with pytest.raises(TransportError) as info:
        cache.ensure([_item(tmp_path)])
    assert info.value.one_line() == (
        "device 'bench': device cache reply is not JSON: 'Welcome!\\nLast login: today\\n'; "
        "fix: make the login shell print nothing for non-interactive sessions (its rc files, BASH_ENV)"
    )


def test_devices_check_reports_a_garbled_cache_reply_instead_of_crashing(tmp_path: Path) -> None:
    device = _local_device(tmp_path, sys.executable)
    record = check_device(device, connect=lambda d: _GarbledCacheReply(b"\x1b[1mWelcome\x1b[0m\n"))
    assert (record.state, record.python) == ("offline", sys.version.split()[0])
    assert "device cache reply is not JSON: '\\x1b[1mWelcome\\x1b[0m\\n'" in record.reason
    assert "fix: make the login shell print nothing for non-interactive sessions" in record.reason


# ---- the device's env: ---------------------------------------------------------------------------------
def test_the_cache_script_runs_with_the_device_env(tmp_path: Path) -> None:
    """A device whose Python only starts with its env: (an LD_LIBRARY_PATH, say) passes the health check:
    the cache script gets that env, as the probes and the runner do."""
    python = _python_wrapper(
        tmp_path, '[ "$VENDOR_SDK" = /opt/sdk ] || { echo "libvendor.so: not found" >&2; exit 127; }'
    )
    device = _local_device(tmp_path, python, env={"VENDOR_SDK": "/opt/sdk"})
    record = check_device(device)
    assert record.state != "offline", record.reason
    assert record.runtimes.get("onnxruntime"), record.runtimes

    cache = DeviceCache(LocalTransport("bench"), python, str(tmp_path / "d"), env=device.env)
    assert cache.ensure([_item(tmp_path)])
    without = DeviceCache(LocalTransport("bench"), python, str(tmp_path / "d2"))
    with pytest.raises(TransportError, match=r"libvendor\.so: not found"):
        without.ensure([_item(tmp_path)])


# ---- timeouts job_timeout_s does not govern ------------------------------------------------------------
def test_a_cache_timeout_names_the_cache_limit_not_job_timeout_s(tmp_path: Path) -> None:
    python = _python_wrapper(tmp_path, "sleep 30")
    cache = DeviceCache(LocalTransport("bench"), python, str(tmp_path / "d"), timeout_s=0.5)
    with pytest.raises(CommandTimeout) as info:
        cache.ensure([_item(tmp_path)])
    assert "exceeded its 0.5 s timeout and was killed" in info.value.message
    assert info.value.fix is not None
    assert info.value.fix.startswith("the device cache's 0.5 s limit is fixed: look for a slow or failing disk")
    assert "job_timeout_s" not in info.value.one_line()


def test_a_health_probe_timeout_names_the_probe_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "PROBE_TIMEOUT_S", 0.5)
    record = check_device(_local_device(tmp_path, _python_wrapper(tmp_path, "sleep 30")))
    assert record.state == "offline"
    assert "fix: the health check's probes have a fixed 0.5 s limit" in record.reason
    assert "job_timeout_s" not in record.reason


def test_a_job_command_timeout_still_says_job_timeout_s() -> None:
    with pytest.raises(CommandTimeout) as info:
        LocalTransport("bench").run(["sleep", "30"], timeout_s=0.3)
    assert info.value.fix == "raise job_timeout_s in the inventory, or look for a hung runtime on the device"


# ---- the ssh config's IdentityFile -----------------------------------------------------------------------
def test_identity_files_the_ssh_config_names_but_this_machine_lacks_are_skipped(tmp_path: Path) -> None:
    key = tmp_path / "id_board"
    key.write_text("not read here")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host board\n  IdentityFile {key}\nHost *\n  IdentityFile {tmp_path}/id_other_laptop\n")
    endpoint = resolve(Device(name="b", platform="generic-linux", host="board", ssh_config=str(config)))
    assert endpoint.identities == (str(key),)
    assert endpoint.skipped_identities == (f"{tmp_path}/id_other_laptop",)
    assert not endpoint.look_for_keys  # as OpenSSH: a named IdentityFile replaces the default keys
    # The inventory's own identity: is not the config's: it is kept, and connecting says when it is missing.
    own = resolve(
        Device(name="b", platform="generic-linux", host="board", ssh_config=str(config), identity="/nowhere/key")
    )
    assert own.identities == ("/nowhere/key",) and own.skipped_identities == ()
