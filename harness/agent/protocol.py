"""The runner's versioned JSON contract: the job spec it reads and the result it writes.

Written with the standard library only (the device has no pydantic). The host side builds these
dicts from typed records in ``harness.pipeline``; this module is the single place that reads them on
the device, so a malformed spec fails here with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
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


_TOP_LEVEL = (
    "protocol",
    "job_id",
    "runtime",
    "artifact",
    "input",
    "latency",
    "eval",
    "outputs",
    "options",
    "warmup",
    "stop",
    "eval_batch",
)
_LATENCY = ("file", "key")
_MISSING = object()


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise SpecError(f"job spec: missing key {where}{key}")
    return obj[key]


def _reject_unknown(obj: dict[str, Any], known: tuple[str, ...] | list[str], where: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise SpecError(f"job spec: unknown key {where}{unknown[0]}; known: {', '.join(sorted(known))}")


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation (the annotations here are strings, see __future__)."""
    optional = annotation.endswith(" | None")
    if value is None:
        return optional
    base = annotation[: -len(" | None")] if optional else annotation
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base.startswith("tuple["):
        item = "int" if base.startswith("tuple[int") else "float"
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return True


def _sub(cls: Any, obj: Any, where: str) -> Any:
    if obj is None:
        return cls()
    if not isinstance(obj, dict):
        raise SpecError(f"job spec: {where} must be an object, got {type(obj).__name__}")
    fields = cls.__dataclass_fields__
    _reject_unknown(obj, list(fields), f"{where}.")
    values = dict(obj)
    for name, spec in fields.items():
        required = spec.default is MISSING and spec.default_factory is MISSING
        value = values.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise SpecError(f"job spec: missing key {where}.{name}")
            continue
        if not _type_ok(value, str(spec.type)):
            raise SpecError(f"job spec: {where}.{name} must be {spec.type}, got {value!r}")
        if isinstance(value, list):
            values[name] = tuple(value)
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
    # A misspelt key would otherwise be ignored and its default used without a word.
    _reject_unknown(obj, _TOP_LEVEL, "")
    latency = _require(obj, "latency", "")
    if not isinstance(latency, dict):
        raise SpecError(f"job spec: latency must be an object, got {type(latency).__name__}")
    _reject_unknown(latency, _LATENCY, "latency.")
    eval_list = obj.get("eval", [])
    if not isinstance(eval_list, list):
        raise SpecError(f"job spec: eval must be a list, got {type(eval_list).__name__}")
    options = obj.get("options", {})
    if not isinstance(options, dict):
        raise SpecError(f"job spec: options must be an object, got {type(options).__name__}")
    eval_batch = obj.get("eval_batch", 32)
    if not _type_ok(eval_batch, "int") or eval_batch < 1:
        raise SpecError(f"job spec: eval_batch must be a positive int, got {eval_batch!r}")
    return JobSpec(
        job_id=str(_require(obj, "job_id", "")),
        runtime=str(_require(obj, "runtime", "")),
        artifact=str(_require(obj, "artifact", "")),
        input=_sub(InputSpec, _require(obj, "input", ""), "input"),
        latency_file=str(_require(latency, "file", "latency.")),
        latency_key=str(latency.get("key", "latency")),
        outputs_file=str(_require(obj, "outputs", "")),
        options=dict(options),
        warmup=_sub(WarmupSpec, obj.get("warmup"), "warmup"),
        stop=_sub(StopSpec, obj.get("stop"), "stop"),
        eval_sets=tuple(_sub(EvalSet, e, f"eval[{i}]") for i, e in enumerate(eval_list)),
        eval_batch=eval_batch,
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
