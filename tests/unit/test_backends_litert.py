"""LiteRT: the ONNX-as-torch rebuild is exact, the optional toolchain's absence is a clear error, and
(where the toolchain is installed) a full-INT8 .tflite runs in the runner's adapter with quantised I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from harness.agent.runtimes import litert_rt
from harness.build.backends import get_backend, litert
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import BuildError

SHAPE = (1, 3, 16, 16)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0])


def _wider_graph(path: Path) -> Path:
    """Asymmetric pads, depthwise conv, Clip(0, 6), MaxPool, Add, ReduceMean, Reshape, MatMul."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    wd = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd"], ["c2"], pads=[1, 1, 1, 1], group=6),
        helper.make_node("Add", ["c2", "r1"], ["s"]),
        helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(wd, "wd"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 6], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 5])],
        initializer=inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


@pytest.mark.parametrize("graph", ["tiny", "wide"])
def test_onnx_rebuilt_as_torch_computes_the_same_outputs(tiny_onnx: Path, tmp_path: Path, graph: str) -> None:
    path = tiny_onnx if graph == "tiny" else _wider_graph(tmp_path / "wide.onnx")
    x = np.random.default_rng(3).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    with torch.no_grad():
        got = litert.onnx_as_torch(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(path, x), rtol=1e-5, atol=1e-5)


def test_an_unmapped_operator_is_named(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Resize", ["input", "", "scales"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
        initializer=[numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )  # fmt: skip
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(BuildError, match="operators the LiteRT/Core ML conversion does not map: Resize"):
        litert.onnx_as_torch(path)


def test_missing_toolchain_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEBENCH_LITERT_PYTHON", raising=False)
    monkeypatch.setenv("EDGEBENCH_TOOLCHAINS", str(tmp_path / "none"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BuildError) as err:
        litert.toolchain_python()
    line = err.value.one_line()
    assert "needs litert-torch, which is not installed" in line
    assert f"-m venv --system-site-packages {tmp_path / 'none' / 'litert-torch'}" in line
    assert "litert-torch==0.10.0" in line and "torch==" in line


def test_a_failing_toolchain_reports_its_message(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "progress noise"\necho \'{"status": "error", "message": "boom"}\'\n')
    fake.chmod(0o755)
    with pytest.raises(BuildError, match="LiteRT conversion failed: boom"):
        litert.run_toolchain({"protocol": 1}, python=str(fake))


def test_quantise_round_trip_and_nhwc_layout() -> None:
    details = {"dtype": np.int8, "quantization": (0.05, -3)}
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    q = litert_rt.quantize(x, details)
    assert q.dtype == np.int8
    np.testing.assert_allclose(litert_rt.dequantize(q, details), x, atol=0.026)
    assert litert_rt.to_model_layout(x, [1, 3, 4, 2]).shape == (1, 3, 4, 2)
    assert litert_rt.to_model_layout(x, [1, 2, 3, 4]) is x


def _toolchain() -> str:
    try:
        return litert.toolchain_python()
    except BuildError as exc:
        pytest.skip(f"LiteRT toolchain not installed: {exc.message}")


@pytest.mark.slow
def test_full_int8_tflite_runs_in_the_adapter_with_quantised_io(tiny_onnx: Path, tmp_path: Path) -> None:
    _toolchain()
    calibration = np.random.default_rng(1).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    request = CompileRequest(OnnxModel(tiny_onnx, "s", "s", "input", SHAPE), "int8", tmp_path, calibration=calibration)
    artifact = get_backend("litert").compile(request)
    session = litert_rt.open_session(str(artifact), "input", get_backend("litert").runner_options("int8", 1, {}))
    assert session.describe()["input_dtype"] == "int8"  # full INT8: what the Edge TPU compiler needs
    x = calibration[:8]
    session.bind(x[:1])
    session.run_bound()
    got = session.infer(x)
    want = _ort(tiny_onnx, x)
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.75
    assert not (tmp_path / "calibration.npy").exists()
