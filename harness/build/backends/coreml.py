"""Core ML (Mac): coremltools converts the ONNX reference (as a traced torch module) to an ML Program.

FP32 and FP16 set the program's compute precision; ``int8-weights`` stores the weights as 8-bit
linear symmetric per-channel values (coremltools.optimize.coreml) and computes in FP16 — a weight-only
compression, so it is named for what it is rather than "int8". An .mlpackage is a directory; it
travels as one zip (``model.mlpackage.zip``) that the runner unpacks. Conversion works on Linux;
prediction needs macOS.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BuildError, ConfigError
from ..export import check_onnx
from .litert import onnx_as_torch
from .onnxruntime import check_options, check_precision, write_archive
from .protocol import CompileRequest

log = logging.getLogger(__name__)

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
DEPLOYMENT_TARGETS = ("macOS13", "macOS14", "macOS15", "iOS16", "iOS17", "iOS18")


def _output_name(onnx_path: Path) -> str:
    import onnx

    return str(onnx.load(str(onnx_path), load_external_data=False).graph.output[0].name)


class CoreMlBackend:
    """Apple Core ML on the ANE, GPU or CPU (chosen at run time by compute units)."""

    name = "coreml"
    runtime = "coreml"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8-weights")
    needs_calibration: tuple[str, ...] = ()
    recipe = 1
    build_options: tuple[str, ...] = ("deployment_target",)
    run_options: tuple[str, ...] = ("compute_units",)

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        target_name = str(request.options.get("deployment_target", "macOS13"))
        if target_name not in DEPLOYMENT_TARGETS:
            raise ConfigError(
                f"coreml option deployment_target={target_name!r} is not valid",
                key="options.deployment_target",
                fix=f"use one of: {', '.join(DEPLOYMENT_TARGETS)}",
            )
        onnx = request.onnx
        check_onnx(onnx.path, onnx.input_shape)
        import coremltools as ct
        import torch

        shape = (1, *onnx.input_shape[1:])
        module = onnx_as_torch(onnx.path)
        precision = ct.precision.FLOAT32 if request.precision == "fp32" else ct.precision.FLOAT16
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, torch.zeros(shape, dtype=torch.float32))  # type: ignore[no-untyped-call]
                model = ct.convert(
                    traced,
                    inputs=[ct.TensorType(name=onnx.input_name, shape=shape)],
                    outputs=[ct.TensorType(name=_output_name(onnx.path))],
                    convert_to="mlprogram",
                    compute_precision=precision,
                    minimum_deployment_target=getattr(ct.target, target_name),
                )
                if request.precision == "int8-weights":
                    from coremltools.optimize.coreml import (
                        OpLinearQuantizerConfig,
                        OptimizationConfig,
                        linear_quantize_weights,
                    )

                    config = OptimizationConfig(
                        global_config=OpLinearQuantizerConfig(
                            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
                        )
                    )
                    model = linear_quantize_weights(model, config=config)
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(f"coremltools conversion failed: {str(exc).splitlines()[0][:200]}") from None
        package = request.out_dir / "model.mlpackage"
        model.save(str(package))
        return write_archive(request.out_dir / "model.mlpackage.zip", [("model.mlpackage", package)])

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        units = str(options.get("compute_units", "ALL"))
        if units not in COMPUTE_UNITS:
            raise ConfigError(
                f"coreml option compute_units={units!r} is not valid",
                key="options.compute_units",
                fix=f"use one of: {', '.join(COMPUTE_UNITS)}",
            )
        return {"compute_units": units}
