"""QNN (Snapdragon): the HTP provider options (untested here: needs a Snapdragon with QNN), the same
artifacts run for real through the runner's ONNX Runtime adapter on the CPU execution provider, and that
adapter's refusal, for real, to open the QNN options where the provider is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from harness.agent.runtimes import RuntimeMissing, onnxruntime_rt
from harness.build.backends import get_backend
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import ConfigError

SHAPE = (1, 3, 16, 16)


def test_untested_here_needs_snapdragon_htp_provider_options() -> None:
    options = get_backend("qnn").runner_options("fp16", 4, {"performance_mode": "sustained_high_performance"})
    assert options["providers"] == ["QNNExecutionProvider", "CPUExecutionProvider"]
    assert options["provider_options"][0] == {
        "backend_path": "libQnnHtp.so",
        "htp_performance_mode": "sustained_high_performance",
        "htp_graph_finalization_optimization_mode": "3",
        "enable_htp_fp16_precision": "1",
    }
    int8 = get_backend("qnn").runner_options("int8", 4, {})["provider_options"][0]
    assert int8["enable_htp_fp16_precision"] == "0" and int8["htp_performance_mode"] == "burst"


def test_bad_performance_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"performance_mode='turbo'.*burst, balanced"):
        get_backend("qnn").runner_options("int8", 4, {"performance_mode": "turbo"})


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_cpu_path_runs_the_qnn_artifact_for_real(tiny_onnx: Path, tmp_path: Path, precision: str) -> None:
    calibration = np.random.default_rng(1).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    request = CompileRequest(
        OnnxModel(tiny_onnx, "s", "s", "input", SHAPE), precision, tmp_path, calibration=calibration
    )
    artifact = get_backend("qnn").compile(request)
    if precision == "int8":
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(artifact)).graph.node}
    options = get_backend("qnn").runner_options(precision, 1, {"provider": "cpu"})
    session = onnxruntime_rt.open_session(str(artifact), "input", options)
    session.bind(calibration[:1])
    session.run_bound()
    assert session.infer(calibration[:4]).shape == (4, 10)
    assert session.describe()["providers"] == ["CPUExecutionProvider"]


def test_runs_here_the_default_qnn_options_refuse_to_fall_back_to_the_cpu(tiny_onnx: Path) -> None:
    """Real ONNX Runtime without the QNN execution provider (this machine's): the runner's adapter refuses,
    naming the missing provider, instead of timing the CPU under the NPU's name (ONNX Runtime itself falls
    back to the next provider in the list with no more than a warning)."""
    import onnxruntime as ort

    if "QNNExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the QNN execution provider: nothing is missing to refuse")
    options = get_backend("qnn").runner_options("int8", 1, {})
    with pytest.raises(RuntimeMissing, match=r"has no QNNExecutionProvider \(available: .*CPUExecutionProvider"):
        onnxruntime_rt.open_session(str(tiny_onnx), "input", options)
