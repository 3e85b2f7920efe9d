"""Backends: a host-side compile step and the runner options for one runtime, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from ...errors import UnknownNameError
from .coreml import CoreMlBackend
from .edgetpu import EdgeTpuBackend
from .litert import LiteRtBackend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .protocol import Backend, CompileRequest
from .qnn import QnnBackend
from .tensorrt import TensorRtBackend

__all__ = ["BACKENDS", "Backend", "CompileRequest", "get_backend"]

BACKENDS: dict[str, Callable[[], Backend]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "openvino": OpenVinoBackend,
    "litert": LiteRtBackend,
    "tensorrt": TensorRtBackend,
    "edgetpu": EdgeTpuBackend,
    "coreml": CoreMlBackend,
    "qnn": QnnBackend,
}


def get_backend(name: str) -> Backend:
    """The backend registered under name; an unknown name lists the known ones."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise UnknownNameError("backend", name, list(BACKENDS)) from None
    return factory()
