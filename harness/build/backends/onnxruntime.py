"""ONNX Runtime: FP32 as exported, FP16 by float16 conversion, INT8 static (QDQ) and dynamic quantisation.

This module also holds the checks every backend shares (precision and option names, deterministic
archives for directory artifacts): ONNX Runtime is the base backend the others build on (QNN reuses
its quantisation, Edge TPU reuses LiteRT's), so the shared pieces live with it.
"""

from __future__ import annotations

import logging
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError, ConfigError
from ..export import check_onnx
from .protocol import CompileRequest

log = logging.getLogger(__name__)

_EPOCH = (2020, 1, 1, 0, 0, 0)


# ---- shared by every backend ------------------------------------------------------------------------
def check_precision(backend: str, precision: str, supported: Sequence[str]) -> None:
    """A precision this backend cannot build is a ConfigError that lists the ones it can."""
    if precision not in supported:
        raise ConfigError(
            f"{backend} does not support precision {precision!r}",
            key="precision",
            fix=f"use one of: {', '.join(supported)}",
        )


def check_options(backend: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """An option name this backend does not read is an error, never silently ignored."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{backend} has no option {unknown[0]!r}",
            key=f"options.{unknown[0]}",
            fix=f"use one of: {', '.join(sorted(known)) or '(none)'}",
        )


def check_choice(backend: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if str(value) not in choices:
        raise ConfigError(
            f"{backend} option {key}={value!r} is not valid",
            key=f"options.{key}",
            fix=f"use one of: {', '.join(choices)}",
        )
    return str(value)


def require_calibration(backend: str, request: CompileRequest) -> np.ndarray:
    if request.calibration is None or len(request.calibration) == 0:
        raise BuildError(
            f"{backend} {request.precision} needs a calibration set and got none",
            fix="add calibration: {dataset: ..., count: 64-256} to the model's catalog entry",
        )
    return np.ascontiguousarray(request.calibration, dtype=np.float32)


def write_archive(out: Path, members: Sequence[tuple[str, Path]]) -> Path:
    """Pack files (or directories, recursively) into one zip with fixed timestamps, so equal content
    gives equal bytes and the device cache deduplicates it. Members are stored uncompressed: model
    weights barely compress and the runner can then read them without inflating."""
    entries: list[tuple[str, Path]] = []
    for name, path in members:
        if path.is_dir():
            entries.extend(
                (f"{name}/{p.relative_to(path).as_posix()}", p) for p in sorted(path.rglob("*")) if p.is_file()
            )
        else:
            entries.append((name, path))
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, path in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    return out


def batches(calibration: np.ndarray, size: int = 16) -> Iterator[np.ndarray]:
    for start in range(0, len(calibration), size):
        yield calibration[start : start + size]


# ---- ONNX Runtime ---------------------------------------------------------------------------------
_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_qdq(
    source: Path,
    out: Path,
    input_name: str,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    symmetric_activations: bool = False,
    activation_type: str = "uint8",
    reduce_range: bool = False,
) -> Path:
    """Static post-training INT8 in QDQ form: per-channel symmetric int8 weights; activations uint8
    asymmetric by default (what the CPU kernels and QNN HTP want), int8 symmetric for TensorRT.

    ``reduce_range`` keeps weights to 7 bits. ONNX Runtime's x86-64 CPU kernels multiply uint8 by int8
    with VPMADDUBSW on CPUs without VNNI, whose int16 pair sums saturate; its quantisation guide
    advises 7-bit weights there. Measured on this project's AVX2-only VM: digits-cnn INT8 agreed with
    FP32 on 97.2% of images with 8-bit weights and on 100% with 7-bit weights.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = batches(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    prepared = out.with_name("prepared.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing only helps; a model it cannot optimise still quantises
        log.info("quantisation pre-processing skipped: %s", exc)
        shutil.copyfile(source, prepared)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    try:
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=reduce_range,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric_activations},
        )
    except Exception as exc:
        raise BuildError(
            f"INT8 quantisation of {source.name} failed: {str(exc).splitlines()[0][:200]}",
            fix="check the calibration set matches the model input, or try calibration_method=minmax",
        ) from None
    finally:
        prepared.unlink(missing_ok=True)
    return out


def convert_fp16(source: Path, out: Path) -> Path:
    """Weights and compute in float16; the graph keeps float32 inputs and outputs, so the runner's
    data and the parity maths are the same as for FP32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    with warnings.catch_warnings():
        # It warns once per weight it clamps into float16's range: hundreds of lines that say nothing.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(out))
    return out


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU execution provider (QNN and others reuse its artifacts)."""

    name = "onnxruntime"
    runtime = "onnxruntime"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-dynamic")
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 2  # 2: INT8 weights in 7 bits by default (reduce_range)
    build_options: tuple[str, ...] = ("calibration_method", "reduce_range")
    run_options: tuple[str, ...] = ("inter_op_threads", "spin_wait")

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        source = request.onnx.path
        check_onnx(source, request.onnx.input_shape)
        out = request.out_dir / f"model-{request.precision}.onnx"
        if request.precision == "fp32":
            shutil.copyfile(source, out)
        elif request.precision == "fp16":
            convert_fp16(source, out)
        elif request.precision == "int8":
            method = check_choice(
                self.name,
                "calibration_method",
                request.options.get("calibration_method", "minmax"),
                _CALIBRATION_METHODS,
            )
            # 7-bit weights by default: the artifact must hold its accuracy on every x86 CPU it may meet,
            # with VNNI or without (see quantize_qdq); reduce_range: false for ARM or VNNI-only fleets.
            reduce_range = request.options.get("reduce_range", True)
            if not isinstance(reduce_range, bool):
                raise ConfigError(
                    f"onnxruntime option reduce_range={reduce_range!r} is not a boolean",
                    key="options.reduce_range",
                    fix="use true (7-bit weights, safe on CPUs without VNNI) or false",
                )
            quantize_qdq(
                source,
                out,
                request.onnx.input_name,
                require_calibration(self.name, request),
                method=method,
                reduce_range=reduce_range,
            )
        else:  # int8-dynamic: weights int8 now, activations quantised per call at run time
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=False)
        return out

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        run = {k: v for k, v in options.items() if k in self.run_options}
        return {"threads": threads, **run}
