"""Snapdragon: ONNX Runtime with the QNN execution provider on the Hexagon NPU (HTP backend).

The artifacts are ONNX Runtime's: the FP32 model (the HTP runs it in FP16 when
``enable_htp_fp16_precision`` is on, which is what ``fp16`` selects) and the static INT8 QDQ model
(uint8 asymmetric activations, int8 symmetric per-channel weights: the HTP's quantised types). The
runner is the ONNX Runtime adapter with QNN provider options; ``provider: cpu`` runs the same
artifact on the CPU execution provider, which is how it is verified on a machine without QNN.

Two things keep a QNN result the NPU's. The artifact's batch is fixed (the reference ONNX has a dynamic
one): "QNN EP does not support models with dynamic shapes (e.g., a dynamic batch size). Dynamic shapes
must be fixed to a specific value" (ONNX Runtime's QNN execution provider page). And the session turns
off CPU fallback (``session.disable_cpu_ep_fallback``), so a node the NPU cannot run makes the session
refuse to open instead of running, unseen, on the CPU under the NPU's name.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BuildError, ConfigError
from ..export import check_onnx
from .onnxruntime import check_choice, check_options, check_precision, quantize_qdq, require_calibration
from .protocol import CompileRequest

PERFORMANCE_MODES = (
    "burst", "balanced", "default", "high_performance", "high_power_saver", "low_balanced",
    "low_power_saver", "power_saver", "extreme_power_saver", "sustained_high_performance",
)  # fmt: skip
QNN_BACKENDS = {"htp": "libQnnHtp.so", "cpu": "libQnnCpu.so", "gpu": "libQnnGpu.so"}
NO_CPU_FALLBACK = {"session.disable_cpu_ep_fallback": "1"}


def fix_batch(path: Path, input_name: str, input_shape: tuple[int, ...]) -> int:
    """Rewrite the ONNX file at ``path`` with its input's dynamic dimensions fixed (the batch to
    ``input_shape[0]``, the latency input's) and the output shapes that follow; return the batch.

    A dimension the model already fixes is kept. The eval pass feeds such a model its fixed batch
    at a time (the runner's ONNX Runtime adapter reads it from the model).
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    model = onnx.load(str(path))
    inputs = [i for i in model.graph.input if i.name == input_name]
    if not inputs:
        names = ", ".join(i.name for i in model.graph.input)
        raise BuildError(f"{path.name} has no input {input_name!r} to fix the batch of", fix=f"its inputs: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    fixed = [d if d is not None else s for d, s in zip(declared, input_shape, strict=True)]
    make_input_shape_fixed(model.graph, input_name, fixed)
    fix_output_shapes(model)
    onnx.save(model, str(path))
    return int(fixed[0])


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
    recipe = 2  # 2: the artifact's batch is fixed (QNN needs static shapes)
    build_options: tuple[str, ...] = ()
    run_options: tuple[str, ...] = ("provider", "qnn_backend", "performance_mode", "finalization_level")

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        check_onnx(request.onnx.path, request.onnx.input_shape)
        if request.precision == "int8":
            # Calibrate on the dynamic-batch reference (the calibration reader feeds 16 images at a
            # time), then fix the batch of the quantised model.
            out = request.out_dir / "model-qdq.onnx"
            quantize_qdq(request.onnx.path, out, request.onnx.input_name, require_calibration(self.name, request))
        else:
            out = request.out_dir / "model.onnx"
            shutil.copyfile(request.onnx.path, out)
        fix_batch(out, request.onnx.input_name, request.onnx.input_shape)
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
        # QNN alone, with CPU fallback off: ONNX Runtime otherwise places the nodes QNN cannot run on
        # the CPU without a word, and it refuses fallback-off with the CPU provider listed beside it.
        return {
            "threads": threads,
            "providers": ["QNNExecutionProvider"],
            "provider_options": [
                provider_options(precision, backend=backend, performance_mode=mode, finalization_level=int(level)),
            ],
            "session_config": dict(NO_CPU_FALLBACK),
        }
