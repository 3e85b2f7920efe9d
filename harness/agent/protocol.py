"""The runner's versioned JSON contract: the job spec it reads and the result it writes.

Written with the standard library only (the device has no pydantic). The host side builds these
dicts from typed records in ``harness.pipeline``; this module is the single place that reads them on
the device, so a malformed spec fails here with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import PROTOCOL_VERSION


class SpecError(ValueError):
    """The job spec does not follow the protocol; the message names the key."""


@dataclass(frozen=True)
class WarmupSpec:
    window: int = 20
    windows: int = 3
    tolerance: float = 0.02
    min_iterations: int = 10
    max_iterations: int = 1000


@dataclass(frozen=True)
class StopSpec:
    """When the timed loop ends: a fixed count, or the adaptive rule (percentiles VALID and tight)."""

    iterations: int | None = None
    min_iterations: int = 400
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    max_iterations: int = 1_000_000
    max_half_width: float = 0.05
    percentiles: tuple[float, ...] = (0.5, 0.95, 0.99)
    confidence: float = 0.95


@dataclass(frozen=True)
class EvalSet:
    name: str
    file: str
    key: str = "images"


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    runtime: str
    artifact: str
    input: InputSpec
    latency_file: str
    latency_key: str
    outputs_file: str
    options: dict[str, Any] = field(default_factory=dict)
    warmup: WarmupSpec = WarmupSpec()
    stop: StopSpec = StopSpec()
    eval_sets: tuple[EvalSet, ...] = ()
    eval_batch: int = 32
    protocol: int = PROTOCOL_VERSION


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise SpecError(f"job spec: missing key {where}{key}")
    return obj[key]


def _sub(cls: Any, obj: Any, where: str) -> Any:
    if obj is None:
        return cls()
    if not isinstance(obj, dict):
        raise SpecError(f"job spec: {where} must be an object, got {type(obj).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(obj) - known)
    if unknown:
        raise SpecError(f"job spec: unknown key {where}.{unknown[0]}; known: {', '.join(sorted(known))}")
    values = dict(obj)
    for key in ("percentiles", "shape", "mean", "std"):
        if key in values and isinstance(values[key], list):
            values[key] = tuple(values[key])
    return cls(**values)


def parse_job(obj: Any) -> JobSpec:
    """Read a job spec dict; raise SpecError naming the bad key."""
    if not isinstance(obj, dict):
        raise SpecError("job spec must be a JSON object")
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION:
        raise SpecError(
            f"job spec: protocol {version!r} is not supported by this runner (speaks {PROTOCOL_VERSION}); "
            "redeploy the runner from the same edgebench version as the host"
        )
    latency = _require(obj, "latency", "")
    eval_sets = tuple(_sub(EvalSet, e, f"eval[{i}]") for i, e in enumerate(obj.get("eval", [])))
    return JobSpec(
        job_id=str(_require(obj, "job_id", "")),
        runtime=str(_require(obj, "runtime", "")),
        artifact=str(_require(obj, "artifact", "")),
        input=_sub(InputSpec, _require(obj, "input", ""), "input"),
        latency_file=str(_require(latency, "file", "latency.")),
        latency_key=str(latency.get("key", "latency")),
        outputs_file=str(_require(obj, "outputs", "")),
        options=dict(obj.get("options", {})),
        warmup=_sub(WarmupSpec, obj.get("warmup"), "warmup"),
        stop=_sub(StopSpec, obj.get("stop"), "stop"),
        eval_sets=eval_sets,
        eval_batch=int(obj.get("eval_batch", 32)),
    )


def error_result(job_id: str | None, kind: str, message: str) -> dict[str, Any]:
    """A result that says the job failed and why; never carries samples."""
    return {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "status": "error",
        "error": {"kind": kind, "message": message},
    }


def result_keys() -> list[str]:
    """Top-level keys of a successful result, in the order the runner writes them."""
    return [
        "protocol",
        "job_id",
        "status",
        "runtime",
        "facts",
        "load_ms",
        "first_inference_ms",
        "warmup_iterations",
        "warmup_stable",
        "stop_reason",
        "duration_s",
        "samples_ns",
        "outputs",
        "outputs_sha256",
    ]
