"""The Backend protocol every compile step satisfies (without inheriting from it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..export import OnnxModel


@dataclass(frozen=True)
class CompileRequest:
    """What a backend compiles: the FP32 ONNX reference, a precision and its options."""

    onnx: OnnxModel
    precision: str
    out_dir: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    calibration: np.ndarray | None = None  # normalised model inputs, (N, C, H, W) float32
    calibration_id: str | None = None  # content hash of the calibration set, part of the cache key


class Backend(Protocol):
    name: str
    runtime: str  # the runner's runtime adapter that loads this backend's artifacts
    precisions: tuple[str, ...]
    needs_calibration: tuple[str, ...]  # precisions that need a calibration set
    recipe: int  # bumped when the compile step's output changes for the same inputs: cached artifacts rebuild
    build_options: tuple[str, ...]  # options the compile step reads: part of the artifact's cache key
    run_options: tuple[str, ...]  # options only the runner reads: changing one reuses the artifact

    def compile(self, request: CompileRequest) -> Path:
        """Write the artifact into request.out_dir and return its path."""
        ...

    def runner_options(self, precision: str, threads: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options the runner's adapter receives in the job spec."""
        ...
