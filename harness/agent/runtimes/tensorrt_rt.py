"""TensorRT on a Jetson: build the engine from the host's bundle (once per device), then run it.

Untested here (needs an NVIDIA GPU); written to NVIDIA's TensorRT 8.6/10 Python API documentation.
The bundle (see ``harness.build.backends.tensorrt``) holds the ONNX, ``build.json`` and, for INT8, the
calibration inputs. The engine is cached next to the bundle, keyed by the bundle, the TensorRT
version and the GPU, because an engine is only valid where it was built.

Device memory comes from cuda-python's runtime API. The latency input is copied to the GPU once in
``bind``; the timed call is ``execute_async_v3`` plus the stream synchronisation (without it the
loop would time only the enqueue).

INT8 calibration runs at the calibration profile's opt shape and the calibrator's batches must match
it (TensorRT's "INT8 Calibration with Dynamic Shapes"), so the calibrator's batch is the profile's opt
batch and a short last batch is filled from the start of the set: every calibration image is seen.
A DLA build (``dla_core``) gets GPU fallback only when build.json asks for it, and ``describe()``
says where the engine runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from typing import Any

import numpy as np

from . import in_batches


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[import-not-found,no-redef]
    return cudart


def available() -> bool:
    import tensorrt  # noqa: F401

    _cudart()
    return True


def version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


def _check(result: Any) -> Any:
    """cuda-python returns (err, value...); raise on an error code."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def unpack(artifact: str) -> str:
    """Unpack the bundle beside it (once); return the directory."""
    target = artifact + ".d"
    if not os.path.isfile(os.path.join(target, "build.json")):
        tmp = f"{target}.tmp-{os.getpid()}"
        with zipfile.ZipFile(artifact) as zf:
            zf.extractall(tmp)
        os.replace(tmp, target)
    return target


def engine_key(artifact: str, trt_version: str, gpu: str) -> str:
    digest = hashlib.sha256()
    with open(artifact, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(trt_version.encode())
    digest.update(gpu.encode())
    return digest.hexdigest()[:24]


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(_check(_cudart().cudaMalloc(max(nbytes, 1))))

    def free(self) -> None:
        _check(_cudart().cudaFree(self.ptr))


def calibration_batches(count: int, batch: int) -> list[np.ndarray]:
    """Indices of each calibration batch: every image once, the last batch filled from the start."""
    return [np.arange(start, start + batch) % count for start in range(0, count, batch)]


def _calibrator(trt: Any, data: np.ndarray, cache_path: str, batch: int) -> Any:
    cudart = _cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.data = np.ascontiguousarray(data, dtype=np.float32)
            self.batches = calibration_batches(len(self.data), batch)
            self.buffer = DeviceBuffer(self.data[:1].nbytes * batch)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self.batches:
                return None
            chunk = np.ascontiguousarray(self.data[self.batches.pop(0)])
            _check(cudart.cudaMemcpy(self.buffer.ptr, chunk.ctypes.data, chunk.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))  # fmt: skip
            return [self.buffer.ptr]

        def read_calibration_cache(self) -> bytes | None:
            if os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            with open(cache_path, "wb") as f:
                f.write(bytes(cache))

    return EntropyCalibrator()


def build_engine_api(trt: Any, logger: Any, directory: str, build: dict[str, Any]) -> bytes:
    """Build with the builder API as build.json says; INT8 calibrates from calibration.npy."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(os.path.join(directory, "model.onnx"), "rb") as f:
        if not parser.parse(f.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT cannot parse the ONNX: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mb"]) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(build["builder_optimization_level"])
    for flag in build["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if build.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build["dla_core"])
        # With GPU fallback on, layers DLA cannot run move to the GPU without an error (NVIDIA's "GPU
        # Fallback Mode"): only when the device asked for it, and then describe() reports it.
        if build.get("gpu_fallback"):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    shapes = build["profile"]
    profile.set_shape(build["input"], tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)
    if build.get("calibration"):
        data = np.load(os.path.join(directory, build["calibration"]))
        cache = os.path.join(directory, build["calibration_cache"])
        # Calibration runs at the calibration profile's opt shape: the calibrator's batch must be it.
        config.int8_calibrator = _calibrator(trt, data, cache, batch=int(shapes["opt"][0]))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed" + _dla_hint(build) + " (the builder log is in stderr)")
    return bytes(serialized)


def _dla_hint(build: dict[str, Any]) -> str:
    if build.get("dla_core") is None or build.get("gpu_fallback"):
        return ""
    return (
        f" for DLA core {build['dla_core']} with GPU fallback off: a layer DLA cannot run stops it; fix: set "
        "gpu_fallback: true in the device's tensorrt options to let such layers run on the GPU (the result "
        "then says gpu_fallback: true), or remove dla_core"
    )


def placement(build: dict[str, Any]) -> dict[str, Any]:
    """Where the engine runs, as build.json (and so build_engine_api) has it."""
    dla_core = build.get("dla_core")
    return {
        "device": "dla" if dla_core is not None else "gpu",
        "dla_core": dla_core,
        # True: layers DLA cannot run may be running on the GPU; the latency is then the mix's.
        "gpu_fallback": dla_core is not None and bool(build.get("gpu_fallback")),
        "device_note": build.get("device_note"),
    }


def build_engine_trtexec(directory: str, build: dict[str, Any], engine_path: str) -> None:
    argv = list(build["trtexec"])
    argv = [a if not a.startswith("--saveEngine=") else "--saveEngine=" + engine_path for a in argv]
    done = subprocess.run(argv, cwd=directory, capture_output=True, text=True, check=False)
    if done.returncode != 0 or "&&&& PASSED" not in done.stdout:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise RuntimeError("trtexec failed" + _dla_hint(build) + ": " + tail)


class TensorRtSession:
    """A deserialised engine, one execution context, device buffers and a CUDA stream."""

    def __init__(self, artifact: str, input_name: str, options: dict[str, Any]) -> None:
        import tensorrt as trt

        cudart = _cudart()
        self._trt = trt
        self._cudart = cudart
        logger = trt.Logger(trt.Logger.WARNING)
        directory = unpack(artifact)
        with open(os.path.join(directory, "build.json"), encoding="utf-8") as f:
            build = json.load(f)
        props = _check(cudart.cudaGetDeviceProperties(0))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        engine_path = os.path.join(directory, f"model-{engine_key(artifact, trt.__version__, gpu)}.engine")
        self.built_now = not os.path.isfile(engine_path)
        if self.built_now:
            calib_ready = not build.get("calibration_cache") or os.path.isfile(
                os.path.join(directory, build["calibration_cache"])
            )
            if options.get("builder") == "trtexec" and calib_ready:
                build_engine_trtexec(directory, build, engine_path)
            else:
                data = build_engine_api(trt, logger, directory, build)
                tmp = engine_path + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, engine_path)
        with open(engine_path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {engine_path} (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = input_name
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = _check(cudart.cudaStreamCreate())
        self.min_batch = int(build["profile"]["min"][0])
        self.max_batch = int(build["profile"]["max"][0])
        self._buffers: dict[str, DeviceBuffer] = {}
        self._gpu = gpu
        self._precision = build["precision"]
        self._placement = placement(build)

    def _ensure(self, name: str, nbytes: int) -> int:
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = DeviceBuffer(nbytes)
            self._buffers[name] = buf
        self.context.set_tensor_address(name, buf.ptr)
        return buf.ptr

    def _prepare(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        ptr = self._ensure(self.input_name, x.nbytes)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = np.empty(out_shape, dtype=self._trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self._ensure(self.output_name, out.nbytes)
        return ptr, out

    def _copy_in(self, ptr: int, x: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, kind, self.stream))

    def bind(self, x: np.ndarray) -> None:
        low, high = self.min_batch, self.max_batch
        if not low <= len(x) <= high:
            takes = f"batch {low} only" if low == high else f"batch {low} to {high}"
            raise RuntimeError(
                f"this engine takes {takes} (its optimisation profile), not {len(x)}; measure it with batch {low}"
            )
        self._bound = np.ascontiguousarray(x, dtype=np.float32)
        ptr, self._bound_out = self._prepare(self._bound)
        self._copy_in(ptr, self._bound)
        _check(self._cudart.cudaStreamSynchronize(self.stream))

    def run_bound(self) -> None:
        self.context.execute_async_v3(int(self.stream))
        _check(self._cudart.cudaStreamSynchronize(self.stream))

    def infer(self, x: np.ndarray) -> np.ndarray:
        # Chunks within the profile; a static (DLA) engine's short last chunk is padded (in_batches).
        return in_batches(x, self.max_batch, self.min_batch, self._infer_chunk)

    def _infer_chunk(self, x: np.ndarray) -> np.ndarray:
        chunk = np.ascontiguousarray(x, dtype=np.float32)
        ptr, out = self._prepare(chunk)
        self._copy_in(ptr, chunk)
        self.context.execute_async_v3(int(self.stream))
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        src = self._buffers[self.output_name].ptr
        _check(self._cudart.cudaMemcpyAsync(out.ctypes.data, src, out.nbytes, kind, self.stream))
        _check(self._cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "tensorrt",
            "version": version(),
            "gpu": self._gpu,
            "precision": self._precision,
            **self._placement,
            "engine_built_now": self.built_now,
            "timed_call": "execute_async_v3 + cudaStreamSynchronize",
        }


def open_session(artifact: str, input_name: str, options: dict[str, Any]) -> TensorRtSession:
    return TensorRtSession(artifact, input_name, options)
