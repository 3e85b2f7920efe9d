"""LiteRT on the device: ai-edge-litert's Interpreter (or tflite_runtime's), XNNPACK threads, Edge TPU delegate.

The input is written into the interpreter once (``set_tensor`` copies it into the model's own
buffer), so the timed call is ``invoke()`` alone. Fully quantised models (int8/uint8 inputs, as the
Edge TPU needs) get the input quantised with the model's own scale and zero point outside the
timed call, and outputs dequantised for the eval pass. A model with NHWC inputs gets the runner's
NCHW images transposed here.

The interpreter package: ai-edge-litert first, tflite_runtime when it is missing. For the Edge TPU the
order turns round: libedgetpu is built against one TensorFlow Lite commit and its delegate needs an
interpreter of that build. Coral's guide runs it with tflite_runtime; Coral's maintainers pair
libedgetpu 15/16 with tflite_runtime 2.5 ("the 2 version must match, otherwise the ABI change between
version can cause this issue", google-coral/edgetpu #401; #731); users report newer interpreters
crashing in the delegate (#812). ai-edge-litert is used for it only where no tflite_runtime is
installed (it works with a libedgetpu rebuilt for it); ``describe()`` names the package either way.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

EDGETPU_LIBRARY = "libedgetpu.so.1"  # Linux; macOS uses libedgetpu.1.dylib, Windows edgetpu.dll
# (module, distribution): the interpreter packages in the order tried for CPU (XNNPACK) jobs.
PACKAGES = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"))


def _module(edgetpu: bool = False) -> tuple[Any, str]:
    """The interpreter module and its distribution name; tflite_runtime first for the Edge TPU."""
    order = PACKAGES[::-1] if edgetpu else PACKAGES
    missing = []
    for package, dist in order:
        try:
            return importlib.import_module(f"{package}.interpreter"), dist
        except ImportError as exc:
            missing.append(f"{dist} ({exc})")
    raise ImportError("no LiteRT interpreter here: " + "; ".join(missing))


def available() -> bool:
    _module()
    return True


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version as dist_version

        return f"{dist} {dist_version(dist)}"
    except Exception:  # metadata missing on some device images: the import itself is what matters
        return dist


def version() -> str:
    return _dist_version(_module()[1])


def quantize(x: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """float -> the tensor's integer type with its (scale, zero_point); float tensors pass through."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    out: np.ndarray = np.clip(np.rint(x / scale + zero_point), info.min, info.max).astype(dtype)
    return out


def dequantize(y: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return np.asarray(y, dtype=np.float32)
    scale, zero_point = details["quantization"]
    out: np.ndarray = ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return out


def to_model_layout(x: np.ndarray, model_shape: list[int]) -> np.ndarray:
    """The runner's NCHW batch in the model's layout (NHWC models get a transpose)."""
    if list(x.shape[1:]) == list(model_shape[1:]):
        return x
    nhwc = np.transpose(x, (0, 2, 3, 1))
    if list(nhwc.shape[1:]) == list(model_shape[1:]):
        return np.ascontiguousarray(nhwc)
    raise ValueError(f"input of shape {list(x.shape)} fits neither the model's {list(model_shape)} nor its NHWC form")


class LiteRtSession:
    """One Interpreter with its input written once."""

    def __init__(self, artifact: str, input_name: str, options: dict[str, Any]) -> None:
        module, self._dist = _module(edgetpu=bool(options.get("edgetpu")))
        kwargs: dict[str, Any] = {"model_path": artifact}
        threads = options.get("threads")
        if threads:
            kwargs["num_threads"] = int(threads)
        self._delegates: list[str] = []
        if options.get("edgetpu"):
            library = str(options.get("edgetpu_library") or EDGETPU_LIBRARY)
            device = options.get("edgetpu_device")
            delegate_options = {"device": str(device)} if device else {}
            kwargs["experimental_delegates"] = [module.load_delegate(library, delegate_options)]
            self._delegates.append(f"edgetpu:{library}")
        if options.get("xnnpack") is False:
            # Without XNNPACK the builtin reference kernels run (slow, but a useful A/B).
            kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = module.Interpreter(**kwargs)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._threads = threads
        self._xnnpack = options.get("xnnpack") is not False

    def _resize(self, batch: int) -> None:
        """Give the input ``batch`` rows (the timed input's batch; 1 for the eval pass)."""
        shape = [int(d) for d in self._input["shape"]]
        if shape[0] == batch:
            return
        if self._delegates:
            raise RuntimeError(
                f"an Edge TPU model runs at its compiled batch of {shape[0]}, not {batch}; measure it with batch 1"
            )
        shape[0] = batch
        try:
            self.interpreter.resize_tensor_input(self._input["index"], shape)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            # Converters bake the sample input's batch into reshape ops; such a model cannot grow.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RuntimeError(
                f"this .tflite cannot run at batch {batch} (its graph fixes batch {self._input['shape'][0]}: "
                f"{reason}); measure it with batch 1"
            ) from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]

    def bind(self, x: np.ndarray) -> None:
        self._resize(len(x))
        data = quantize(to_model_layout(x, list(self._input["shape"])), self._input)
        self.interpreter.set_tensor(self._input["index"], data)

    def run_bound(self) -> None:
        self.interpreter.invoke()

    def infer(self, x: np.ndarray) -> np.ndarray:
        # One image at a time: compiled Edge TPU models cannot be resized to a larger batch.
        self._resize(1)
        x = to_model_layout(x, list(self._input["shape"]))
        rows = []
        for i in range(len(x)):
            self.interpreter.set_tensor(self._input["index"], quantize(x[i : i + 1], self._input))
            self.interpreter.invoke()
            rows.append(dequantize(self.interpreter.get_tensor(self._output["index"]), self._output))
        return np.concatenate(rows)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "litert",
            "version": _dist_version(self._dist),
            "interpreter": self._dist,  # the package whose Interpreter ran (and loaded the delegate)
            "threads": self._threads,
            "xnnpack": self._xnnpack,
            "delegates": self._delegates,
            "input_dtype": np.dtype(self._input["dtype"]).name,
            "input_shape": [int(d) for d in self._input["shape"]],
        }


def open_session(artifact: str, input_name: str, options: dict[str, Any]) -> LiteRtSession:
    return LiteRtSession(artifact, input_name, options)
