"""ONNX Runtime on the device: CPU by default, other execution providers by option (QNN, CUDA, TensorRT).

The timed call is ``run_with_iobinding`` over an input bound once, so the loop measures the
runtime, not Python copying arrays (io_binding 2.62 ms against run() 2.64 ms on the reference
machine: starting measurements, docs/measurements.md).

A model whose input has a fixed batch (the QNN build fixes it: the QNN provider needs static shapes)
is bound at that batch only, and the eval pass feeds it that many images at a time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import RuntimeMissing, in_batches


def available() -> bool:
    import onnxruntime  # noqa: F401

    return True


def version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


CPU_FALLBACK_KEY = "session.disable_cpu_ep_fallback"
# What ONNX Runtime (1.32, checked) says when fallback is off and a node is left to the CPU provider; other
# wording still fails the session, as ONNX Runtime's own error.
_FALLBACK_REFUSED = "fallback to CPU EP has been explicitly disabled"


class OrtSession:
    """One InferenceSession with its bound latency input."""

    def __init__(self, artifact: str, input_name: str, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        self._ort = ort
        so = ort.SessionOptions()
        threads = options.get("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        # Inter-op threads run independent graph branches side by side, which ONNX Runtime does only
        # in its parallel execution mode; in the sequential mode the setting would do nothing.
        inter_op = int(options.get("inter_op_threads", 1))
        so.inter_op_num_threads = inter_op
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if inter_op > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.get("spin_wait") is False:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = list(options.get("providers") or ["CPUExecutionProvider"])
        # ONNX Runtime silently falls back to the CPU when an accelerator's provider is missing, which
        # would time the CPU under the accelerator's name: refuse instead.
        missing = [p for p in providers if isinstance(p, str) and p not in ort.get_available_providers()]
        if missing:
            raise RuntimeMissing(
                f"onnxruntime {ort.__version__} here has no {', '.join(missing)} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        session_config = {str(k): str(v) for k, v in dict(options.get("session_config") or {}).items()}
        for key, value in session_config.items():
            so.add_session_config_entry(key, value)
        provider_options: list[dict[str, Any]] | None = options.get("provider_options")
        try:
            self.session = ort.InferenceSession(
                artifact, sess_options=so, providers=providers, provider_options=provider_options
            )
        except Exception as exc:  # ONNX Runtime's own exception types live in a private module
            if _FALLBACK_REFUSED not in str(exc):
                raise
            raise RuntimeError(
                f"{', '.join(str(p) for p in providers)} cannot run every node of {os.path.basename(artifact)}, "
                f"and CPU fallback is off ({CPU_FALLBACK_KEY}=1) so that the timing is the accelerator's alone; "
                "fix: use a model whose operators the provider supports (for QNN, ONNX Runtime's QNN execution "
                "provider operator list), or time it on the CPU (qnn option provider: cpu)"
            ) from None
        self.input_name = input_name
        self.output_name = self.session.get_outputs()[0].name
        inputs = {i.name: i for i in self.session.get_inputs()}
        shape = list(inputs[input_name].shape) if input_name in inputs else []
        self._input_shape = [d if isinstance(d, int) else None for d in shape]
        # A fixed batch (an int; a symbolic dimension is a str or None) is the only batch the model takes.
        self._fixed_batch: int | None = self._input_shape[0] if self._input_shape else None
        self._binding: Any = None
        self._threads = threads
        self._inter_op = inter_op
        self._spin_wait = options.get("spin_wait") is not False
        self._providers = providers
        self._cpu_fallback = session_config.get(CPU_FALLBACK_KEY) != "1"

    def bind(self, x: np.ndarray) -> None:
        if self._fixed_batch is not None and len(x) != self._fixed_batch:
            raise RuntimeError(
                f"this model's input has a fixed batch of {self._fixed_batch}, not {len(x)}; "
                f"measure it with batch {self._fixed_batch}"
            )
        self._bound = np.ascontiguousarray(x)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, self._bound)
        binding.bind_output(self.output_name, "cpu")
        self._binding = binding

    def run_bound(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def infer(self, x: np.ndarray) -> np.ndarray:
        step = self._fixed_batch
        if step is None or len(x) == step:
            return self._run(x)
        return in_batches(x, step, step, self._run)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})
        return np.asarray(out[0])

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "version": version(),
            "providers": self.session.get_providers(),
            "intra_op_threads": self._threads,
            "inter_op_threads": self._inter_op,
            "execution_mode": "parallel" if self._inter_op > 1 else "sequential",
            "spin_wait": self._spin_wait,
            "cpu_ep_fallback": self._cpu_fallback,
            "input_shape": self._input_shape,
        }


def open_session(artifact: str, input_name: str, options: dict[str, Any]) -> OrtSession:
    return OrtSession(artifact, input_name, options)
