"""Snapdragon: ONNX Runtime with the QNN execution provider on the Hexagon NPU (HTP backend).

The artifacts are ONNX Runtime's: the FP32 model (the HTP runs it in FP16 when
``enable_htp_fp16_precision`` is on, which is what ``fp16`` selects) and the static INT8 QDQ model
(uint8 asymmetric activations, int8 symmetric per-channel weights: the HTP's quantised types). The
runner is the ONNX Runtime adapter with QNN provider options; ``provider: cpu`` runs the same
artifact on the CPU execution provider, which is how it is verified on a machine without QNN.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..export import check_onnx
from .onnxruntime import check_choice, check_options, check_precision, quantize_qdq, require_calibration
from .protocol import CompileRequest

PERFORMANCE_MODES = (
    "burst", "balanced", "default", "high_performance", "high_power_saver", "low_balanced",
    "low_power_saver", "power_saver", "extreme_power_saver", "sustained_high_performance",
)  # fmt: skip
QNN_BACKENDS = {"htp": "libQnnHtp.so", "cpu": "libQnnCpu.so", "gpu": "libQnnGpu.so"}


def provider_options(
    precision: str,
    *,
    backend: str = "htp",
    performance_mode: str = "burst",
    finalization_level: int = 3,
    context_cache: bool = False,
) -> dict[str, str]:
    """QNN EP provider options (ONNX Runtime takes every value as a string)."""
    options = {
        "backend_path": QNN_BACKENDS[backend],
        "htp_performance_mode": performance_mode,
        "htp_graph_finalization_optimization_mode": str(finalization_level),
    }
    if backend == "htp":
        options["enable_htp_fp16_precision"] = "1" if precision == "fp16" else "0"
    if context_cache:
        options["qnn_context_cache_enable"] = "1"  # compiled graph reused by the next session
    return options


class QnnBackend:
    """ONNX Runtime + QNN EP (HTP), with the CPU execution provider as the verifiable fallback."""

    name = "qnn"
    runtime = "onnxruntime"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 1
    build_options: tuple[str, ...] = ()
    run_options: tuple[str, ...] = ("provider", "qnn_backend", "performance_mode", "finalization_level")

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        check_onnx(request.onnx.path, request.onnx.input_shape)
        if request.precision == "int8":
            out = request.out_dir / "model-qdq.onnx"
            return quantize_qdq(
                request.onnx.path, out, request.onnx.input_name, require_calibration(self.name, request)
            )
        out = request.out_dir / "model.onnx"
        shutil.copyfile(request.onnx.path, out)
        return out

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        provider = check_choice(self.name, "provider", options.get("provider", "qnn"), ("qnn", "cpu"))
        if provider == "cpu":
            return {"threads": threads, "providers": ["CPUExecutionProvider"]}
        backend = check_choice(self.name, "qnn_backend", options.get("qnn_backend", "htp"), tuple(QNN_BACKENDS))
        mode = check_choice(self.name, "performance_mode", options.get("performance_mode", "burst"), PERFORMANCE_MODES)
        level = options.get("finalization_level", 3)
        if level not in (0, 1, 2, 3):
            raise ConfigError(
                f"qnn option finalization_level={level!r} is not valid", key="options.finalization_level", fix="use 0-3"
            )
        return {
            "threads": threads,
            "providers": ["QNNExecutionProvider", "CPUExecutionProvider"],
            "provider_options": [
                provider_options(precision, backend=backend, performance_mode=mode, finalization_level=int(level)),
                {},
            ],
        }
