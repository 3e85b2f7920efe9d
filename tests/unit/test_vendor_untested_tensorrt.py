"""TensorRT host side (tested for real) and the Jetson runner (untested here: needs an NVIDIA GPU; a fake
tensorrt/cuda-python stands in to check the timed call synchronises the stream, that the builder gets the
DLA settings build.json asks for, and that INT8 calibration feeds every image at the profile's opt batch)."""

from __future__ import annotations

import ctypes
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


def _bundle(
    tiny_onnx: Path,
    tmp_path: Path,
    precision: str,
    *,
    shape: tuple[int, ...] = SHAPE,
    calibration: np.ndarray | None = None,
    **options: Any,
) -> Path:
    if calibration is None:
        calibration = np.zeros((16, *shape[1:]), np.float32)
    request = CompileRequest(OnnxModel(tiny_onnx, "s", "s", "input", shape), precision, tmp_path, options, calibration)
    return get_backend("tensorrt").compile(request)


def _build_json(bundle: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(zipfile.ZipFile(bundle).read("build.json"))
    return config


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
    options: dict[str, Any] = {key: value}
    with pytest.raises(ConfigError) as info:
        _bundle(tiny_onnx, tmp_path, "fp16", **options)
    assert info.value.one_line() == (
        f"options.tensorrt.{key}: tensorrt option {key}={value!r} must be a whole number {accepted}; "
        f"fix: set it under the device's options: tensorrt: in the lab file, e.g. {key}: {example}"
    )


def test_builder_optimization_level_zero_is_accepted(tiny_onnx: Path, tmp_path: Path) -> None:
    bundle = zipfile.ZipFile(_bundle(tiny_onnx, tmp_path, "fp16", builder_optimization_level=0))
    assert json.loads(bundle.read("build.json"))["builder_optimization_level"] == 0


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dla_build_has_a_static_profile_and_no_silent_gpu_fallback(
    tiny_onnx: Path, tmp_path: Path, precision: str
) -> None:
    """DLA takes no dynamic dimension (min = opt = max) and GPU fallback moves layers without an error."""
    config = _build_json(_bundle(tiny_onnx, tmp_path, precision, dla_core=1))
    assert config["profile"] == {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [1, 3, 16, 16]}
    assert (config["device"], config["dla_core"], config["gpu_fallback"]) == ("dla", 1, False)
    argv = config["trtexec"]
    assert "--useDLACore=1" in argv and "--allowGPUFallback" not in argv
    assert {a.split("=")[0] for a in argv if a.endswith(":1x3x16x16")} == {"--minShapes", "--optShapes", "--maxShapes"}


def test_gpu_fallback_is_only_on_when_asked_and_then_recorded(tiny_onnx: Path, tmp_path: Path) -> None:
    config = _build_json(_bundle(tiny_onnx, tmp_path, "int8", dla_core=0, gpu_fallback=True))
    assert config["gpu_fallback"] is True and "--allowGPUFallback" in config["trtexec"]


def test_fp32_with_dla_core_is_built_for_the_gpu_and_says_why(tiny_onnx: Path, tmp_path: Path) -> None:
    """DLA runs FP16/INT8 only. The FP32 reference of the DLA variants carries the device's dla_core (the plan
    gives it the same options), so it is built for the GPU, saying so, rather than passing for a DLA engine."""
    config = _build_json(_bundle(tiny_onnx, tmp_path, "fp32", dla_core=0, gpu_fallback=True))
    assert (config["device"], config["dla_core"], config["gpu_fallback"]) == ("gpu", None, False)
    assert config["device_note"] == (
        "dla_core 0 not used: DLA runs FP16 and INT8 only, so this fp32 engine is built for the GPU"
    )
    assert not any(a.startswith(("--useDLACore", "--allowGPUFallback")) for a in config["trtexec"])
    assert config["profile"]["max"] == [32, 3, 16, 16]
    assert tensorrt_rt.placement(config) == {
        "device": "gpu", "dla_core": None, "gpu_fallback": False, "device_note": config["device_note"],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (
            {"dla_core": 0, "max_batch": 8},
            "options.tensorrt.max_batch: tensorrt option max_batch=8 asks for a batch range, but a DLA engine "
            "(dla_core=0) takes one batch: its profile's min, opt and max must be equal; fix: remove max_batch: "
            "the DLA engine runs at the input's batch of 1",
        ),
        (
            {"gpu_fallback": True},
            "options.tensorrt.gpu_fallback: tensorrt option gpu_fallback=True does nothing without dla_core (it lets "
            "DLA layers fall back); fix: set dla_core as well, or remove gpu_fallback",
        ),
        (
            {"dla_core": 0, "gpu_fallback": "yes"},
            "options.tensorrt.gpu_fallback: tensorrt option gpu_fallback='yes' is not a boolean; fix: use true "
            "(layers DLA cannot run go to the GPU, and the result says so) or false (the build fails)",
        ),
        (
            {"dla_core": True},
            "options.tensorrt.dla_core: tensorrt option dla_core=True must be a whole number >= 0; fix: set it "
            "under the device's options: tensorrt: in the lab file, e.g. dla_core: 0",
        ),
    ],
    ids=["max-batch-on-dla", "fallback-without-dla", "fallback-not-bool", "dla-core-bool"],
)
def test_dla_options_that_cannot_apply_name_the_lab_key_and_the_fix(
    tiny_onnx: Path, tmp_path: Path, options: dict[str, Any], line: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _bundle(tiny_onnx, tmp_path, "fp16", **options)
    assert info.value.one_line() == line


class _FakeTrt(types.ModuleType):
    """A tensorrt module that records what the builder is told (untested here: needs an NVIDIA GPU).

    Its build calibrates as TensorRT does: at the calibration profile's opt shape, refusing a calibrator whose
    batch differs ("calibration input data size must match this profile"), reading batches until None.
    """

    __version__ = "10.3.0"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None: ...

    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.config = types.SimpleNamespace(
            flags=[], profiles=[], calibration_profile=None, int8_calibrator=None,
            default_device_type=None, DLA_core=None,
        )  # fmt: skip
        config = self.config
        config.set_memory_pool_limit = lambda pool, size: None
        config.set_flag = config.flags.append
        config.add_optimization_profile = config.profiles.append
        config.set_calibration_profile = lambda profile: setattr(config, "calibration_profile", profile)
        self.calibrated: list[np.ndarray] = []
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
        self.DeviceType = types.SimpleNamespace(DLA="DLA")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace()
        self.OnnxParser = lambda network, logger: types.SimpleNamespace(parse=lambda data: True, num_errors=0)
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None: ...

            def create_network(self, flags: int) -> object:
                return object()

            def create_builder_config(self) -> Any:
                return config

            def create_optimization_profile(self) -> Any:
                profile = types.SimpleNamespace()
                profile.set_shape = lambda name, lo, opt, hi: profile.__dict__.update(shapes=(lo, opt, hi))
                return profile

            def build_serialized_network(self, network: Any, cfg: Any) -> bytes | None:
                calibrator = cfg.int8_calibrator
                if calibrator is not None:
                    opt = cfg.calibration_profile.shapes[1]
                    if calibrator.get_batch_size() != opt[0]:
                        return None  # TensorRT: the calibration data does not match the profile
                    while (pointers := calibrator.get_batch(["input"])) is not None:
                        fake.calibrated.append(cuda.read(pointers[0], opt))
                return b"engine"

        self.Builder = Builder
        cuda = _FakeCuda()
        self.cuda = cuda


class _FakeCuda:
    """Records the calls the adapter makes (untested here: needs an NVIDIA GPU)."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.memory: dict[int, Any] = {}

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(max(n, 1))
        self.memory[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: int) -> tuple[int]:
        assert nbytes <= len(self.memory[dst]), "copy larger than the device buffer"
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def read(self, ptr: int, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self.memory[ptr].raw[: count * 4], np.float32).reshape(shape).copy()

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
        engine=types.SimpleNamespace(get_tensor_dtype=lambda name: "float"), _buffers={}, min_batch=1, max_batch=32,
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


def _build_with_fake_trt(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> _FakeTrt:
    fake = _FakeTrt()
    monkeypatch.setattr(tensorrt_rt, "_cudart", lambda: fake.cuda)
    directory = tensorrt_rt.unpack(str(bundle))
    build = json.loads(Path(directory, "build.json").read_text())
    assert tensorrt_rt.build_engine_api(fake, None, directory, build) == b"engine"
    return fake


@pytest.mark.parametrize(("shape", "dla_core"), [(SHAPE, None), ((4, *SHAPE[1:]), 0)], ids=["gpu-opt-1", "dla-batch-4"])
def test_untested_here_needs_nvidia_gpu_int8_calibration_sees_every_image_at_the_opt_batch(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path, shape: tuple[int, ...], dla_core: int | None
) -> None:
    """10 calibration images, each seen: at opt batch 1 (the GPU profile) in 10 batches; at a DLA engine's static
    batch of 4 in 3, the last topped up from the start of the set. The calibrator used to ask for batch 8 against
    an opt batch of 1, and to drop the images of a short last batch."""
    images = np.random.default_rng(5).standard_normal((10, *shape[1:])).astype(np.float32)
    options = {} if dla_core is None else {"dla_core": dla_core}
    bundle = _bundle(tiny_onnx, tmp_path, "int8", shape=shape, calibration=images, **options)
    fake = _build_with_fake_trt(monkeypatch, bundle)
    batch = shape[0]
    assert [len(b) for b in fake.calibrated] == [batch] * -(-10 // batch)
    seen = np.concatenate(fake.calibrated)
    np.testing.assert_array_equal(seen[:10], images)
    np.testing.assert_array_equal(seen[10:], images[: len(seen) - 10])


def test_calibration_batches_cover_every_image_once_before_wrapping() -> None:
    assert [b.tolist() for b in tensorrt_rt.calibration_batches(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    assert [b.tolist() for b in tensorrt_rt.calibration_batches(3, 8)] == [[0, 1, 2, 0, 1, 2, 0, 1]]


@pytest.mark.parametrize("gpu_fallback", [False, True])
def test_untested_here_needs_jetson_dla_builder_gets_dla_and_fallback_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path, gpu_fallback: bool
) -> None:
    bundle = _bundle(tiny_onnx, tmp_path, "fp16", dla_core=1, gpu_fallback=gpu_fallback)
    fake = _build_with_fake_trt(monkeypatch, bundle)
    assert (fake.config.default_device_type, fake.config.DLA_core) == ("DLA", 1)
    assert ("GPU_FALLBACK" in fake.config.flags) is gpu_fallback
    assert [p.shapes for p in fake.config.profiles] == [((1, 3, 16, 16),) * 3]


def test_untested_here_needs_jetson_dla_build_failure_says_fallback_is_off_and_how_to_allow_it(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path
) -> None:
    fake = _FakeTrt()
    monkeypatch.setattr(fake.Builder, "build_serialized_network", lambda self, network, cfg: None)
    monkeypatch.setattr(tensorrt_rt, "_cudart", lambda: fake.cuda)
    directory = tensorrt_rt.unpack(str(_bundle(tiny_onnx, tmp_path, "fp16", dla_core=0)))
    build = json.loads(Path(directory, "build.json").read_text())
    with pytest.raises(RuntimeError, match=r"for DLA core 0 with GPU fallback off: .*fix: set gpu_fallback: true"):
        tensorrt_rt.build_engine_api(fake, None, directory, build)


def _static_session(monkeypatch: pytest.MonkeyPatch, build: dict[str, Any]) -> tuple[Any, list[tuple[int, ...]]]:
    """A TensorRtSession over fakes (untested here: needs an NVIDIA GPU) with build.json's profile and placement."""
    cuda = _FakeCuda()
    monkeypatch.setattr(tensorrt_rt, "_cudart", lambda: cuda)
    fake_trt = types.SimpleNamespace(nptype=lambda dtype: np.float32, __version__="10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    shapes: list[tuple[int, ...]] = []
    context = types.SimpleNamespace(
        set_input_shape=lambda name, shape: shapes.append(tuple(shape)),
        set_tensor_address=lambda name, ptr: None,
        get_tensor_shape=lambda name: (shapes[-1][0], 10),
        execute_async_v3=lambda stream: None,
    )
    session = tensorrt_rt.TensorRtSession.__new__(tensorrt_rt.TensorRtSession)
    session.__dict__.update(
        _trt=fake_trt, _cudart=cuda, context=context, stream=7, input_name="input", output_name="logits",
        engine=types.SimpleNamespace(get_tensor_dtype=lambda name: "float"), _buffers={}, built_now=True,
        min_batch=build["profile"]["min"][0], max_batch=build["profile"]["max"][0], _gpu="Orin",
        _precision=build["precision"], _placement=tensorrt_rt.placement(build),
    )  # fmt: skip
    return session, shapes


def test_untested_here_needs_jetson_dla_static_engine_runs_its_batch_only_and_says_where_it_runs(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tmp_path: Path
) -> None:
    build = _build_json(_bundle(tiny_onnx, tmp_path, "int8", shape=(4, *SHAPE[1:]), dla_core=0))
    session, shapes = _static_session(monkeypatch, build)
    described = session.describe()
    assert {k: described[k] for k in ("device", "dla_core", "gpu_fallback")} == {
        "device": "dla", "dla_core": 0, "gpu_fallback": False,
    }  # fmt: skip
    refused = r"takes batch 4 only \(its optimisation profile\), not 1; measure it with batch 4"
    with pytest.raises(RuntimeError, match=refused):
        session.bind(np.zeros(SHAPE, np.float32))
    out = session.infer(np.zeros((7, *SHAPE[1:]), np.float32))
    assert out.shape == (7, 10)
    assert shapes == [(4, 3, 16, 16), (4, 3, 16, 16)]  # 7 images as 4 + 3 padded to 4: every call at batch 4
