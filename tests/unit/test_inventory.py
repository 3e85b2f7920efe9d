"""The inventory files a user starts from load, and what a user gets wrong in one is named precisely."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.agent.runtimes import known as runner_runtimes
from harness.errors import ConfigError
from harness.lab.inventory import Device, load_lab

DEVICES = Path(__file__).resolve().parents[2] / "devices"
FIVE_PLATFORMS = {"jetson-orin", "coral-devboard", "intel-nuc", "snapdragon-linux", "mac"}


def test_the_example_lab_has_one_device_of_each_platform() -> None:
    lab = load_lab(DEVICES / "example-lab.yaml")
    assert sorted(d.platform for d in lab.devices) == sorted(FIVE_PLATFORMS)
    for device in lab.devices:
        assert device.transport == "ssh" and device.host
        assert device.python is not None and device.python.startswith("/"), "no login shell: an absolute Python"
        assert device.runtimes, f"{device.name} declares its runtimes"
        assert set(device.runtimes) <= set(runner_runtimes()), f"{device.name}: runtimes the runner knows"


def test_the_example_lab_reaches_the_coral_board_through_an_ssh_config_alias() -> None:
    coral = load_lab(DEVICES / "example-lab.yaml").device("coral-01")
    assert coral.host == "coral-01" and coral.user is None and coral.port is None  # all from ~/.ssh/config


def test_the_embedded_local_lab_loads() -> None:
    (device,) = load_lab(DEVICES / "local.yaml").devices
    assert device.transport == "local"


def _lab(tmp_path: Path, device_lines: str) -> Path:
    path = tmp_path / "lab.yaml"
    body = textwrap.indent(textwrap.dedent(device_lines), "    ")
    path.write_text(f"schema_version: 1\nname: t\ndevices:\n  - name: d1\n{body}", encoding="utf-8")
    return path


def test_a_misspelt_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nkeep_alive_s: 5\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.one_line().startswith(f"{path}:7: devices[0].keep_alive_s: unknown key")


def test_an_env_name_a_shell_cannot_export_is_refused_at_load(tmp_path: Path) -> None:
    path = _lab(tmp_path, "platform: intel-nuc\nhost: nuc\nenv:\n  LD-LIBRARY-PATH: /opt/lib\n")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    text = info.value.one_line()
    assert f"{path}:7: devices[0].env" in text and "'LD-LIBRARY-PATH' is not valid" in text


def test_ssh_defaults() -> None:
    device = Device(name="d", platform="generic-linux", host="h")
    assert (device.connect_timeout_s, device.keepalive_s, device.cache_dir) == (10.0, 15.0, "~/.cache/edgebench")
    assert device.python_path == "python3"


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), st.text(max_size=40))
def test_any_shell_name_is_a_valid_env_key(name: str, value: str) -> None:
    assert Device(name="d", platform="mac", host="h", env={name: value}).env == {name: value}


@given(st.text(min_size=1, max_size=20).filter(lambda s: not s.isidentifier() or not s.isascii()))
def test_names_that_are_not_shell_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        Device(name="d", platform="mac", host="h", env={name: "x"})
