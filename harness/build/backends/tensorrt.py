"""TensorRT (Jetson): the engine is built on the device, so the host ships a build bundle.

A TensorRT engine is specific to the GPU, the TensorRT version and the JetPack it was built with, so
the host cannot build it. The host's artifact is one zip (``model.trt.zip``) holding the FP32 ONNX,
``build.json`` (precision flags, workspace, optimisation profile, and the equivalent trtexec command
line for a human to rerun) and, for INT8, ``calibration.npy``: the catalog's calibration inputs,
which the runner's entropy calibrator (IInt8EntropyCalibrator2) feeds to the builder, writing a
calibration cache that later builds reuse (trtexec ``--calib=``). The runner builds the engine once
per device and caches it beside the bundle.

DLA (``dla_core``), as NVIDIA's "DLA Supported Layers and Restrictions" and "GPU Fallback Mode" pages
put it: DLA runs FP16 and INT8 only; it "does not support dynamic dimensions, so the profile's min, max,
and opt values must be equal"; and with GPU fallback on, "layers that cannot run on DLA silently fall
back to GPU execution without an error". So a DLA build has a static profile at the input's batch, GPU
fallback stays off unless the device asks for it (``gpu_fallback: true``, which the result then
reports), and the FP32 engine, which DLA cannot run, is built for the GPU and says so: it is the
reference the DLA's FP16/INT8 engines are compared with, planned with the same device options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..export import check_onnx
from .onnxruntime import check_options, check_precision, require_calibration, write_archive
from .protocol import CompileRequest

BUILD_SCHEMA = 2  # 2: gpu_fallback, device and device_note; DLA profiles are static
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_MAX_BATCH = 32  # the runner's eval batch; latency runs at batch 1
# Build options that take a whole number: (smallest, largest or None, the example a fix shows).
# TensorRT's builder optimisation levels run from 0 (quickest build) to 5; it defaults to 3.
_WHOLE_NUMBER_OPTIONS: dict[str, tuple[int, int | None, int]] = {
    "workspace_mb": (1, None, DEFAULT_WORKSPACE_MB),
    "max_batch": (1, None, 8),
    "builder_optimization_level": (0, 5, 3),
    "dla_core": (0, None, 0),  # Jetson AGX Orin has DLA cores 0 and 1
}
_FIX = "set it under the device's options: tensorrt: in the lab file"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def uses_dla(precision: str, dla_core: int | None) -> bool:
    """DLA runs FP16 and INT8 only: an fp32 engine goes to the GPU whatever dla_core says."""
    return dla_core is not None and precision != "fp32"


def profile_shapes(
    precision: str, input_shape: tuple[int, ...], *, max_batch: int = DEFAULT_MAX_BATCH, dla_core: int | None = None
) -> dict[str, list[int]]:
    """The optimisation profile: batch 1 to max_batch on the GPU; the input's own batch alone on DLA."""
    if uses_dla(precision, dla_core):
        static = list(input_shape)
        return {"min": static, "opt": list(static), "max": list(static)}
    one = [1, *input_shape[1:]]
    return {"min": one, "opt": list(one), "max": [max_batch, *input_shape[1:]]}


def build_config(
    precision: str,
    input_name: str,
    input_shape: tuple[int, ...],
    *,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    max_batch: int = DEFAULT_MAX_BATCH,
    builder_optimization_level: int = 3,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
) -> dict[str, Any]:
    """What the device's builder does, as data the runner reads (and a human can diff)."""
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]
    dla = uses_dla(precision, dla_core)
    note = None
    if dla_core is not None and not dla:
        note = f"dla_core {dla_core} not used: DLA runs FP16 and INT8 only, so this fp32 engine is built for the GPU"
    return {
        "schema": BUILD_SCHEMA,
        "precision": precision,
        "flags": flags,  # INT8 keeps FP16 on, so layers without an INT8 kernel fall back to FP16, not FP32
        "workspace_mb": workspace_mb,
        "builder_optimization_level": builder_optimization_level,
        "device": "dla" if dla else "gpu",
        "dla_core": dla_core if dla else None,
        "gpu_fallback": gpu_fallback if dla else False,  # true: layers DLA cannot run may run on the GPU
        "device_note": note,
        "input": input_name,
        # Calibration runs at the profile's opt shape, so the calibrator's batch is its opt batch.
        "profile": profile_shapes(precision, input_shape, max_batch=max_batch, dla_core=dla_core),
        "calibration": "calibration.npy" if precision == "int8" else None,
        "calibration_cache": "calibration.cache" if precision == "int8" else None,
        "trtexec": trtexec_command(
            precision,
            input_name,
            input_shape,
            workspace_mb=workspace_mb,
            max_batch=max_batch,
            builder_optimization_level=builder_optimization_level,
            dla_core=dla_core,
            gpu_fallback=gpu_fallback,
        ),
    }


def trtexec_command(
    precision: str,
    input_name: str,
    input_shape: tuple[int, ...],
    *,
    onnx: str = "model.onnx",
    engine: str = "model.engine",
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    max_batch: int = DEFAULT_MAX_BATCH,
    builder_optimization_level: int = 3,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    trtexec: str = "/usr/src/tensorrt/bin/trtexec",
) -> list[str]:
    """The trtexec line that builds the same engine (TensorRT 8.6+/10 flag names)."""
    profile = profile_shapes(precision, input_shape, max_batch=max_batch, dla_core=dla_core)
    argv = [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        f"--minShapes={input_name}:{_dims(tuple(profile['min']))}",
        f"--optShapes={input_name}:{_dims(tuple(profile['opt']))}",
        f"--maxShapes={input_name}:{_dims(tuple(profile['max']))}",
        f"--memPoolSize=workspace:{workspace_mb}M",
        f"--builderOptimizationLevel={builder_optimization_level}",
        "--skipInference",
    ]
    if precision in ("fp16", "int8"):
        argv.append("--fp16")
    if precision == "int8":
        # trtexec cannot calibrate from data: it reads the cache the runner's calibrator wrote.
        argv += ["--int8", "--calib=calibration.cache"]
    if uses_dla(precision, dla_core):
        argv.append(f"--useDLACore={dla_core}")
        if gpu_fallback:
            argv.append("--allowGPUFallback")
    return argv


@dataclass(frozen=True)
class TrtexecSummary:
    """The performance summary trtexec prints (all times in ms)."""

    tensorrt_version: str | None
    passed: bool | None
    throughput_qps: float | None
    latency_ms: dict[str, float]
    gpu_compute_ms: dict[str, float]


_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([0-9.eE+-]+)\s*ms")


def _stats(line: str | None) -> dict[str, float]:
    if line is None:
        return {}
    out: dict[str, float] = {}
    for m in _STAT.finditer(line):
        key = f"p{m.group(2)}" if m.group(2) else m.group(1)
        out[key] = float(m.group(3))
    return out


def parse_trtexec_log(text: str) -> TrtexecSummary:
    """Read a trtexec log: its TensorRT version, PASSED/FAILED, and the performance summary lines."""
    version = re.search(r"&&&& RUNNING TensorRT\.trtexec \[TensorRT v(\d+)\]", text)
    status = re.search(r"&&&& (PASSED|FAILED) TensorRT\.trtexec", text)
    throughput = re.search(r"\]\s*Throughput:\s*([0-9.eE+-]+)\s*qps", text)
    latency = re.search(r"\]\s*Latency:\s*(min = .*)$", text, re.MULTILINE)
    gpu = re.search(r"\]\s*GPU Compute Time:\s*(min = .*)$", text, re.MULTILINE)
    return TrtexecSummary(
        tensorrt_version=_trt_version(version.group(1)) if version else None,
        passed=None if status is None else status.group(1) == "PASSED",
        throughput_qps=float(throughput.group(1)) if throughput else None,
        latency_ms=_stats(latency.group(1) if latency else None),
        gpu_compute_ms=_stats(gpu.group(1) if gpu else None),
    )


def _trt_version(code: str) -> str:
    """trtexec's packed version: 8601 -> 8.6.1, 100200 -> 10.2.0."""
    number = int(code)
    if number >= 100000:  # TensorRT 10+: MMmmpp
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


class TensorRtBackend:
    """NVIDIA TensorRT on Jetson: host prepares, device builds and runs."""

    name = "tensorrt"
    runtime = "tensorrt"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 2  # 2: DLA builds get a static profile and no silent GPU fallback
    build_options: tuple[str, ...] = (
        "workspace_mb", "max_batch", "builder_optimization_level", "dla_core", "gpu_fallback",
    )  # fmt: skip
    run_options: tuple[str, ...] = ("builder",)

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        onnx = request.onnx
        check_onnx(onnx.path, onnx.input_shape)
        opts = request.options
        for key, (low, high, example) in _WHOLE_NUMBER_OPTIONS.items():
            value = opts.get(key)
            if value is None:
                continue
            # bool is an int to Python: `true` must not pass for builder_optimization_level 1.
            whole = isinstance(value, int) and not isinstance(value, bool)
            if whole and value >= low and (high is None or value <= high):
                continue
            accepted = f"{low}..{high}" if high is not None else f">= {low}"
            # The backend sees the variant's options, not the lab: the key is the path inside a device entry.
            raise ConfigError(
                f"tensorrt option {key}={value!r} must be a whole number {accepted}",
                key=f"options.tensorrt.{key}",
                fix=f"{_FIX}, e.g. {key}: {example}",
            )
        dla_core = opts.get("dla_core")
        gpu_fallback = opts.get("gpu_fallback", False)
        if not isinstance(gpu_fallback, bool):
            raise ConfigError(
                f"tensorrt option gpu_fallback={gpu_fallback!r} is not a boolean",
                key="options.tensorrt.gpu_fallback",
                fix="use true (layers DLA cannot run go to the GPU, and the result says so) or false (the build fails)",
            )
        if gpu_fallback and dla_core is None:
            raise ConfigError(
                "tensorrt option gpu_fallback=True does nothing without dla_core (it lets DLA layers fall back)",
                key="options.tensorrt.gpu_fallback",
                fix="set dla_core as well, or remove gpu_fallback",
            )
        if opts.get("max_batch") is not None and uses_dla(request.precision, dla_core):
            raise ConfigError(
                f"tensorrt option max_batch={opts['max_batch']!r} asks for a batch range, but a DLA engine "
                f"(dla_core={dla_core}) takes one batch: its profile's min, opt and max must be equal",
                key="options.tensorrt.max_batch",
                fix=f"remove max_batch: the DLA engine runs at the input's batch of {onnx.input_shape[0]}",
            )
        config = build_config(
            request.precision,
            onnx.input_name,
            onnx.input_shape,
            workspace_mb=int(opts.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
            max_batch=int(opts.get("max_batch", DEFAULT_MAX_BATCH)),
            builder_optimization_level=int(opts.get("builder_optimization_level", 3)),
            dla_core=None if dla_core is None else int(dla_core),
            gpu_fallback=gpu_fallback,
        )
        work = request.out_dir / "bundle"
        work.mkdir()
        (work / "build.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        members = [("model.onnx", onnx.path), ("build.json", work / "build.json")]
        if request.precision == "int8":
            np.save(work / "calibration.npy", require_calibration(self.name, request))
            members.append(("calibration.npy", work / "calibration.npy"))
        return write_archive(request.out_dir / "model.trt.zip", members)

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        builder = str(options.get("builder", "api"))
        if builder not in ("api", "trtexec"):
            raise ConfigError(
                f"tensorrt option builder={builder!r} is not valid", key="options.builder", fix="use api or trtexec"
            )
        return {"builder": builder}
