"""OpenVINO on the device: the IR zip read into memory, compiled for one device with explicit hints.

The timed call is a bare ``infer()`` on a request whose input tensor shares the bound array's memory
(set once): ``infer({0: x})`` copies inputs and outputs every call, which cost 4-11% on the reference
machine (starting measurements, docs/measurements.md). The model is compiled at batch 1, the
latency input's shape; the eval pass runs its images one by one through a second request of the
same compiled model.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}


def available() -> bool:
    import openvino  # noqa: F401

    return True


def version() -> str:
    import openvino

    return str(openvino.__version__)


def _read_ir(core: Any, artifact: str) -> Any:
    with zipfile.ZipFile(artifact) as zf:
        xml = zf.read("model.xml")
        weights = zf.read("model.bin")
    return core.read_model(model=xml, weights=weights)


def compile_config(options: dict[str, Any]) -> dict[str, Any]:
    """The compile_model properties for the job's options (None means: the plugin's default)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": _HINTS[str(options.get("hint", "latency"))]}
    if options.get("inference_precision"):
        config["INFERENCE_PRECISION_HINT"] = str(options["inference_precision"])
    if options.get("threads"):
        config["INFERENCE_NUM_THREADS"] = int(options["threads"])
    streams = options.get("streams")
    if streams is not None:
        config["NUM_STREAMS"] = streams if streams == "AUTO" else int(streams)
    if options.get("cpu_pinning") is not None:
        config["ENABLE_CPU_PINNING"] = bool(options["cpu_pinning"])
    return config


class OpenVinoSession:
    """One compiled model, a timed request with a shared input tensor, and an eval request."""

    def __init__(self, artifact: str, input_name: str, options: dict[str, Any]) -> None:
        import openvino as ov

        self._ov = ov
        self._core = core = ov.Core()
        self._model = _read_ir(core, artifact)
        self.device = str(options.get("device", "CPU"))
        self.config = compile_config(options)
        # The eval pass feeds one image at a time: a batch-1 compiled model; the timed request gets
        # one compiled for the latency input's batch when that differs.
        self.compiled = self._compile(1)
        self._timed = self.compiled
        self._timed_batch = 1
        self.request = self.compiled.create_infer_request()
        self._eval_request: Any | None = None
        self.input_name = input_name
        self._bound: np.ndarray | None = None

    def _compile(self, batch: int) -> Any:
        """The IR reshaped to ``batch`` (its batch is dynamic, or static and reshapable) and compiled."""
        model = self._model.clone()
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and (shape[0].is_dynamic or shape[0].get_length() != batch):
            shape[0] = batch
            model.reshape({model.inputs[0]: shape})
        return self._core.compile_model(model, self.device, self.config)

    def bind(self, x: np.ndarray) -> None:
        self._bound = np.ascontiguousarray(x, dtype=np.float32)
        if len(self._bound) != self._timed_batch:
            self._timed = self._compile(len(self._bound))
            self._timed_batch = len(self._bound)
            self.request = self._timed.create_infer_request()
        self.request.set_input_tensor(self._ov.Tensor(self._bound, shared_memory=True))

    def run_bound(self) -> None:
        self.request.infer()

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self._eval_request is None:
            self._eval_request = self.compiled.create_infer_request()
        request = self._eval_request
        rows = []
        for i in range(len(x)):
            result = request.infer({0: np.ascontiguousarray(x[i : i + 1], dtype=np.float32)})
            rows.append(np.array(result[self.compiled.outputs[0]], copy=True))
        return np.concatenate(rows)

    def describe(self) -> dict[str, Any]:
        applied: dict[str, Any] = {}
        for key in ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                value = self.compiled.get_property(key)
                # ov.Type prints as "<Type: 'float32'>"; its to_string() is the hint's own spelling.
                applied[key] = value.to_string() if hasattr(value, "to_string") else str(value)
            except Exception:  # a property the device's plugin does not expose
                applied[key] = None
        return {
            "runtime": "openvino",
            "version": version(),
            "device": self.device,
            "requested": {k: str(v) for k, v in self.config.items()},
            "applied": applied,
            "timed_call": "infer() on a shared input tensor",
        }


def open_session(artifact: str, input_name: str, options: dict[str, Any]) -> OpenVinoSession:
    return OpenVinoSession(artifact, input_name, options)
