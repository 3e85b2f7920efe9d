"""Edge TPU host side: the compiler command, its log parsed from recorded samples, the missing-compiler
error, stand-in compilers (the real one is not installable here) for what a build does with their output, and
the runner's delegate loading (untested here: needs a Coral board; fake interpreter packages stand in)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.agent.runtimes import litert_rt
from harness.build.backends import get_backend
from harness.build.backends.edgetpu import compiler_command, find_compiler, parse_compiler_log
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import BuildError, ConfigError, ToolchainMissing

# edgetpu_compiler 16 output, partly mapped (format as in google-coral/edgetpu issue logs; numbers ours).
PARTIAL = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1203 ms.

Input model: model.tflite
Input size: 3.42MiB
Output model: model_edgetpu.tflite
Output size: 3.71MiB
On-chip memory used for caching model parameters: 3.29MiB
On-chip memory remaining for caching model parameters: 4.46MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 72
Operation log: model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will \
instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported \
by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 68
Number of operations that will run on CPU: 4

Operator                       Count      Status

CONV_2D                        35         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
ADD                            10         Mapped to Edge TPU
QUANTIZE                       1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
RESHAPE                        3          Mapped to Edge TPU
TRANSPOSE                      2          Operation is otherwise supported, but not mapped due to some unspecified limitation
DEQUANTIZE                     2          Operation is working on an unsupported data type
"""  # noqa: E501
FULL = """\
Edge TPU Compiler version 2.1.302470888

Model compiled successfully in 512 ms.

Input model: model.tflite
Output model: model_edgetpu.tflite
On-chip memory used for caching model parameters: 52.00KiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 9
Operation log: model_edgetpu.log
See the operation log file for individual operation details.
"""


def test_partial_mapping_is_counted_from_the_log() -> None:
    report = parse_compiler_log(PARTIAL)
    assert report.compiler_version == "16.0.384591198" and report.success
    assert (report.total_ops, report.ops_on_tpu, report.ops_on_cpu) == (72, 68, 4)
    assert report.on_chip_memory == "3.29MiB" and report.subgraphs == 1
    assert not report.fully_mapped
    statuses = {o.operator: o.status for o in report.operators}
    assert statuses["TRANSPOSE"].startswith("Operation is otherwise supported")
    assert sum(o.count for o in report.operators) == 72


def test_fully_mapped_model_prints_no_cpu_line() -> None:
    report = parse_compiler_log(FULL)
    assert (report.ops_on_tpu, report.ops_on_cpu) == (9, 0) and report.fully_mapped


def test_compiler_command_line(tmp_path: Path) -> None:
    argv = compiler_command("edgetpu_compiler", tmp_path / "m.tflite", tmp_path, min_runtime_version=13)
    assert argv == ["edgetpu_compiler", "-s", "-o", str(tmp_path), "-m", "13", str(tmp_path / "m.tflite")]


def test_missing_compiler_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEBENCH_EDGETPU_COMPILER", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(BuildError) as err:
        find_compiler()
    assert "apt-get install edgetpu-compiler" in err.value.one_line()


def test_only_int8_and_the_delegate_option() -> None:
    backend = get_backend("edgetpu")
    assert backend.precisions == ("int8",) and backend.runtime == "litert"
    assert backend.runner_options("int8", 4, {}) == {"threads": 4, "edgetpu": True}


def _fake_interpreter_package(monkeypatch: pytest.MonkeyPatch, package: str, seen: dict[str, Any]) -> None:
    """Install a fake ``<package>.interpreter`` (ai_edge_litert or tflite_runtime) whose Interpreter records its
    arguments and which package built it (untested here: the delegate needs a Coral board)."""

    class FakeInterpreter:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs, package=package)

        def allocate_tensors(self) -> None: ...

        def get_input_details(self) -> list[dict[str, Any]]:
            return [{"index": 0, "shape": [1, 3, 16, 16], "dtype": "int8", "quantization": (0.1, 0)}]

        def get_output_details(self) -> list[dict[str, Any]]:
            return [{"index": 1, "shape": [1, 10], "dtype": "int8", "quantization": (0.1, 0)}]

    module = types.ModuleType(f"{package}.interpreter")
    module.Interpreter = FakeInterpreter  # type: ignore[attr-defined]
    module.load_delegate = lambda lib, opts=None: (package, lib, opts)  # type: ignore[attr-defined]
    parent = types.ModuleType(package)
    parent.interpreter = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, package, parent)
    monkeypatch.setitem(sys.modules, f"{package}.interpreter", module)


def test_untested_here_needs_coral_board_runner_loads_the_libedgetpu_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    _fake_interpreter_package(monkeypatch, "tflite_runtime", seen)
    session = litert_rt.open_session(
        "model_edgetpu.tflite", "input", {"threads": 2, "edgetpu": True, "edgetpu_device": "usb"}
    )
    assert seen["experimental_delegates"] == [("tflite_runtime", "libedgetpu.so.1", {"device": "usb"})]
    assert seen["num_threads"] == 2
    assert session.describe()["delegates"] == ["edgetpu:libedgetpu.so.1"]


def test_untested_here_needs_coral_board_edgetpu_delegate_goes_to_tflite_runtime_over_ai_edge_litert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With both interpreter packages installed, libedgetpu is loaded into tflite_runtime (the build Coral pairs
    it with), CPU jobs keep ai-edge-litert, and the result says which package ran."""
    seen: dict[str, Any] = {}
    _fake_interpreter_package(monkeypatch, "tflite_runtime", seen)
    _fake_interpreter_package(monkeypatch, "ai_edge_litert", seen)
    tpu = litert_rt.open_session("model_edgetpu.tflite", "input", {"edgetpu": True})
    assert seen["package"] == "tflite_runtime" and tpu.describe()["interpreter"] == "tflite-runtime"
    assert seen["experimental_delegates"][0][0] == "tflite_runtime"
    cpu = litert_rt.open_session("model.tflite", "input", {"threads": 4})
    assert seen["package"] == "ai_edge_litert" and cpu.describe()["interpreter"] == "ai-edge-litert"


def test_untested_here_needs_coral_board_without_tflite_runtime_the_delegate_uses_ai_edge_litert_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    _fake_interpreter_package(monkeypatch, "ai_edge_litert", seen)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)  # not installed: importing it raises ImportError
    session = litert_rt.open_session("model_edgetpu.tflite", "input", {"edgetpu": True})
    assert seen["package"] == "ai_edge_litert" and session.describe()["interpreter"] == "ai-edge-litert"
    assert session.describe()["version"].startswith("ai-edge-litert")


@pytest.mark.parametrize("segments", [2, 4, True])
def test_num_segments_above_one_is_refused_before_any_tool_runs(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path, segments: object
) -> None:
    """-n N writes N segment files for Coral's PipelinedModelRunner across N Edge TPUs; the runner has none, and
    the build used to end in "edgetpu_compiler failed (exit 0)" looking for model_edgetpu.tflite."""
    monkeypatch.delenv("EDGEBENCH_EDGETPU_COMPILER", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)  # no compiler: the option check must come first
    request = CompileRequest(
        OnnxModel(tiny_onnx, "x", "x", "input", (1, 3, 16, 16)), "int8", tmp_path, {"num_segments": segments}
    )
    with pytest.raises(ConfigError) as info:
        get_backend("edgetpu").compile(request)
    assert info.value.one_line() == (
        f"options.edgetpu.num_segments: edgetpu option num_segments={segments!r} asks for the model split into "
        "segments for several Edge TPUs (Coral's model pipelining), which this runner cannot run; fix: remove "
        "num_segments (or set it to 1): the whole model then compiles for one Edge TPU"
    )
    one = CompileRequest(request.onnx, "int8", tmp_path, {"num_segments": 1})
    with pytest.raises(ToolchainMissing):  # one segment is the default: it passes the check, on to the compiler
        get_backend("edgetpu").compile(one)


def _fake_compiler(tmp_path: Path, body: str) -> Path:
    """A stand-in edgetpu_compiler (the real one is x86-64 Debian only and not installed here)."""
    fake = tmp_path / "edgetpu_compiler"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('-o') + 1])\n"
        "model = pathlib.Path(sys.argv[-1])\n" + body
    )
    fake.chmod(0o755)
    return fake


def _request(tiny_onnx: Path, out: Path) -> CompileRequest:
    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    onnx = OnnxModel(tiny_onnx, "x", "x", "input", (1, 3, 16, 16))
    return CompileRequest(onnx, "int8", out, calibration=calibration, calibration_id="c")


@pytest.fixture(scope="module")
def full_int8_tflite(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    """The tiny model as the full-INT8 .tflite the Edge TPU build hands its compiler, converted once, for real."""
    from harness.build.backends.litert import convert_tflite, default_toolchain_dir

    if not (default_toolchain_dir() / "bin" / "python").is_file():
        pytest.skip("the Edge TPU build converts with LiteRT first, which needs the optional litert-torch toolchain")
    out = tmp_path_factory.mktemp("tflite")
    return convert_tflite(_request(tiny_onnx, out), out / "model.tflite")


def _compile_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_onnx: Path, converted: Path, body: str
) -> Path:
    """The Edge TPU build with a stand-in compiler; the LiteRT conversion's real output reused, not redone."""
    import shutil

    from harness.build.backends import edgetpu

    monkeypatch.setattr(edgetpu, "convert_tflite", lambda request, out: Path(shutil.copyfile(converted, out)))
    monkeypatch.setenv("EDGEBENCH_EDGETPU_COMPILER", str(_fake_compiler(tmp_path, body)))
    out = tmp_path / "out"
    out.mkdir()
    return get_backend("edgetpu").compile(_request(tiny_onnx, out))


def test_untested_here_needs_edgetpu_compiler_success_without_the_expected_file_names_it_and_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, full_int8_tflite: Path
) -> None:
    """A compiler that says "Model compiled successfully" but writes segment files (as -n 2 does): the error names
    the file the build expected and the files it found, not "failed (exit 0)"."""
    body = (
        "for i in range(2):\n"
        "    (out / f'{model.stem}_segment_{i}_of_2_edgetpu.tflite').write_bytes(model.read_bytes())\n"
        f"print({FULL!r})\n"
    )
    with pytest.raises(BuildError) as info:
        _compile_with(monkeypatch, tmp_path, tiny_onnx, full_int8_tflite, body)
    line = info.value.one_line()
    assert "edgetpu_compiler reported success but wrote no model_edgetpu.tflite in " in line
    assert "it wrote: model_segment_0_of_2_edgetpu.tflite, model_segment_1_of_2_edgetpu.tflite" in line
    assert "exit 0" not in line


def test_untested_here_needs_edgetpu_compiler_exit_0_without_success_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, full_int8_tflite: Path
) -> None:
    body = "print('Edge TPU Compiler version 16.0.384591198')\nprint('Internal compiler error. Aborting!')\n"
    with pytest.raises(BuildError) as info:
        _compile_with(monkeypatch, tmp_path, tiny_onnx, full_int8_tflite, body)
    line = info.value.one_line()
    assert line.startswith(
        "edgetpu_compiler exited 0 without 'Model compiled successfully' in its output: Edge TPU Compiler version "
        "16.0.384591198 | Internal compiler error. Aborting!; fix: run the command by hand to see why: "
    )


def test_untested_here_needs_edgetpu_compiler_op_counts_reach_the_artifact_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path
) -> None:
    """A stand-in compiler prints the recorded log (the real one is not installable here); the counts it reports are
    written beside the artifact, where the pipeline reads them into the result's ``edgetpu_compile`` metric."""
    import sys

    from harness.build.backends.edgetpu import compile_report
    from harness.build.backends.litert import default_toolchain_dir

    if not (default_toolchain_dir() / "bin" / "python").is_file():
        pytest.skip("the Edge TPU build converts with LiteRT first, which needs the optional litert-torch toolchain")
    from harness.build.backends.protocol import CompileRequest
    from harness.build.export import OnnxModel

    log = tmp_path / "log.txt"
    log.write_text(PARTIAL)
    fake = tmp_path / "edgetpu_compiler"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('-o') + 1])\n"
        "(out / 'model_edgetpu.tflite').write_bytes(pathlib.Path(sys.argv[-1]).read_bytes())\n"
        f"print(pathlib.Path({str(log)!r}).read_text())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("EDGEBENCH_EDGETPU_COMPILER", str(fake))
    import numpy as np

    out = tmp_path / "out"
    out.mkdir()
    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    request = CompileRequest(
        onnx=OnnxModel(tiny_onnx, "x", "x", "input", (1, 3, 16, 16)),
        precision="int8",
        out_dir=out,
        calibration=calibration,
        calibration_id="c",
    )
    artifact = get_backend("edgetpu").compile(request)
    report = compile_report(artifact)
    assert report is not None
    assert report["ops_on_tpu"] == 68 and report["ops_on_cpu"] == 4 and report["fully_mapped"] is False
