"""Platform profiles: all six load; a wrong backend, precision or reader is a file:line error that says the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError, UnknownNameError
from harness.lab.platforms import PLATFORMS, load_platform

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "devices" / "platforms"


@pytest.mark.parametrize("name", PLATFORMS)
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_platform(name, directory=PROFILES)
    assert profile.name == name and profile.runtimes
    assert profile.profile_file == (PROFILES / f"{name}.yaml").resolve()


def test_profiles_declare_the_platform_telemetry() -> None:
    coral = load_platform("coral-devboard", directory=PROFILES)
    assert any(r.path == "/sys/class/apex/apex_*/temp" and r.scale == 0.001 for r in coral.telemetry.temperatures)
    jetson = load_platform("jetson-orin", directory=PROFILES)
    assert jetson.telemetry.power[0].parser == "tegrastats"
    mac = load_platform("mac", directory=PROFILES)
    assert mac.telemetry.power[0].needs_root and mac.telemetry.power[0].parser == "powermetrics"
    assert load_platform("jetson-orin", directory=PROFILES).runtimes["tensorrt"] == ("fp32", "fp16", "int8")


def _write(tmp_path: Path, body: str, name: str = "generic-linux") -> Path:
    (tmp_path / f"{name}.yaml").write_text(f"schema_version: 1\nname: {name}\n{body}")
    return tmp_path


def test_unsupported_precision_names_file_line_and_the_supported_ones(tmp_path: Path) -> None:
    _write(tmp_path, "runtimes:\n  onnxruntime: [fp32]\n  openvino: [fp32, int4]\n")
    with pytest.raises(ConfigError) as err:
        load_platform("generic-linux", directory=tmp_path)
    line = err.value.one_line()
    assert line.startswith(f"{tmp_path / 'generic-linux.yaml'}:3: runtimes")
    assert "backend 'openvino' does not support precision 'int4'; supported: fp32, fp16, int8" in line


def test_unknown_backend_lists_the_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, "runtimes:\n  tensorflow: [fp32]\n")
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'; known: coreml, edgetpu, litert"):
        load_platform("generic-linux", directory=tmp_path)


def test_unknown_key_and_incomplete_reader_are_errors(tmp_path: Path) -> None:
    _write(tmp_path, "runtimes: {onnxruntime: [fp32]}\nthread: [2]\n")
    with pytest.raises(ConfigError, match=r"generic-linux.yaml:4: thread: unknown key"):
        load_platform("generic-linux", directory=tmp_path)
    _write(
        tmp_path,
        "runtimes: {onnxruntime: [fp32]}\ntelemetry:\n  temperatures:\n    - {kind: sysfs, label: x, unit: C}\n",
    )
    with pytest.raises(ConfigError, match="a sysfs reader needs an absolute path"):
        load_platform("generic-linux", directory=tmp_path)


def test_unknown_platform_and_name_mismatch(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="use one of: coral-devboard, generic-linux"):
        load_platform("raspberry-pi", directory=tmp_path)
    (tmp_path / "mac.yaml").write_text("schema_version: 1\nname: intel-nuc\nruntimes: {onnxruntime: [fp32]}\n")
    with pytest.raises(ConfigError, match="name: profile name 'intel-nuc' does not match the file name"):
        load_platform("mac", directory=tmp_path)
