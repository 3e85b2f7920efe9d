"""ONNX Runtime backend: FP16 keeps float32 I/O, INT8 is QDQ with the promised scheme, errors list choices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from harness.build.backends import get_backend
from harness.build.backends.protocol import CompileRequest
from harness.build.export import OnnxModel
from harness.errors import BuildError, ConfigError, UnknownNameError

SHAPE = (1, 3, 16, 16)


def _model(path: Path) -> OnnxModel:
    return OnnxModel(path, "sha", "sha", "input", SHAPE)


def _calibration(n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def _compile(tiny_onnx: Path, tmp_path: Path, precision: str, **options: object) -> Path:
    out = tmp_path / precision
    out.mkdir()
    request = CompileRequest(_model(tiny_onnx), precision, out, options, calibration=_calibration())
    return get_backend("onnxruntime").compile(request)


def test_fp16_computes_in_half_precision_but_keeps_float32_inputs_and_outputs(tiny_onnx: Path, tmp_path: Path) -> None:
    path = _compile(tiny_onnx, tmp_path, "fp16")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    x = _calibration(8)
    np.testing.assert_allclose(_run(path, x), _run(tiny_onnx, x), rtol=2e-2, atol=2e-2)


def test_int8_is_qdq_with_symmetric_per_channel_weights_and_uint8_activations(tiny_onnx: Path, tmp_path: Path) -> None:
    path = _compile(tiny_onnx, tmp_path, "int8")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv_weight = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 4)
    assert conv_weight.shape == (4, 3, 3, 3)
    weight_zero_points = [v for k, v in inits.items() if v.dtype == np.int8 and "zero_point" in k]
    assert weight_zero_points and all(np.all(z == 0) for z in weight_zero_points)  # symmetric
    assert any(v.shape == (4,) for k, v in inits.items() if "scale" in k)  # one scale per output channel
    assert any(v.dtype == np.uint8 for k, v in inits.items() if "zero_point" in k)  # asymmetric activations
    x = _calibration(16)
    assert np.mean(np.argmax(_run(path, x), 1) == np.argmax(_run(tiny_onnx, x), 1)) >= 0.8


def _conv_weight(path: Path) -> np.ndarray:
    inits = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    return next(v for v in inits if v.dtype == np.int8 and v.ndim == 4)


def test_int8_weights_keep_to_7_bits_unless_told_otherwise(tiny_onnx: Path, tmp_path: Path) -> None:
    """ONNX Runtime's u8s8 kernels saturate on x86 CPUs without VNNI (this machine's AVX2 EPYC among
    them), so the default artifact holds 7-bit weights; a fleet without that hazard asks for 8."""
    seven = _conv_weight(_compile(tiny_onnx, tmp_path, "int8"))
    assert np.abs(seven).max() <= 64
    out = tmp_path / "full"
    out.mkdir()
    request = CompileRequest(_model(tiny_onnx), "int8", out, {"reduce_range": False}, calibration=_calibration())
    eight = _conv_weight(get_backend("onnxruntime").compile(request))
    assert np.abs(eight).max() == 127  # symmetric per channel: the largest weight of a channel maps to 127
    bad = CompileRequest(_model(tiny_onnx), "int8", out, {"reduce_range": "yes"}, calibration=_calibration())
    expected = r"^options\.reduce_range: onnxruntime option reduce_range='yes' is not a boolean; fix: use true"
    with pytest.raises(ConfigError, match=expected):
        get_backend("onnxruntime").compile(bad)


def test_int8_dynamic_quantises_weights_and_needs_no_calibration(tiny_onnx: Path, tmp_path: Path) -> None:
    backend = get_backend("onnxruntime")
    assert "int8-dynamic" not in backend.needs_calibration
    path = _compile(tiny_onnx, tmp_path, "int8-dynamic")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
    assert _run(path, _calibration(2)).shape == (2, 10)


def test_int8_without_a_calibration_set_says_how_to_add_one(tiny_onnx: Path, tmp_path: Path) -> None:
    request = CompileRequest(_model(tiny_onnx), "int8", tmp_path)
    with pytest.raises(BuildError, match="calibration"):
        get_backend("onnxruntime").compile(request)


def test_unsupported_precision_lists_the_supported_ones(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _compile(tiny_onnx, tmp_path, "int4")
    assert err.value.one_line() == (
        "precision: onnxruntime does not support precision 'int4'; fix: use one of: fp32, fp16, int8, int8-dynamic"
    )


def test_unknown_option_is_an_error_not_ignored(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no option 'thread'.*inter_op_threads"):
        _compile(tiny_onnx, tmp_path, "fp32", thread=4)


def test_corrupt_onnx_is_a_build_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BuildError, match="not a valid ONNX model"):
        get_backend("onnxruntime").compile(CompileRequest(_model(bad), "fp32", tmp_path))


def test_runner_options_carry_threads_and_run_options_only() -> None:
    options = get_backend("onnxruntime").runner_options(
        "int8", 2, {"calibration_method": "entropy", "spin_wait": False}
    )
    assert options == {"threads": 2, "spin_wait": False}


def test_unknown_backend_lists_the_registry() -> None:
    with pytest.raises(UnknownNameError) as err:
        get_backend("tflite")
    assert "coreml, edgetpu, litert, onnxruntime, openvino, qnn, tensorrt" in err.value.one_line()
