"""Core ML: a real .mlpackage per precision, archived as one file; compute units validated."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from harness.agent.runtimes import coreml_rt
from harness.build.backends import get_backend
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import ConfigError

SHAPE = (1, 3, 16, 16)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-weights"])
def test_mlpackage_is_produced_and_archived_as_one_file(tiny_onnx: Path, tmp_path: Path, precision: str) -> None:
    request = CompileRequest(OnnxModel(tiny_onnx, "s", "s", "input", SHAPE), precision, tmp_path)
    artifact = get_backend("coreml").compile(request)
    assert artifact.name == "model.mlpackage.zip" and artifact.is_file()
    names = zipfile.ZipFile(artifact).namelist()
    assert "model.mlpackage/Manifest.json" in names
    assert any(n.endswith("model.mlmodel") for n in names)
    # The runner's unpack gives back a loadable package directory.
    package = coreml_rt.unpack(str(artifact))
    assert (Path(package) / "Manifest.json").is_file()


def test_archive_bytes_depend_only_on_content(tmp_path: Path) -> None:
    """Same files, different mtimes -> same zip bytes, so the device cache dedupes re-builds.
    (An .mlpackage's Manifest.json carries fresh UUIDs per conversion; the artifact cache, keyed by
    the build inputs, is what keeps those from being rebuilt.)"""
    import os

    from harness.build.backends.onnxruntime import write_archive

    package = tmp_path / "pkg"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weights.bin").write_bytes(b"\x01" * 100)
    (package / "Manifest.json").write_text("{}")
    first = write_archive(tmp_path / "a.zip", [("model.mlpackage", package)]).read_bytes()
    os.utime(package / "Manifest.json", (1e9, 1e9))
    second = write_archive(tmp_path / "b.zip", [("model.mlpackage", package)]).read_bytes()
    assert first == second


def test_compute_units_are_validated() -> None:
    backend = get_backend("coreml")
    assert backend.runner_options("fp16", None, {"compute_units": "CPU_AND_NE"}) == {"compute_units": "CPU_AND_NE"}
    with pytest.raises(ConfigError, match="use one of: ALL, CPU_AND_NE, CPU_AND_GPU, CPU_ONLY"):
        backend.runner_options("fp16", None, {"compute_units": "ANE"})


def test_prediction_outside_macos_is_reported_as_a_missing_runtime() -> None:
    """Untested here: needs macOS. On Linux the adapter says so, and the runner skips the job."""
    if sys.platform == "darwin":
        pytest.skip("on macOS prediction is available")
    with pytest.raises(ImportError, match="needs macOS"):
        coreml_rt.available()
