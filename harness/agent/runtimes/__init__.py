"""Runtime adapters on the device, looked up by name and imported only when a job needs them.

Each adapter module exposes ``open_session(artifact, input_name, options) -> Session``,
``version() -> str`` and ``available() -> bool``. A Session binds the latency input once
(``bind``), then ``run_bound()`` is the timed call and nothing else; ``infer(batch)`` serves the
eval pass and returns the first output as a numpy array; ``describe()`` reports the settings the
runtime actually applied (threads, precision hints, providers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

try:  # Python 3.8+ on the device; Protocol exists from 3.8.
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

import numpy as np

# name -> module inside this package. Adding a runtime is one module and one line here.
RUNTIMES: dict[str, str] = {
    "onnxruntime": "onnxruntime_rt",
    "openvino": "openvino_rt",
    "litert": "litert_rt",
    "tensorrt": "tensorrt_rt",
    "coreml": "coreml_rt",
}


class RuntimeMissing(ImportError):
    """The runtime, or the accelerator it needs, is not usable on this device; the job is skipped."""


class UnknownRuntime(ValueError):
    """The job names a runtime this runner does not know."""


class Session(Protocol):
    def bind(self, x: np.ndarray) -> None: ...

    def run_bound(self) -> None: ...

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def in_batches(x: np.ndarray, most: int, least: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The eval pass for a model with a batch range: ``run`` on chunks of at most ``most`` images.

    A chunk shorter than ``least`` (a fixed-batch model's last one) is padded with copies of its last
    image, and the padding's outputs are dropped.
    """
    rows = []
    for start in range(0, len(x), most):
        chunk = x[start : start + most]
        keep = len(chunk)
        if keep < least:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], least - keep, axis=0)])
        rows.append(run(chunk)[:keep])
    return np.concatenate(rows)


def load(name: str) -> ModuleType:
    """Import the adapter module for a runtime name."""
    if name not in RUNTIMES:
        raise UnknownRuntime(f"unknown runtime {name!r}; this runner knows: {', '.join(sorted(RUNTIMES))}")
    return importlib.import_module(f"{__name__}.{RUNTIMES[name]}")


def probe() -> dict[str, Any]:
    """Which runtimes import here, with their versions (or why not)."""
    found: dict[str, Any] = {}
    for name in sorted(RUNTIMES):
        try:
            module = load(name)
            found[name] = {"available": bool(module.available()), "version": module.version()}
        except Exception as exc:  # any import failure means "not available here", with the reason
            found[name] = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return found


def known() -> list[str]:
    return sorted(RUNTIMES)
