"""Frozen records that flow through a run: the planned job and its result.

A result's ``metrics`` holds every scalar a later stage adds (parity, robustness, stability); the
store keeps them as rows, so adding a metric never needs a schema migration, and ``flat()`` gives
the one record shape that ``edgebench results`` prints, the report renders and the gate reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .catalog import ModelEntry
from .lab.inventory import Device
from .measure.stats import LatencySummary

RESULT_SCHEMA_VERSION = 1

Status = Literal["passed", "failed", "error", "skipped"]
MetricValue = float | int | str | bool | None | list[Any] | dict[str, Any]


REFERENCE_BACKENDS = {"edgetpu": "litert"}


@dataclass(frozen=True)
class Variant:
    """How one model is compiled and run: backend x precision x input size x threads."""

    backend: str
    precision: str = "fp32"
    size: int | None = None  # square input side; None = the catalog's shape
    threads: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        text = f"{self.backend}-{self.precision}"
        if self.size is not None:
            text += f"-{self.size}px"
        if self.threads is not None:
            text += f"-t{self.threads}"
        for key, value in self.options:
            text += f"-{key}={value}"
        return text

    def reference(self, options_for: Callable[[str], tuple[tuple[str, Any], ...]] | None = None) -> Variant:
        """The FP32 variant this one is compared with on the same device.

        The Edge TPU runs only full-INT8 models, so its FP32 reference is LiteRT on the device's CPU,
        with the options the device gives LiteRT (``options_for``), not the Edge TPU's.
        """
        backend = REFERENCE_BACKENDS.get(self.backend, self.backend)
        if backend != self.backend:
            return Variant(backend, "fp32", self.size, self.threads, options_for(backend) if options_for else ())
        return Variant(backend, "fp32", self.size, self.threads, self.options)


@dataclass(frozen=True)
class Job:
    """One test: a model variant on a device."""

    model: ModelEntry
    variant: Variant
    device: Device
    kind: str = "latency"  # which suite asked for it: latency, parity, robustness

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.variant.id}/{self.device.name}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = list(self.model.input.shape)
        if self.variant.size is not None:
            if self.model.input.layout == "NCHW":
                shape[2] = shape[3] = self.variant.size
            else:
                shape[1] = shape[2] = self.variant.size
        return tuple(shape)


@dataclass(frozen=True)
class JobResult:
    """Everything one job produced: provenance, raw samples, statistics, metrics and a verdict."""

    run_id: str
    job_id: str
    model: str
    model_sha256: str
    artifact_sha256: str | None
    device: str
    platform: str
    backend: str
    runtime: str
    precision: str
    input_shape: tuple[int, ...]
    threads: int | None
    status: Status
    message: str
    started_at: str
    finished_at: str
    latency: LatencySummary | None = None
    samples_ns: np.ndarray | None = field(default=None, repr=False, compare=False)
    first_inference_ms: float | None = None
    load_ms: float | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    kind: str = "latency"
    failures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # check group -> messages

    def failed(self, group: str) -> tuple[str, ...]:
        """Failure messages of one check group (latency, parity, robustness, production)."""
        return self.failures.get(group, ())

    def flat(self) -> dict[str, Any]:
        """The public record: field names later issues extend and never rename."""
        lat = self.latency
        record: dict[str, Any] = {
            "run_id": self.run_id,
            "job_id": self.job_id,
            "kind": self.kind,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "artifact_sha256": self.artifact_sha256,
            "device": self.device,
            "platform": self.platform,
            "backend": self.backend,
            "runtime": self.runtime,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "threads": self.threads,
            "n": lat.n if lat else 0,
            "p50_ms": lat.p50.value_ms if lat else None,
            "p90_ms": lat.p90.value_ms if lat else None,
            "p95_ms": lat.p95.value_ms if lat else None,
            "p99_ms": lat.p99.value_ms if lat else None,
            "p50_ci_ms": _ci(lat.p50) if lat else None,
            "p95_ci_ms": _ci(lat.p95) if lat else None,
            "p99_ci_ms": _ci(lat.p99) if lat else None,
            # How many independent calls each interval rests on: n unless slow calls came in bursts.
            "p50_effective_n": lat.p50.effective_n if lat else None,
            "p95_effective_n": lat.p95.effective_n if lat else None,
            "p99_effective_n": lat.p99.effective_n if lat else None,
            "min_ms": lat.min_ms if lat else None,
            "max_ms": lat.max_ms if lat else None,
            "mean_ms": lat.mean_ms if lat else None,
            "std_ms": lat.std_ms if lat else None,
            "first_inference_ms": self.first_inference_ms,
            "load_ms": self.load_ms,
            "valid": bool(lat and lat.valid),
            "invalid_reasons": list(lat.invalid_reasons) if lat else ["no samples"],
            "status": self.status,
            "message": self.message,
            "failures": {k: list(v) for k, v in self.failures.items() if v},
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        record.update(self.metrics)
        return record


def _ci(p: Any) -> list[float] | None:
    if p.ci_low_ms is None or p.ci_high_ms is None:
        return None
    return [p.ci_low_ms, p.ci_high_ms]
