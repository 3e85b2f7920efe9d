"""OpenVINO: IR in FP32, with FP16-compressed weights, or INT8 through NNCF post-training quantisation.

The IR is an .xml graph plus a .bin of weights; both travel as one uncompressed zip that the runner
reads into memory (no unpacking on the device). FP32 runs with INFERENCE_PRECISION_HINT=f32: on a CPU
with AMX or AVX512-BF16 the plugin otherwise runs an FP32 model in bf16 (starting measurements,
docs/measurements.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BuildError, ConfigError
from ..export import check_onnx
from .onnxruntime import check_choice, check_options, check_precision, require_calibration, write_archive
from .protocol import CompileRequest

log = logging.getLogger(__name__)

HINTS = ("latency", "throughput", "cumulative_throughput")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")


class OpenVinoBackend:
    """OpenVINO IR for the CPU (GPU and NPU take the same IR by option)."""

    name = "openvino"
    runtime = "openvino"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    needs_calibration: tuple[str, ...] = ("int8",)
    recipe = 2  # 2: INT8 weights in 7 bits on every layer by default (overflow_fix)
    build_options: tuple[str, ...] = ("nncf_preset", "overflow_fix")
    run_options: tuple[str, ...] = ("device", "hint", "streams", "inference_precision", "cpu_pinning")

    def compile(self, request: CompileRequest) -> Path:
        check_precision(self.name, request.precision, self.precisions)
        check_options(self.name, request.options, self.build_options + self.run_options)
        import openvino as ov

        check_onnx(request.onnx.path, request.onnx.input_shape)
        try:
            model = ov.convert_model(str(request.onnx.path))
        except Exception as exc:
            raise BuildError(
                f"OpenVINO cannot convert {request.onnx.path.name}: {str(exc).splitlines()[0][:200]}"
            ) from None
        if request.precision == "int8":
            model = self._quantize(model, request)
        work = request.out_dir / "ir"
        work.mkdir()
        # compress_to_fp16 stores the weights as f16; the graph decompresses them on load.
        ov.save_model(model, str(work / "model.xml"), compress_to_fp16=request.precision == "fp16")
        return write_archive(
            request.out_dir / "model.ov.zip", [("model.xml", work / "model.xml"), ("model.bin", work / "model.bin")]
        )

    def _quantize(self, model: Any, request: CompileRequest) -> Any:
        import nncf

        calibration = require_calibration(self.name, request)
        preset_name = check_choice(
            self.name, "nncf_preset", request.options.get("nncf_preset", "performance"), ("performance", "mixed")
        )
        preset = nncf.QuantizationPreset.MIXED if preset_name == "mixed" else nncf.QuantizationPreset.PERFORMANCE
        # NNCF's default keeps only the first layer's weights to 7 bits. The CPU plugin's u8s8 kernels
        # saturate on x86 CPUs without VNNI on every layer, as ONNX Runtime's do (see quantize_qdq): on
        # this project's AVX2-only VM MobileNetV2-style INT8 agreed with FP32 on 41% of images (logit
        # PSNR 27.2 dB) with first_layer and on 58% (34.1 dB) with enable. The artifact cannot know its
        # CPU, so every layer is the default; first_layer or disable for VNNI-only or ARM fleets.
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        fixes = {"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}
        fix = check_choice(self.name, "overflow_fix", request.options.get("overflow_fix", "enable"), tuple(fixes))
        dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
        try:
            return nncf.quantize(
                model,
                dataset,
                preset=preset,
                subset_size=len(calibration),
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fixes[fix]),
            )
        except Exception as exc:
            raise BuildError(f"NNCF quantisation failed: {str(exc).splitlines()[0][:200]}") from None

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, self.build_options + self.run_options)
        device = check_choice(self.name, "device", options.get("device", "CPU"), DEVICES)
        hint = check_choice(self.name, "hint", options.get("hint", "latency"), HINTS)
        # The FP32 reference must compute in f32; on the CPU the other precisions do too (their
        # weights are what is reduced), elsewhere the plugin's own default (f16 on GPU/NPU) applies.
        default_precision = "f32" if precision == "fp32" or device == "CPU" else None
        inference_precision = options.get("inference_precision", default_precision)
        if inference_precision is not None:
            check_choice(self.name, "inference_precision", inference_precision, INFERENCE_PRECISIONS)
        streams = options.get("streams", 1)
        if not (isinstance(streams, int) and streams >= 1) and streams not in ("AUTO",):
            raise ConfigError(
                f"openvino option streams={streams!r} is not valid",
                key="options.streams",
                fix="use a count >= 1 or AUTO",
            )
        return {
            "device": device,
            "hint": hint,
            "streams": streams,
            "threads": threads,
            "inference_precision": inference_precision,
            "cpu_pinning": options.get("cpu_pinning"),
        }
