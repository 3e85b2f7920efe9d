"""Core ML on a Mac: the .mlpackage zip unpacked beside it, loaded with the requested compute units.

Untested here (prediction needs macOS); written to coremltools' documentation. ``predict`` takes a
dict of numpy arrays and returns one, so the bound input dict is built once and the timed call is
``predict`` alone (Core ML copies the input into its own buffers inside that call; there is no
public API that avoids it).
"""

from __future__ import annotations

import os
import sys
import zipfile
from typing import Any

import numpy as np

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def available() -> bool:
    if sys.platform != "darwin":
        # coremltools imports on Linux (conversion works there), but prediction needs macOS.
        raise ImportError(f"Core ML prediction needs macOS; this device runs {sys.platform}")
    import coremltools  # noqa: F401

    return True


def version() -> str:
    import coremltools

    return str(coremltools.__version__)


def unpack(artifact: str) -> str:
    """Unpack the zip once beside the artifact; return the .mlpackage directory."""
    target = artifact + ".d"
    package = os.path.join(target, "model.mlpackage")
    if not os.path.isdir(package):
        tmp = f"{target}.tmp-{os.getpid()}"
        with zipfile.ZipFile(artifact) as zf:
            zf.extractall(tmp)
        os.replace(tmp, target)
    return package


class CoreMlSession:
    def __init__(self, artifact: str, input_name: str, options: dict[str, Any]) -> None:
        import coremltools as ct

        units = str(options.get("compute_units", "ALL"))
        if units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units {units!r} is not one of {', '.join(COMPUTE_UNITS)}")
        self.units = units
        self.model = ct.models.MLModel(unpack(artifact), compute_units=getattr(ct.ComputeUnit, units))
        self.input_name = input_name
        outputs = self.model.get_spec().description.output
        self.output_name = outputs[0].name
        self._feed: dict[str, np.ndarray] = {}

    def bind(self, x: np.ndarray) -> None:
        self._feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def run_bound(self) -> None:
        self.model.predict(self._feed)

    def infer(self, x: np.ndarray) -> np.ndarray:
        rows = []
        for i in range(len(x)):  # the program was converted at batch 1
            out = self.model.predict({self.input_name: np.ascontiguousarray(x[i : i + 1], dtype=np.float32)})
            rows.append(np.asarray(out[self.output_name], dtype=np.float32).reshape(1, -1))
        return np.concatenate(rows)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "coreml", "version": version(), "compute_units": self.units}


def open_session(artifact: str, input_name: str, options: dict[str, Any]) -> CoreMlSession:
    return CoreMlSession(artifact, input_name, options)
