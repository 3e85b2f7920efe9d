"""Edge TPU host side: the compiler command, its log parsed from recorded samples, the missing-compiler
error, and the runner's delegate loading (untested here: needs a Coral board; a fake interpreter stands in)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from harness.agent.runtimes import litert_rt
from harness.build.backends import get_backend
from harness.build.backends.edgetpu import compiler_command, find_compiler, parse_compiler_log
from harness.errors import BuildError

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


def test_untested_here_needs_coral_board_runner_loads_the_libedgetpu_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class FakeInterpreter:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)

        def allocate_tensors(self) -> None: ...

        def get_input_details(self) -> list[dict[str, Any]]:
            return [{"index": 0, "shape": [1, 3, 16, 16], "dtype": "int8", "quantization": (0.1, 0)}]

        def get_output_details(self) -> list[dict[str, Any]]:
            return [{"index": 1, "shape": [1, 10], "dtype": "int8", "quantization": (0.1, 0)}]

    fake = types.SimpleNamespace(
        Interpreter=FakeInterpreter, load_delegate=lambda lib, opts=None: ("delegate", lib, opts)
    )
    monkeypatch.setattr(litert_rt, "_module", lambda: (fake, "tflite-runtime"))
    session = litert_rt.open_session(
        "model_edgetpu.tflite", "input", {"threads": 2, "edgetpu": True, "edgetpu_device": "usb"}
    )
    assert seen["experimental_delegates"] == [("delegate", "libedgetpu.so.1", {"device": "usb"})]
    assert seen["num_threads"] == 2
    assert session.describe()["delegates"] == ["edgetpu:libedgetpu.so.1"]


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
