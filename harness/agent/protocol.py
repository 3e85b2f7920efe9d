"""The runner's versioned JSON contract: the job spec it reads and the result it writes.

Written with the standard library only (the device has no pydantic). The host side builds these
dicts from typed records in ``harness.pipeline``; this module is the single place that reads them on
the device, so a malformed spec fails here with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from . import PROTOCOL_VERSION


class SpecError(ValueError):
    """The job spec does not follow the protocol; the message names the key."""


@dataclass(frozen=True)
class WarmupSpec:
    """Warm-up until the last ``windows`` window medians agree within ``tolerance``, capped.

    The caps are a call count and ``max_duration_s``; the time cap ends warm-up only once ``windows``
    windows have run, so a slow model's warm-up can still be judged (a floor the cap does not cut).
    """

    window: int = 20
    windows: int = 3
    tolerance: float = 0.02
    min_iterations: int = 10
    max_iterations: int = 1000
    max_duration_s: float = 3.0


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
class ProbeSpec:
    """One telemetry reader of the device's platform profile: a sysfs glob, or a streaming command."""

    kind: str  # sysfs | command
    label: str
    unit: str  # C | MHz | mW | W | %
    path: str | None = None
    name_file: str | None = None
    scale: float = 1.0
    command: tuple[str, ...] | None = None
    parser: str | None = None  # tegrastats | powermetrics
    needs_root: bool = False


PARSER_NAMES = ("tegrastats", "powermetrics")


@dataclass(frozen=True)
class ThermalSpec:
    """Clock and temperature sampling around the timed loop, and the calibration workload.

    ``interval_s`` 0 turns the sampler (read between calls) off; ``calibration_reps`` 0 skips the calibration
    workload (a fixed busy loop timed before warm-up and after the timed loop, sized on the device to
    about ``calibration_ms`` per repetition). ``readers`` are the platform profile's telemetry
    sources; none means the built-in ones (Linux thermal zones, cpufreq, the Coral Apex sensor).
    """

    interval_s: float = 0.5
    calibration_reps: int = 7
    calibration_ms: float = 10.0
    readers: tuple[ProbeSpec, ...] = ()


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
    thermal: ThermalSpec = ThermalSpec()
    cpus: tuple[int, ...] | None = None  # pin the runner to these CPUs (taskset's job when the device has it)
    batch: int = 1  # rows of the latency input per timed call


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
    "thermal",
    "cpus",
    "batch",
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
    if base == "bool":
        return isinstance(value, bool)
    if base.startswith("tuple["):
        item = base[len("tuple[") :].split(",")[0].rstrip("]")
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return True


def parse_thermal(obj: Any, where: str = "thermal") -> ThermalSpec:
    """The thermal part of a spec, with its telemetry readers checked one by one."""
    if not isinstance(obj, dict) or "readers" not in obj:
        return _sub(ThermalSpec, obj, where)  # type: ignore[no-any-return]
    readers = obj["readers"]
    if not isinstance(readers, list):
        raise SpecError(f"job spec: {where}.readers must be a list, got {type(readers).__name__}")
    probes = []
    for i, reader in enumerate(readers):
        probe = _sub(ProbeSpec, reader, f"{where}.readers[{i}]")
        if probe.kind not in ("sysfs", "command"):
            raise SpecError(f"job spec: {where}.readers[{i}].kind must be sysfs or command, got {probe.kind!r}")
        if probe.kind == "sysfs" and not probe.path:
            raise SpecError(f"job spec: {where}.readers[{i}] is a sysfs reader without a path")
        if probe.kind == "command" and (not probe.command or probe.parser not in PARSER_NAMES):
            raise SpecError(
                f"job spec: {where}.readers[{i}] needs a command and a parser ({', '.join(PARSER_NAMES)}), "
                f"got parser {probe.parser!r}"
            )
        probes.append(probe)
    spec: ThermalSpec = _sub(ThermalSpec, {k: v for k, v in obj.items() if k != "readers"}, where)
    return replace(spec, readers=tuple(probes))


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
    cpus, batch = _placement(obj)
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
        thermal=parse_thermal(obj.get("thermal")),
        cpus=cpus,
        batch=batch,
    )


def _placement(obj: dict[str, Any]) -> tuple[tuple[int, ...] | None, int]:
    """The optional ``cpus`` (CPU ids to pin to) and ``batch`` (rows per timed call) of a spec."""
    cpus = obj.get("cpus")
    if cpus is not None and (not _type_ok(cpus, "tuple[int, ...]") or not cpus or min(cpus) < 0):
        raise SpecError(f"job spec: cpus must be a non-empty list of CPU ids, got {cpus!r}")
    batch = obj.get("batch", 1)
    if not _type_ok(batch, "int") or batch < 1:
        raise SpecError(f"job spec: batch must be a positive int, got {batch!r}")
    return (tuple(cpus) if cpus is not None else None), batch


@dataclass(frozen=True)
class VariantSpec:
    """One model of an interleaved run: its artifact, runtime, input and latency data."""

    name: str
    runtime: str
    artifact: str
    input: InputSpec
    latency_file: str
    latency_key: str = "latency"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InterleaveSpec:
    """Several variants in one process, timed in rounds of blocks in a random order per round.

    ``stop`` applies to every variant: the run ends when all of them converged (or a cap hit);
    ``stop.iterations`` asks for that many timed iterations of each. Each block starts with
    ``block_warmup`` untimed calls, so the previous variant's caches and spinning threads are not
    charged to this one.
    """

    job_id: str
    variants: tuple[VariantSpec, ...]
    warmup: WarmupSpec = WarmupSpec()
    stop: StopSpec = StopSpec()
    block: int = 25
    block_warmup: int = 2
    seed: int = 0
    thermal: ThermalSpec = ThermalSpec()
    cpus: tuple[int, ...] | None = None
    batch: int = 1
    protocol: int = PROTOCOL_VERSION


_INTERLEAVE = (
    "protocol",
    "job_id",
    "variants",
    "warmup",
    "stop",
    "block",
    "block_warmup",
    "seed",
    "thermal",
    "cpus",
    "batch",
)
_VARIANT = ("name", "runtime", "artifact", "input", "latency", "options")


def _check_protocol(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise SpecError("job spec must be a JSON object")
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION:
        raise SpecError(
            f"job spec: protocol {version!r} is not supported by this runner (speaks {PROTOCOL_VERSION}); "
            "redeploy the runner from the same edgebench version as the host"
        )


def _positive_int(obj: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = obj.get(key, default)
    if not _type_ok(value, "int") or value < minimum:
        raise SpecError(f"job spec: {key} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _variant(obj: Any, where: str) -> VariantSpec:
    if not isinstance(obj, dict):
        raise SpecError(f"job spec: {where} must be an object, got {type(obj).__name__}")
    _reject_unknown(obj, _VARIANT, f"{where}.")
    latency = _require(obj, "latency", f"{where}.")
    if not isinstance(latency, dict):
        raise SpecError(f"job spec: {where}.latency must be an object, got {type(latency).__name__}")
    _reject_unknown(latency, _LATENCY, f"{where}.latency.")
    options = obj.get("options", {})
    if not isinstance(options, dict):
        raise SpecError(f"job spec: {where}.options must be an object, got {type(options).__name__}")
    return VariantSpec(
        name=str(_require(obj, "name", f"{where}.")),
        runtime=str(_require(obj, "runtime", f"{where}.")),
        artifact=str(_require(obj, "artifact", f"{where}.")),
        input=_sub(InputSpec, _require(obj, "input", f"{where}."), f"{where}.input"),
        latency_file=str(_require(latency, "file", f"{where}.latency.")),
        latency_key=str(latency.get("key", "latency")),
        options=dict(options),
    )


def parse_interleave(obj: Any) -> InterleaveSpec:
    """Read an interleaved-run spec; raise SpecError naming the bad key."""
    _check_protocol(obj)
    _reject_unknown(obj, _INTERLEAVE, "")
    variants = _require(obj, "variants", "")
    if not isinstance(variants, list) or not variants:
        raise SpecError("job spec: variants must be a non-empty list of variants")
    parsed = tuple(_variant(v, f"variants[{i}]") for i, v in enumerate(variants))
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise SpecError(f"job spec: variant names must be unique, got {names!r}")
    cpus, batch = _placement(obj)
    return InterleaveSpec(
        job_id=str(_require(obj, "job_id", "")),
        variants=parsed,
        warmup=_sub(WarmupSpec, obj.get("warmup"), "warmup"),
        stop=_sub(StopSpec, obj.get("stop"), "stop"),
        block=_positive_int(obj, "block", 25),
        block_warmup=_positive_int(obj, "block_warmup", 2, minimum=0),
        seed=_positive_int(obj, "seed", 0, minimum=0),
        thermal=parse_thermal(obj.get("thermal")),
        cpus=cpus,
        batch=batch,
    )


@dataclass(frozen=True)
class CapacitySpec:
    """How many concurrent streams at ``fps`` frames per second one device serves within 1000/fps ms P99.

    Each stream is a thread with its own session and input, calling the runtime at its frame times
    (random phase per stream); a frame's latency runs from its due time to its result, so a stream
    that falls behind accumulates queueing delay. Streams double until a step fails, then bisect.
    """

    job_id: str
    variant: VariantSpec
    fps: tuple[float, ...] = (30.0, 60.0)
    max_streams: int = 64
    percentile: float = 0.99
    min_samples: int = 400
    min_step_s: float = 2.0
    max_step_s: float = 20.0
    ramp_s: float = 0.5
    seed: int = 0
    cpus: tuple[int, ...] | None = None
    protocol: int = PROTOCOL_VERSION


_CAPACITY = (
    "protocol",
    "job_id",
    "variant",
    "fps",
    "max_streams",
    "percentile",
    "min_samples",
    "min_step_s",
    "max_step_s",
    "ramp_s",
    "seed",
    "cpus",
)


def parse_capacity(obj: Any) -> CapacitySpec:
    """Read a capacity spec; raise SpecError naming the bad key."""
    _check_protocol(obj)
    _reject_unknown(obj, _CAPACITY, "")
    fields = CapacitySpec.__dataclass_fields__
    values: dict[str, Any] = {}
    for name in ("fps", "percentile", "min_step_s", "max_step_s", "ramp_s"):
        if name in obj:
            if not _type_ok(obj[name], str(fields[name].type)):
                raise SpecError(f"job spec: {name} must be {fields[name].type}, got {obj[name]!r}")
            values[name] = tuple(float(v) for v in obj[name]) if name == "fps" else float(obj[name])
    if "fps" in values and (not values["fps"] or min(values["fps"]) <= 0):
        raise SpecError(f"job spec: fps must be a non-empty list of positive rates, got {obj['fps']!r}")
    if not 0.0 < values.get("percentile", 0.99) < 1.0:
        raise SpecError(f"job spec: percentile must lie in (0, 1), got {obj['percentile']!r}")
    cpus, _ = _placement(obj)
    return CapacitySpec(
        job_id=str(_require(obj, "job_id", "")),
        variant=_variant(_require(obj, "variant", ""), "variant"),
        max_streams=_positive_int(obj, "max_streams", 64),
        min_samples=_positive_int(obj, "min_samples", 400),
        seed=_positive_int(obj, "seed", 0, minimum=0),
        cpus=cpus,
        **values,
    )


def error_result(job_id: str | None, kind: str, message: str) -> dict[str, Any]:
    """A result that says the job failed and why; never carries samples."""
    return {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "status": "error",
        "error": {"kind": kind, "message": message},
    }

