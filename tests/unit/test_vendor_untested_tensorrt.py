"""TensorRT host side (tested for real) and the Jetson runner (untested here: needs an NVIDIA GPU; a fake
tensorrt/cuda-python stands in to check the timed call synchronises the stream)."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.agent.runtimes import tensorrt_rt
from harness.build.backends import get_backend
from harness.build.backends.protocol import CompileRequest
from harness.build.backends.tensorrt import parse_trtexec_log, trtexec_command
from harness.build.export import OnnxModel
from harness.errors import ConfigError

SHAPE = (1, 3, 16, 16)

# Recorded trtexec output, TensorRT 10.2 (the format of NVIDIA/TensorRT issue logs; numbers ours).
TRTEXEC_10 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # /usr/src/tensorrt/bin/trtexec --loadEngine=model.engine
[11/24/2026-10:47:59] [I] === Performance summary ===
[11/24/2026-10:47:59] [I] Throughput: 812.417 qps
[11/24/2026-10:47:59] [I] Latency: min = 1.19824 ms, max = 1.61377 ms, mean = 1.22871 ms, median = 1.22534 ms, \
percentile(90%) = 1.24658 ms, percentile(95%) = 1.25293 ms, percentile(99%) = 1.30371 ms
[11/24/2026-10:47:59] [I] Enqueue Time: min = 0.2561 ms, max = 0.4121 ms, mean = 0.2710 ms, median = 0.2690 ms, \
percentile(90%) = 0.2812 ms, percentile(95%) = 0.2866 ms, percentile(99%) = 0.3140 ms
[11/24/2026-10:47:59] [I] GPU Compute Time: min = 1.1682 ms, max = 1.5813 ms, mean = 1.1981 ms, median = 1.1951 ms, \
percentile(90%) = 1.2160 ms, percentile(95%) = 1.2224 ms, percentile(99%) = 1.2730 ms
&&&& PASSED TensorRT.trtexec [TensorRT v100200] # /usr/src/tensorrt/bin/trtexec --loadEngine=model.engine
"""
TRTEXEC_8_FAILED = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=model.onnx --int8
[06/12/2026-22:34:00] [E] Error[4]: [network.cpp::validate::3100] Error Code 4: Internal Error
&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=model.onnx --int8
"""


def _bundle(tiny_onnx: Path, tmp_path: Path, precision: str, **options: Any) -> Path:
    calibration = np.zeros((16, *SHAPE[1:]), np.float32)
    request = CompileRequest(OnnxModel(tiny_onnx, "s", "s", "input", SHAPE), precision, tmp_path, options, calibration)
    return get_backend("tensorrt").compile(request)


@pytest.mark.parametrize(("precision", "flags"), [("fp32", []), ("fp16", ["FP16"]), ("int8", ["FP16", "INT8"])])
def test_build_bundle_holds_onnx_config_and_calibration(
    tiny_onnx: Path, tmp_path: Path, precision: str, flags: list[str]
) -> None:
    bundle = zipfile.ZipFile(_bundle(tiny_onnx, tmp_path, precision, workspace_mb=512))
    names = sorted(bundle.namelist())
    assert names == sorted(["build.json", "model.onnx"] + (["calibration.npy"] if precision == "int8" else []))
    config = json.loads(bundle.read("build.json"))
    assert config["flags"] == flags
    assert config["profile"] == {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [32, 3, 16, 16]}
    assert config["workspace_mb"] == 512
    assert bundle.read("model.onnx") == tiny_onnx.read_bytes()


def test_trtexec_command_line_for_int8() -> None:
    argv = trtexec_command("int8", "input", SHAPE, workspace_mb=256, max_batch=8)
    assert argv == [
        "/usr/src/tensorrt/bin/trtexec", "--onnx=model.onnx", "--saveEngine=model.engine",
        "--minShapes=input:1x3x16x16", "--optShapes=input:1x3x16x16", "--maxShapes=input:8x3x16x16",
        "--memPoolSize=workspace:256M", "--builderOptimizationLevel=3", "--skipInference",
        "--fp16", "--int8", "--calib=calibration.cache",
    ]  # fmt: skip
    assert "--useDLACore=0" in trtexec_command("fp16", "input", SHAPE, dla_core=0)


def test_parse_trtexec_performance_summary() -> None:
    summary = parse_trtexec_log(TRTEXEC_10)
    assert summary.tensorrt_version == "10.2.0" and summary.passed is True
    assert summary.throughput_qps == pytest.approx(812.417)
    assert summary.latency_ms["median"] == pytest.approx(1.22534)
    assert summary.latency_ms["p99"] == pytest.approx(1.30371)
    assert summary.gpu_compute_ms["p95"] == pytest.approx(1.2224)
    failed = parse_trtexec_log(TRTEXEC_8_FAILED)
    assert failed.tensorrt_version == "8.6.1" and failed.passed is False and failed.latency_ms == {}


@pytest.mark.parametrize(
    ("key", "value", "accepted", "example"),
    [
        ("workspace_mb", 0, ">= 1", 1024),
        ("max_batch", 2.5, ">= 1", 8),
        ("builder_optimization_level", 6, "0..5", 3),
        ("builder_optimization_level", True, "0..5", 3),
    ],
    ids=["workspace-zero", "batch-fraction", "level-too-high", "level-bool"],
)
def test_bad_build_option_names_its_lab_key_the_accepted_range_and_an_example(
    tiny_onnx: Path, tmp_path: Path, key: str, value: object, accepted: str, example: int
) -> None:
    with pytest.raises(ConfigError) as info:
        _bundle(tiny_onnx, tmp_path, "fp16", **{key: value})
    assert info.value.one_line() == (
        f"options.tensorrt.{key}: tensorrt option {key}={value!r} must be a whole number {accepted}; "
        f"fix: set it under the device's options: tensorrt: in the lab file, e.g. {key}: {example}"
    )


def test_builder_optimization_level_zero_is_accepted(tiny_onnx: Path, tmp_path: Path) -> None:
    bundle = zipfile.ZipFile(_bundle(tiny_onnx, tmp_path, "fp16", builder_optimization_level=0))
    assert json.loads(bundle.read("build.json"))["builder_optimization_level"] == 0


class _FakeCuda:
    """Records the calls the adapter makes (untested here: needs an NVIDIA GPU)."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.calls: list[str] = []

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        return 0, 4096

    def cudaFree(self, ptr: int) -> tuple[int]:
        return (0,)

    def cudaMemcpyAsync(self, *args: Any) -> tuple[int]:
        self.calls.append("memcpy")
        return (0,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:
        self.calls.append("sync")
        return (0,)


def test_untested_here_needs_nvidia_gpu_timed_call_is_execute_plus_stream_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _FakeCuda()
    monkeypatch.setattr(tensorrt_rt, "_cudart", lambda: cuda)
    fake_trt = types.SimpleNamespace(nptype=lambda dtype: np.float32)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    session = tensorrt_rt.TensorRtSession.__new__(tensorrt_rt.TensorRtSession)
    context = types.SimpleNamespace(
        set_input_shape=lambda name, shape: None,
        set_tensor_address=lambda name, ptr: None,
        get_tensor_shape=lambda name: (1, 10),
        execute_async_v3=lambda stream: cuda.calls.extend(["execute"]),
    )
    session.__dict__.update(
        _trt=fake_trt, _cudart=cuda, context=context, stream=7, input_name="input", output_name="logits",
        engine=types.SimpleNamespace(get_tensor_dtype=lambda name: "float"), _buffers={},
    )  # fmt: skip
    session.bind(np.zeros(SHAPE, np.float32))
    assert cuda.calls == ["memcpy", "sync"]  # the input goes up once, outside the timed call
    cuda.calls.clear()
    session.run_bound()
    assert cuda.calls == ["execute", "sync"]  # without the sync the loop would time the enqueue only


def test_untested_here_needs_nvidia_gpu_bundle_unpacks_once_and_engine_key_tracks_version(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    artifact = str(_bundle(tiny_onnx, tmp_path, "fp16"))
    directory = tensorrt_rt.unpack(artifact)
    assert sorted(p.name for p in Path(directory).iterdir()) == ["build.json", "model.onnx"]
    assert tensorrt_rt.unpack(artifact) == directory
    keys = {tensorrt_rt.engine_key(artifact, v, "Orin") for v in ("10.3.0", "8.6.2")}
    assert len(keys) == 2
