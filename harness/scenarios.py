"""Scenarios beyond one job: interleaved variants with an A/A self-check, and stream capacity.

Both run over a Pipeline's device links and reuse its compile and deploy steps; the runner does the
timing (``interleave`` and ``capacity`` commands) and sends raw samples back; every conclusion is
drawn here with the same statistics as a single job.

Interleaving and the A/A self-check. Variants of one device run in one runner process, in rounds of
blocks shuffled every round, so drift lands on all of them alike. But variants sharing a process can
disturb each other: two OpenVINO CPU compiled models of the same IR in one process measured 1.95x
apart in 3 of 8 trials on the reference machine (starting measurements, docs/measurements.md). So
every interleaved run carries an A/A copy of its first variant (the same artifact loaded again as
another variant). When the copy's P50 is not within 1% of the original's, the in-process numbers
are not trusted: the harness falls back to separate runner processes in alternating order
(A B ... B A), pools each variant's samples, and records ``interleave_mode: separate_processes``
with the failed ``aa_check`` beside the results, so a reader sees both that the fallback happened
and why.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analyse import cpu_parallelism, provenance_metrics, stability_metrics
from .errors import CapabilityMissing, ConfigError, RunnerError, ToolchainMissing
from .measure.stats import LatencySummary, summarize
from .measure.throttle import assess_runs, throttle_metrics
from .pipeline import DeviceLink, Pipeline, now
from .records import Job, JobResult

__all__ = [
    "AA_TOLERANCE",
    "CapacityAnswer",
    "CapacityStep",
    "InterleaveGroup",
    "InterleaveOutcome",
    "aa_check",
    "buildable",
    "capacity_answer",
    "interleave_groups",
    "process_facts",
    "run_capacity",
    "run_interleaved",
]

AA_TOLERANCE = 0.01  # an A/A pair must agree within 1% on P50 (issue [measure])
AA_SUFFIX = "#aa"


# ---- pure maths ---------------------------------------------------------------------------------
def aa_check(original_ns: Sequence[int] | np.ndarray, copy_ns: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """P50 ratio of an A/A pair (copy / original) and whether it is within ``AA_TOLERANCE``."""
    ratio = float(np.median(copy_ns)) / float(np.median(original_ns))
    return {"ratio": ratio, "ok": abs(ratio - 1.0) <= AA_TOLERANCE, "tolerance": AA_TOLERANCE}


@dataclass(frozen=True)
class CapacityStep:
    """One load level of the capacity search: its tail latency against the frame interval."""

    streams: int
    fps: float
    n: int
    p99_ms: float | None
    p99_ci_ms: tuple[float, float] | None
    valid: bool
    overloaded: bool
    passed: bool

    def row(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "fps": self.fps,
            "n": self.n,
            "p99_ms": self.p99_ms,
            "p99_ci_ms": list(self.p99_ci_ms) if self.p99_ci_ms else None,
            "valid": self.valid,
            "overloaded": self.overloaded,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class CapacityAnswer:
    """Streams per device at one frame rate: the most streams whose P99 stays within 1000/fps ms."""

    fps: float
    budget_ms: float
    streams: int
    capped: bool  # every step passed up to the search's max_streams: the device serves at least this many
    steps: tuple[CapacityStep, ...]


def capacity_answer(fps: float, steps: Sequence[dict[str, Any]], max_streams: int) -> CapacityAnswer:
    """Judge every step from its raw samples; the answer is the largest passing count below the first failure."""
    budget_ms = 1000.0 / fps
    judged: list[CapacityStep] = []
    for step in sorted(steps, key=lambda s: int(s["streams"])):
        samples = np.asarray(step["samples_ns"], dtype=np.int64)
        summary = summarize(samples) if samples.size else None
        p99 = summary.p99 if summary else None
        overloaded = bool(step.get("overloaded"))
        # An INVALID P99 (too few frames for an interval) decides nothing, so it cannot pass a step.
        passed = p99 is not None and p99.valid and not overloaded and p99.value_ms <= budget_ms
        ci = (p99.ci_low_ms, p99.ci_high_ms) if p99 and p99.ci_low_ms is not None and p99.ci_high_ms else None
        judged.append(
            CapacityStep(
                streams=int(step["streams"]),
                fps=fps,
                n=int(samples.size),
                p99_ms=p99.value_ms if p99 else None,
                p99_ci_ms=ci,
                valid=bool(p99 and p99.valid),
                overloaded=overloaded,
                passed=passed,
            )
        )
    first_fail = min((s.streams for s in judged if not s.passed), default=None)
    passing = [s.streams for s in judged if s.passed and (first_fail is None or s.streams < first_fail)]
    streams = max(passing, default=0)
    return CapacityAnswer(fps, budget_ms, streams, first_fail is None and streams >= max_streams, tuple(judged))


def process_facts(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The facts of a variant timed in several runner processes, in the shape a repeated job records:
    the first process's, with the others' under ``repeat_facts`` (what ``assess_runs`` judges)."""
    first, *more = runs
    return {**first, "repeat_facts": list(more)} if more else dict(first)


def fps_key(fps: float) -> str:
    """The flat-record field for a frame rate: 30 -> streams_at_30fps."""
    return f"streams_at_{fps:g}fps"


# ---- device plumbing ----------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A job's artifact and latency data deployed on its device, as a runner variant spec."""

    job: Job
    spec: dict[str, Any]
    model_sha256: str
    artifact_sha256: str


def _prepare(pipeline: Pipeline, job: Job, link: DeviceLink, name: str) -> _Prepared:
    deployed = pipeline.deploy_model(job, link)
    spec = {"name": name, **deployed.spec}
    return _Prepared(job, spec, deployed.onnx.source_sha256, deployed.artifact_sha256)


class _Runner:
    """Calls the runner on one device: setup commands, CPU pinning through taskset when the device has it."""

    def __init__(self, pipeline: Pipeline, job: Job) -> None:
        self.device = job.device
        self.link = pipeline.links[self.device.name]
        self.link.open(pipeline.agent_bundle())
        self.cpus = pipeline.cpus_for(job.device)
        self._taskset: bool | None = None

    def prefix(self) -> list[str]:
        """``taskset -c LIST`` when pinning was asked for and the device has taskset (else the runner pins itself)."""
        if not self.cpus:
            return []
        assert self.link.transport is not None
        if self._taskset is None:
            found = self.link.transport.run(
                ["sh", "-c", "command -v taskset"],
                timeout_s=30,
                env=self.device.env,
                timeout_fix="look for a device shell that hangs at start-up (looking up taskset may take 30 s)",
            )
            self._taskset = found.exit_code == 0 and bool(found.stdout.strip())
        return ["taskset", "-c", ",".join(map(str, self.cpus))] if self._taskset else []

    def call(self, command: str, spec: dict[str, Any]) -> dict[str, Any]:
        transport, agent = self.link.transport, self.link.agent_path
        assert transport is not None and agent is not None
        self.link.run_setup()
        reply = transport.run(
            [*self.prefix(), self.device.python_path, agent, command],
            timeout_s=self.device.job_timeout_s,
            stdin=json.dumps(spec).encode(),
            env=self.device.env,
        )
        raw = reply.json_reply()
        if raw is None or reply.exit_code != 0 or raw.get("status") != "ok":
            error = (raw or {}).get("error", {}) if isinstance(raw, dict) else {}
            if error.get("kind") == "runtime_missing":
                raise CapabilityMissing(f"device {self.device.name!r}: {error.get('message')}")
            raise RunnerError(
                error.get("message") or "gave no result",
                device=self.device.name,
                command_exit=reply.exit_code,
                stderr=reply.stderr_text,
            )
        return raw


def _timing(pipeline: Pipeline, job: Job) -> dict[str, Any]:
    spec = pipeline.timing_spec(job.device)
    out = {k: spec[k] for k in ("stop", "warmup", "thermal", "batch")}
    if "cpus" in spec:
        out["cpus"] = spec["cpus"]
    return out


def _record(pipeline: Pipeline, result: JobResult) -> JobResult:
    pipeline.results_store().add_result(result)
    pipeline.results.append(result)
    if pipeline.on_result:
        pipeline.on_result(result)
    return result


def _result(
    pipeline: Pipeline,
    prepared: _Prepared,
    kind: str,
    started: str,
    message: str,
    facts: dict[str, Any],
    metrics: dict[str, Any],
    runtime: str,
    latency: LatencySummary | None = None,
    samples: np.ndarray | None = None,
) -> JobResult:
    job = prepared.job
    return JobResult(
        run_id=pipeline.run_id,
        job_id=job.id,
        kind=kind,
        model=job.model.name,
        model_sha256=prepared.model_sha256,
        artifact_sha256=prepared.artifact_sha256,
        device=job.device.name,
        platform=job.device.platform,
        backend=job.variant.backend,
        runtime=runtime,
        precision=job.variant.precision,
        input_shape=job.input_shape,
        threads=job.variant.threads,
        status="passed",
        message=message,
        started_at=started,
        finished_at=now(),
        latency=latency,
        samples_ns=samples,
        facts=facts,
        metrics=metrics,
    )


# ---- interleaving -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InterleaveGroup:
    """Every latency variant of one model on one device, in plan order: what one interleaved comparison runs."""

    model: str
    device: str
    jobs: tuple[Job, ...]

    @property
    def id(self) -> str:
        return f"{self.model}@{self.device}"


def interleave_groups(jobs: Iterable[Job]) -> list[InterleaveGroup]:
    """The jobs grouped by (model, device), groups in order of their first job."""
    grouped: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        grouped.setdefault((job.model.name, job.device.name), []).append(job)
    return [InterleaveGroup(model, device, tuple(members)) for (model, device), members in grouped.items()]


def buildable(pipeline: Pipeline, jobs: Sequence[Job]) -> tuple[list[Job], dict[str, str]]:
    """The jobs this host can build (compiled now, cached for the run) and, by job id, why the others cannot.

    A variant whose toolchain or calibration set is missing does not stop the others from being compared.
    """
    ready: list[Job] = []
    unbuilt: dict[str, str] = {}
    for job in jobs:
        try:
            pipeline.compile(job)
        except (CapabilityMissing, ToolchainMissing) as exc:
            unbuilt[job.id] = exc.one_line()
            continue
        ready.append(job)
    return ready, unbuilt


@dataclass(frozen=True)
class InterleaveOutcome:
    """Per-variant results of one interleaved comparison, how they were obtained, and the A/A check."""

    mode: str  # in_process | separate_processes
    aa: dict[str, Any] | None
    results: tuple[JobResult, ...]

    def by_job(self) -> dict[str, JobResult]:
        return {r.job_id: r for r in self.results}


def run_interleaved(
    pipeline: Pipeline,
    jobs: Sequence[Job],
    *,
    aa: bool = True,
    block: int = 25,
    seed: int | None = None,
    fallback_processes: int = 2,
) -> InterleaveOutcome:
    """Time several variants on one device in shuffled interleaved rounds, with an A/A self-check.

    Records one ``interleaved`` result per variant. When the A/A pair disagrees by more than 1% on
    P50, falls back to ``fallback_processes`` separate runner processes per variant in alternating
    order and records those (see the module docstring).
    """
    if not jobs:
        raise ConfigError("nothing to interleave", fix="pass at least one job")
    devices = {j.device.name for j in jobs}
    if len(devices) != 1:
        raise ConfigError(f"interleaved variants must share one device; got {sorted(devices)}")
    if len({j.id for j in jobs}) != len(jobs):
        raise ConfigError("interleaved variants must differ", fix="pass each job once")
    started = now()
    runner = _Runner(pipeline, jobs[0])
    prepared = [_prepare(pipeline, j, runner.link, j.id) for j in jobs]
    variants = [p.spec for p in prepared]
    if aa:
        variants.append({**prepared[0].spec, "name": jobs[0].id + AA_SUFFIX})
    seed = random.randrange(1 << 31) if seed is None else seed
    spec = {
        "protocol": 1,
        "job_id": "interleave:" + ",".join(j.id for j in jobs),
        "variants": variants,
        "block": block,
        "seed": seed,
        **_timing(pipeline, jobs[0]),
    }
    raw = runner.call("interleave", spec)
    by_name = {v["name"]: v for v in raw["variants"]}
    check = None
    if aa:
        check = aa_check(by_name[jobs[0].id]["samples_ns"], by_name[jobs[0].id + AA_SUFFIX]["samples_ns"])
    if check is None or check["ok"]:
        samples = {j.id: [np.asarray(by_name[j.id]["samples_ns"], dtype=np.int64)] for j in jobs}
        reasons = {j.id: [str(raw["stop_reason"])] for j in jobs}
        facts = {j.id: [raw["facts"]] for j in jobs}  # one loop timed every variant
        mode = "in_process"
    else:
        samples, reasons, facts = _separate_processes(pipeline, runner, prepared, seed, fallback_processes)
        mode = "separate_processes"
    results = []
    others = [j.id for j in jobs]
    for p in prepared:
        pooled = np.concatenate(samples[p.job.id])
        summary = summarize(pooled)
        # Every process that timed this variant is judged, as a repeated job's runs are (assess_runs):
        # one throttled or contended process makes the pooled result so. Its facts are the first
        # process's, the others' kept beside them as a repeated job keeps them.
        own = facts[p.job.id]
        judged = process_facts(own)
        attempt = assess_runs(judged, pipeline.settings.throttle)
        stops = reasons[p.job.id]
        metrics: dict[str, Any] = {
            "interleave_mode": mode,
            "aa_check": check,
            "interleaved_with": [o for o in others if o != p.job.id],
            "processes": len(samples[p.job.id]),
            "process_p50_ms": [float(np.median(s)) / 1e6 for s in samples[p.job.id]],
            # The process that did not converge, if any: as for a repeated job, the weakest one.
            "stop_reason": next((r for r in stops if r != "converged"), "converged"),
            "process_stop_reasons": stops,
            "rounds": raw["rounds"] if mode == "in_process" else None,
            "seed": seed,
            "warmup_iterations": by_name[p.job.id]["warmup_iterations"],
        }
        parallelism = cpu_parallelism(own)
        if parallelism is not None:
            metrics["cpu_parallelism"] = parallelism
        metrics.update(stability_metrics(pooled, summary))
        runtime = by_name[p.job.id]["runtime"]
        metrics.update(provenance_metrics(p.job.variant, runtime, own[0], metrics))
        if check is not None and not check["ok"]:
            metrics["unstable"] = True
            metrics["unstable_reasons"] = [
                *metrics.get("unstable_reasons", []),
                f"A/A self-check failed in one process (P50 ratio {check['ratio']:.3f}); "
                "measured in separate processes instead",
            ]
        metrics.update(throttle_metrics(metrics, [attempt]))
        message = f"P50 {summary.p50.value_ms:.3f} ms, P99 {summary.p99.value_ms:.3f} ms over {summary.n} ({mode})"
        result = _result(
            pipeline,
            p,
            "interleaved",
            started,
            message,
            {**judged, "runtime": runtime},
            metrics,
            str(runtime.get("runtime", p.job.variant.backend)),
            summary,
            pooled,
        )
        results.append(_record(pipeline, result))
    return InterleaveOutcome(mode, check, tuple(results))


def _separate_processes(
    pipeline: Pipeline, runner: _Runner, prepared: Sequence[_Prepared], seed: int, processes: int
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Each variant alone in a fresh runner process, in alternating order (A B C, C B A, ...).

    Returns each variant's samples, stop reasons and facts, one per process, in the order timed.
    """
    samples: dict[str, list[np.ndarray]] = {p.job.id: [] for p in prepared}
    reasons: dict[str, list[str]] = {p.job.id: [] for p in prepared}
    facts: dict[str, list[dict[str, Any]]] = {p.job.id: [] for p in prepared}
    for i in range(processes):
        order = list(prepared) if i % 2 == 0 else list(reversed(prepared))
        for p in order:
            spec = {"protocol": 1, "job_id": p.job.id, "variants": [p.spec], "seed": seed, **_timing(pipeline, p.job)}
            raw = runner.call("interleave", spec)
            samples[p.job.id].append(np.asarray(raw["variants"][0]["samples_ns"], dtype=np.int64))
            reasons[p.job.id].append(str(raw["stop_reason"]))
            facts[p.job.id].append(raw["facts"])
    return samples, reasons, facts


# ---- capacity -----------------------------------------------------------------------------------
def run_capacity(
    pipeline: Pipeline,
    job: Job,
    *,
    fps: Sequence[float] = (30.0, 60.0),
    max_streams: int = 64,
    seed: int = 0,
    min_samples: int = 400,
    min_step_s: float = 2.0,
    max_step_s: float = 20.0,
) -> tuple[JobResult, tuple[CapacityAnswer, ...]]:
    """Streams per device at each frame rate for one model variant; records a ``capacity`` result.

    Each step runs until about ``min_samples`` frames (400: a VALID P99 needs 368), at least
    ``min_step_s`` and at most ``max_step_s`` seconds after a short ramp.
    """
    if not fps or min(fps) <= 0:
        raise ConfigError(f"frame rates must be positive, got {list(fps)}", key="--fps", fix="e.g. --fps 30,60")
    if max_streams < 1:
        raise ConfigError(f"max_streams must be >= 1, got {max_streams}", key="--max-streams")
    started = now()
    runner = _Runner(pipeline, job)
    prepared = _prepare(pipeline, job, runner.link, job.id)
    spec: dict[str, Any] = {
        "protocol": 1,
        "job_id": job.id,
        "variant": prepared.spec,
        "fps": [float(f) for f in fps],
        "max_streams": max_streams,
        "seed": seed,
        "min_samples": min_samples,
        "min_step_s": min_step_s,
        "max_step_s": max_step_s,
    }
    cpus = pipeline.cpus_for(job.device)
    if cpus is not None:
        spec["cpus"] = list(cpus)
    raw = runner.call("capacity", spec)
    answers = tuple(capacity_answer(s["fps"], s["steps"], max_streams) for s in raw["searches"])
    metrics: dict[str, Any] = {"capacity_fps": [a.fps for a in answers], "max_streams": max_streams}
    for a in answers:
        metrics[fps_key(a.fps)] = a.streams
        metrics[fps_key(a.fps) + "_capped"] = a.capped
    metrics["capacity_steps"] = [s.row() for a in answers for s in a.steps]
    message = ", ".join(f"{'>=' if a.capped else ''}{a.streams} streams at {a.fps:g} FPS" for a in answers)
    runtime = raw.get("runtime") or {}
    result = _result(
        pipeline,
        prepared,
        "capacity",
        started,
        message,
        {**raw["facts"], "runtime": runtime},
        metrics,
        str(runtime.get("runtime", job.variant.backend)),
    )
    return _record(pipeline, result), answers
