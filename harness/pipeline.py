"""One run, as data: plan jobs, then build -> deploy -> execute -> analyse -> record each one.

Both front ends drive this class: ``edgebench run`` loops over the plan, the pytest plugin makes one
test per job. The device sends back raw samples, outputs and facts; every conclusion is drawn here,
on the host, with the same maths for every backend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .analyse import (
    corruption_keys,
    cpu_parallelism,
    history_metrics,
    latency_checks,
    parity_checks,
    production_checks,
    provenance_metrics,
    robustness_checks,
)
from .build.agent_bundle import build_agent_bundle
from .build.backends import BACKENDS, get_backend
from .build.backends.edgetpu import compile_report
from .build.backends.protocol import CompileRequest
from .build.cache import ArtifactCache, file_sha256
from .build.data import DataFile, calibration_inputs, corrupted_eval_file, eval_file, latency_file
from .build.export import OnnxModel, reference_onnx
from .catalog import ModelEntry
from .config import line_in
from .deploy import Deployable, DeviceCache
from .errors import (
    CapabilityMissing,
    CommandTimeout,
    ConfigError,
    DeviceOffline,
    DeviceRefused,
    EdgebenchError,
    RunnerError,
    SetupFailed,
    StoreError,
    ToolchainMissing,
    TransportError,
    UnknownNameError,
)
from .lab.connect import open_transport
from .lab.inventory import Device, Lab
from .lab.platforms import PlatformProfile, load_platform
from .measure.repeats import MIN_REPEATS, between_runs, check_repeats
from .measure.stats import REPORTED_PERCENTILES, LatencySummary, summarize
from .measure.throttle import ThrottleLimits, ThrottleVerdict, assess_runs, throttle_metrics
from .plan import plan_variants
from .records import Job, JobResult, Status, Variant
from .references import host_reference
from .store import RunInfo, Store
from .transport.protocol import Transport
from .zoo.datasets import load_dataset

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 60.0  # each device setup: command's hard limit (job_timeout_s is the runner's)


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how carefully the runner measures (sent in every job spec)."""

    min_iterations: int = 400
    min_duration_s: float = 1.0
    max_duration_s: float = 8.0
    max_half_width: float = 0.05
    iterations: int | None = None  # a fixed count instead of the adaptive stop rule
    warmup_window: int = 20
    warmup_max_iterations: int = 1000
    warmup_max_duration_s: float = 3.0  # warm-up time cap, once three windows have run
    eval_batch: int = 32
    thermal_interval_s: float = 0.5  # clocks/temperatures sampled during the loop; 0 = off
    calibration_reps: int = 7  # calibration workload repetitions before and after; 0 = off
    throttle: ThrottleLimits = field(default_factory=ThrottleLimits)
    throttle_retries: int = 2  # a throttled latency job is cooled down and run again this many times
    cooldown_s: float = 5.0
    cpus: tuple[int, ...] | None = None  # pin the runner to these CPU ids
    batch: int = 1  # rows of the latency input per timed call
    repeats: int = 1  # runner processes per latency job; 3 or more give a between-run interval
    stop_on: tuple[str, ...] = ("p50", "p95", "p99")  # the percentiles the stop rule pins down

    def spec(self) -> dict[str, Any]:
        stop: dict[str, Any] = {
            "min_iterations": self.min_iterations,
            "min_duration_s": self.min_duration_s,
            "max_duration_s": self.max_duration_s,
            "max_half_width": self.max_half_width,
            "percentiles": [REPORTED_PERCENTILES[label] for label in self.stop_on],
        }
        if self.iterations is not None:
            stop = {"iterations": self.iterations}
        spec: dict[str, Any] = {
            "stop": stop,
            "warmup": {
                "window": self.warmup_window,
                "max_iterations": self.warmup_max_iterations,
                "max_duration_s": self.warmup_max_duration_s,
            },
            "eval_batch": self.eval_batch,
            "thermal": {"interval_s": self.thermal_interval_s, "calibration_reps": self.calibration_reps},
            "batch": self.batch,
        }
        return spec


# The flags both front ends offer, as MeasureSettings fields.
MEASURE_FLAGS = {
    "min_duration_s": "--min-duration",
    "max_duration_s": "--max-duration",
    "max_half_width": "--half-width",
    "batch": "--batch",
    "repeats": "--repeats",
    "stop_on": "--stop-on",
}


# Float settings that must be finite: an infinite cap never stops, a NaN compares false with every bound.
_FINITE_FIELDS = {
    "min_duration_s": "1.0",
    "max_duration_s": "8.0 (the time cap must be finite)",
    "max_half_width": "0.05",
    "thermal_interval_s": "0.5 (0 turns sampling off)",
    "warmup_max_duration_s": "3.0",
    "cooldown_s": "5.0",
}


def backends_flag(text: str | None, flag: str = "--backends") -> set[str] | None:
    """``--backends``'s comma-separated names, checked against the registry before any run starts."""
    if text is None:
        return None
    names = {b.strip() for b in text.split(",") if b.strip()}
    if not names:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"no backend named in {text!r}", key=flag, fix=f"use one or more of: {known}")
    for name in sorted(names - set(BACKENDS)):
        raise UnknownNameError("backend", name, list(BACKENDS), key=flag)
    return names


def stop_on_flag(text: str | None) -> tuple[str, ...] | None:
    """``--stop-on``'s comma-separated labels ("P99", "p50,p99"), as measure_settings takes them."""
    if text is None:
        return None
    return tuple(label.strip() for label in text.split(",") if label.strip())


def measure_settings(lab: Lab, *, quick: bool = False, **flags: Any) -> MeasureSettings:
    """The run's settings: the defaults, then the lab's ``measure:`` block, then ``--quick``, then flags.

    ``flags`` are MeasureSettings fields given on the command line (None: not given). A duration
    window the result cannot satisfy is an error naming where its ends came from.
    """
    settings = replace(MeasureSettings(), **lab.measure.overrides())
    if quick:
        # A quick run still reports a throttled or contended job as unstable, but never sleeps to cool down.
        settings = replace(settings, min_duration_s=0.5, max_duration_s=5.0, throttle_retries=0)
    given = {k: v for k, v in flags.items() if v is not None}
    settings = replace(settings, **given)
    if "min_duration_s" not in given and lab.measure.min_duration_s is None:
        # Only a cap was asked for: the default (or --quick's) minimum gives way to it, not contradicts it.
        settings = replace(settings, min_duration_s=min(settings.min_duration_s, settings.max_duration_s))

    def origin(name: str) -> tuple[str, Path | None]:
        if name in given:
            return MEASURE_FLAGS.get(name, name), None
        return f"measure.{name}", lab.lab_file

    if settings.iterations is not None:
        _refuse_stop_rule_beside_iterations(lab, settings.iterations, given, origin("iterations"))

    for name, example in _FINITE_FIELDS.items():
        value = getattr(settings, name)
        if not math.isfinite(value):
            key, file = origin(name)
            what = "fraction" if name == "max_half_width" else "number of seconds"
            raise ConfigError(f"{value:g} is not a finite {what}", file=file, key=key, fix=f"use e.g. {example}")
    if settings.min_duration_s < 0 or settings.max_duration_s <= 0:
        key, file = origin("min_duration_s" if settings.min_duration_s < 0 else "max_duration_s")
        raise ConfigError("a duration must be positive", file=file, key=key, fix="use seconds > 0")
    if settings.min_duration_s > settings.max_duration_s:
        # A default minimum gave way above, so the minimum here was set: by flag, or else in the file.
        only_cap = "max_duration_s" in given and "min_duration_s" not in given
        key, file = origin("max_duration_s" if only_cap else "min_duration_s")
        raise ConfigError(
            f"the minimum duration {settings.min_duration_s:g} s is longer than the time cap "
            f"{settings.max_duration_s:g} s",
            file=file,
            key=key,
            fix="raise max_duration_s (--max-duration) to at least min_duration_s (--min-duration)",
        )
    if not 0 < settings.max_half_width < 1:
        key, file = origin("max_half_width")
        raise ConfigError(
            f"half-width {settings.max_half_width:g} is not a fraction", file=file, key=key, fix="use e.g. 0.05 for 5%"
        )
    if settings.batch < 1:
        key, file = origin("batch")
        raise ConfigError(f"batch {settings.batch} is not positive", file=file, key=key, fix="use 1 or more")
    settings = replace(settings, stop_on=tuple(p.lower() for p in settings.stop_on))  # "P99" reads as in reports
    unknown = [p for p in settings.stop_on if p not in REPORTED_PERCENTILES]
    if unknown or not settings.stop_on:
        key, file = origin("stop_on")
        raise ConfigError(
            f"{unknown[0]!r} is not a reported percentile" if unknown else "no percentile to stop on",
            file=file,
            key=key,
            fix=f"use one or more of {', '.join(REPORTED_PERCENTILES)}",
        )
    bad_repeats = check_repeats(settings.repeats)
    if bad_repeats:
        key, file = origin("repeats")
        raise ConfigError(bad_repeats, file=file, key=key, fix=f"use 1 (one run) or {MIN_REPEATS} or more")
    return settings


# What a fixed iteration count replaces: MeasureSettings.spec sends the runner the count alone.
_STOP_RULE_FIELDS = ("min_iterations", "min_duration_s", "max_duration_s", "max_half_width", "stop_on")


def _refuse_stop_rule_beside_iterations(
    lab: Lab, iterations: int, given: dict[str, Any], counted: tuple[str, Path | None]
) -> None:
    """A stop-rule setting beside a fixed count would be ignored without a word: an error naming both."""
    count_key, count_file = counted
    where = f"{count_file}'s {count_key}" if count_file is not None else count_key
    for name in _STOP_RULE_FIELDS:
        if name in given:
            flag = MEASURE_FLAGS.get(name, name)
            raise ConfigError(
                f"{flag} has no effect: {where} is {iterations}, a fixed count of timed calls with no stop rule",
                key=flag,
                fix=f"drop {count_key} to use the stop rule, or drop {flag}",
            )
    for name in _STOP_RULE_FIELDS:
        value = getattr(lab.measure, name)
        if value is not None:
            line = line_in(lab.lab_file, ("measure", name))
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(
                f"{shown} has no effect beside {count_key}: {iterations} (a fixed count of timed calls has no "
                "stop rule)",
                file=lab.lab_file,
                line=line,
                key=f"measure.{name}",
                fix=f"drop {count_key} to use the stop rule, or drop measure.{name}",
            )


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def git_sha(directory: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass(frozen=True)
class DeployedModel:
    """A job's model on its device: the FP32 reference it came from, device paths, the spec's model part."""

    onnx: OnnxModel
    artifact: Path
    artifact_sha256: str
    paths: dict[str, str]
    spec: dict[str, Any]


@dataclass
class DeviceLink:
    """A device's transport and file cache, opened on first use and reused by all its jobs."""

    device: Device
    state: str = "unknown"  # unknown | healthy | offline | failed | refused
    reason: str = ""
    transport: Transport | None = None
    cache: DeviceCache | None = None
    agent_path: str | None = None
    root: str = ""

    def open(self, agent_bundle: tuple[Path, str]) -> None:
        if self.state == "refused":
            raise DeviceRefused(f"earlier in this run: {self.reason}", device=self.device.name)
        if self.state in ("offline", "failed"):
            raise DeviceOffline(f"earlier in this run: {self.reason}", device=self.device.name)
        if self.transport is not None:
            return
        try:
            self.transport = open_transport(self.device)
            home = self.transport.home()
            root = self.device.cache_dir
            self.root = home + root[1:] if root.startswith("~") else root
            self.cache = DeviceCache(self.transport, self.device.python_path, self.root + "/files", env=self.device.env)
            bundle, sha = agent_bundle
            runner = Deployable(bundle, sha, "pyz")
            # Once per connection: keep the device cache within its size and age limits (LRU by mtime;
            # files in use are touched by every check, so they stay).
            evicted = self.cache.evict(
                max_bytes=self.device.cache_max_mb << 20,
                max_age_s=self.device.cache_max_age_days * 86400,
                keep=[runner.name],
            )
            if evicted:
                log.info("device %s: evicted %d old cache file(s)", self.device.name, len(evicted))
            paths = self.cache.ensure([runner])
            self.agent_path = paths[sha]
            self.state = "healthy"
        except TransportError as exc:
            # Only a device that cannot be reached is skipped. A refused login (host key, authentication)
            # stays an error for every job on the device: a changed key may be a man-in-the-middle, and
            # skipping it would let the lab pass without it. A device reached but broken (its python:
            # does not start, its cache cannot be written, a command timed out) is failed: this job is an
            # error, so the run is too, and its later jobs skip with the reason (see record_error).
            if isinstance(exc, DeviceOffline):
                self.state = "offline"
            elif isinstance(exc, DeviceRefused):
                self.state = "refused"
            else:
                self.state = "failed"
            self.reason = self._strip(exc.one_line())
            self.close()
            raise

    def run_setup(self) -> None:
        """Run the device's ``setup:`` commands before a runner starts; one that fails or hangs raises SetupFailed.

        A job timed without its setup (clocks not pinned, a governor not set) would be recorded as if
        it had been applied: ``device_setup_sha256`` says it was.
        """
        assert self.transport is not None
        device = self.device
        for index, command in enumerate(device.setup):
            where = f"setup[{index}] {command!r}"
            try:
                done = self.transport.run(["sh", "-c", command], timeout_s=SETUP_TIMEOUT_S, env=device.env)
            except CommandTimeout as exc:
                # The transport's own fix names job_timeout_s, which does not govern a setup command.
                raise SetupFailed(
                    f"{where} did not finish within the {SETUP_TIMEOUT_S:g} s a setup command may take "
                    f"({self._strip(exc.message)}); the job was not measured",
                    device=device.name,
                    fix="make it finish sooner (start a long task in the background, or run it once before "
                    "the run), or remove it from the device's setup: in the lab file",
                ) from None
            if done.exit_code != 0:
                output = done.stderr_text.strip() or done.stdout.decode("utf-8", errors="replace").strip()
                tail = output.splitlines()[-3:]
                detail = ": " + " | ".join(tail) if tail else " with no output"
                raise SetupFailed(
                    f"{where} exited {done.exit_code}{detail}; the job was not measured",
                    device=device.name,
                    fix="make the command succeed when run on the device without a terminal (sudo -n needs a "
                    "NOPASSWD sudoers entry), or remove it from the device's setup: in the lab file",
                )

    def remove_outputs(self, run_id: str) -> None:
        """Delete this run's output files on the device (they were fetched and checked already)."""
        if self.transport is None:
            return
        script = (
            "import glob, os, sys\n"
            "for p in glob.glob(os.path.join(sys.argv[1], sys.argv[2] + '-*.npz')):\n"
            "    os.remove(p)\n"
        )
        try:
            self.transport.run(
                [self.device.python_path, "-c", script, f"{self.root}/out", run_id],
                timeout_s=30,
                env=self.device.env,
                timeout_fix="look for a slow or failing disk on the device (removing outputs may take 30 s)",
            )
        except TransportError as exc:
            log.warning("device %s: could not remove this run's outputs: %s", self.device.name, exc.message)

    def _strip(self, text: str) -> str:
        return text.removeprefix(f"device {self.device.name!r}: ")

    def mark_failed(self, reason: str) -> None:
        self.state, self.reason = "failed", self._strip(reason)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            finally:
                self.transport = None


@dataclass
class Pipeline:
    """A run over one lab and a catalog: plans jobs, runs them, records results."""

    lab: Lab
    models: Sequence[ModelEntry]
    # Or ``open_store``, called at the first need: a front end plans first and opens (so creates) the
    # results database only once there is a job, so an input that plans nothing leaves none behind.
    store: Store | None = None
    open_store: Callable[[], Store] | None = None
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    artifacts: ArtifactCache = field(default_factory=ArtifactCache)
    project_dir: Path = field(default_factory=Path.cwd)
    command: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    on_result: Callable[[JobResult], None] | None = None
    catalog: Sequence[ModelEntry] = ()  # every catalog model, to find a candidate's production model
    backends: set[str] | None = None  # only these backends (None: every one the platform runs)
    native_size_only: bool = False  # only the catalog's own input shape, not its extra input_sizes

    def __post_init__(self) -> None:
        self.links = {d.name: DeviceLink(d) for d in self.lab.devices}
        self.started_at = now()
        self.results: list[JobResult] = []
        self._done: dict[tuple[str, str], JobResult] = {}
        self._outputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._bundle: tuple[Path, str] | None = None
        self._profiles: dict[str, PlatformProfile] = {}
        self._tmp: Path | None = None
        self.started = False  # the run is recorded at its first job: planning alone leaves no run behind
        self._finished = False

    def start(self) -> None:
        """Record the run as running (once; every job calls this first)."""
        if self.started:
            return
        self.started_at = now()
        self.results_store().start_run(
            RunInfo(
                id=self.run_id,
                started_at=self.started_at,
                host=platform.node(),
                harness_version=__version__,
                git_sha=git_sha(self.project_dir),
                lab_name=self.lab.name,
                lab_file=str(self.lab.lab_file) if self.lab.lab_file else None,
                command=self.command,
            )
        )
        self.started = True

    def results_store(self) -> Store:
        """The store results go to, opened now if it is not yet (a front end calls this to check ``--db`` early)."""
        if self.store is None and self.open_store is not None:
            self.store = self.open_store()
        if self.store is None:
            raise RuntimeError("Pipeline has neither store nor open_store: it has nowhere to record results")
        return self.store

    @property
    def _workdir(self) -> Path:
        """Where fetched outputs land for a moment; made at first use, removed by finish()."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="edgebench-"))
        return self._tmp

    # ---- plan -------------------------------------------------------------------------------
    def variants_for(self, model: ModelEntry, device: Device) -> list[Variant]:
        """The variants of a model a device runs: its platform profile x the catalog's input sizes."""
        variants = plan_variants(model, device, self.profile(device), backends=self.backends)
        if self.native_size_only:
            variants = [v for v in variants if v.size is None]
        return variants

    def plan(self, kinds: Iterable[str] = ("latency",)) -> list[Job]:
        """Jobs per kind, model and device; FP32 variants first so on-device references exist."""
        jobs: list[Job] = []
        for kind in kinds:
            for model in self.models:
                if kind == "robustness" and not has_labels(model):
                    continue  # accuracy under corruption needs labelled eval data
                for device in self.lab.devices:
                    variants = sorted(self.variants_for(model, device), key=lambda v: v.precision != "fp32")
                    jobs.extend(Job(model, v, device, kind) for v in variants)
        return jobs

    def profile(self, device: Device) -> PlatformProfile:
        """The device's platform profile, read and validated once per run."""
        if device.platform not in self._profiles:
            self._profiles[device.platform] = load_platform(device.platform)
        return self._profiles[device.platform]

    def cpus_for(self, device: Device) -> tuple[int, ...] | None:
        """The CPUs a device's runner is pinned to: the device's own ``cpus``, else the run's setting."""
        return device.cpus if device.cpus is not None else self.settings.cpus

    def timing_spec(self, device: Device) -> dict[str, Any]:
        """The spec's measurement part for a device: settings plus its platform profile's telemetry readers."""
        spec = self.settings.spec()
        cpus = self.cpus_for(device)
        if cpus is not None:
            spec["cpus"] = list(cpus)
        readers = self.profile(device).telemetry.readers()
        spec["thermal"] = {**spec["thermal"], "readers": [r.spec() for r in readers]}
        return spec

    # ---- build ------------------------------------------------------------------------------
    def agent_bundle(self) -> tuple[Path, str]:
        if self._bundle is None:
            self._bundle = build_agent_bundle()
        return self._bundle

    def reference(self, job: Job) -> OnnxModel:
        return reference_onnx(job.model, size=job.variant.size, cache=self.artifacts)

    def compile(self, job: Job) -> tuple[Path, str]:
        """The variant's artifact (cached by source hash and build options) and its sha256."""
        backend = get_backend(job.variant.backend)
        onnx = self.reference(job)
        calibration = None
        calibration_id = None
        if job.variant.precision in backend.needs_calibration:
            calibration = calibration_inputs(job.model, job.input_shape)
            if calibration is None:
                raise CapabilityMissing(
                    f"{job.variant.id} needs a calibration set but {job.model.name} has none; "
                    f"add calibration: to {job.model.catalog_file}"
                )
            calibration_id = _array_sha(calibration)
        parts = {
            "onnx": onnx.sha256,
            "backend": backend.name,
            "recipe": backend.recipe,
            "precision": job.variant.precision,
            # Run-time options (OpenVINO streams, ONNX Runtime threads) do not change what is built.
            "options": {k: v for k, v in job.variant.options if k in backend.build_options},
            "calibration": calibration_id,
        }

        def build(tmp: Path) -> Path:
            return backend.compile(
                CompileRequest(
                    onnx=onnx,
                    precision=job.variant.precision,
                    out_dir=tmp,
                    options=dict(job.variant.options),
                    calibration=calibration,
                    calibration_id=calibration_id,
                )
            )

        path, built = self.artifacts.get_or_build(f"{backend.name}-{job.variant.precision}", parts, build)
        if built:
            log.info("compiled %s -> %s", job.id, path)
        return path, _artifact_sha(path)

    # ---- execute ----------------------------------------------------------------------------
    def result_for(self, job: Job) -> JobResult:
        """The job's result, run now unless this run already has it (suites share latency jobs)."""
        key = (job.id, job.kind)
        if key not in self._done:
            self.run_job(job)
        return self._done[key]

    def run_job(self, job: Job) -> JobResult:
        """Run one job end to end and record its result (also on error: status says what happened)."""
        self.start()
        started = now()
        base = self._base_result(job, started)
        try:
            result = self._execute_cooled(job, started)
        except (CapabilityMissing, ToolchainMissing) as exc:
            result = replace(base, status="skipped", message=exc.one_line(), finished_at=now())
        except DeviceOffline as exc:
            result = replace(base, status="skipped", message=exc.one_line(), finished_at=now())
        except EdgebenchError as exc:
            return self.record_error(job, exc, started=started)
        return self._record(result)

    def record_error(
        self, job: Job, exc: EdgebenchError, *, kind: str | None = None, started: str | None = None
    ) -> JobResult:
        """Record ``job`` (as ``kind``, default its own) as an ``error`` result, so the run ends in error.

        run_job's path, and the one for the front ends' scenarios (an interleaved group that raised):
        a device that broke mid-run is marked failed, so its later jobs skip instead of waiting for the
        same timeout; a refused login stays refused (every later job errors too).
        """
        self.start()
        self.note_broken(job.device, exc)
        base = self._base_result(job if kind is None else replace(job, kind=kind), started or now())
        return self._record(replace(base, status="error", message=exc.one_line(), finished_at=now()))

    def note_broken(self, device: Device, exc: EdgebenchError) -> None:
        """A device that broke (reached, but a command failed or hung) is failed for the rest of the run.

        Its later jobs and groups then skip with the reason instead of running a failing setup: or
        waiting for the same timeout again; an unreachable device or a refused login keeps its own state.
        """
        if isinstance(exc, TransportError) and not isinstance(exc, DeviceOffline | DeviceRefused):
            self.links[device.name].mark_failed(exc.message)

    def _record(self, result: JobResult) -> JobResult:
        self.results_store().add_result(result)
        self.results.append(result)
        self._done[(result.job_id, result.kind)] = result
        if self.on_result:
            self.on_result(result)
        return result

    def _execute_cooled(self, job: Job, started: str) -> JobResult:
        """Execute; cool down and retry a throttled latency job; mark a throttled or contended result unstable."""
        attempts: list[ThrottleVerdict] = []
        while True:
            result = self._execute(job, started)
            attempts.append(assess_runs(result.facts, self.settings.throttle))
            last = attempts[-1]
            if job.kind != "latency" or not last.throttled or len(attempts) > self.settings.throttle_retries:
                metrics = {**result.metrics, **throttle_metrics(result.metrics, attempts), "batch": self.settings.batch}
                why = [*last.reasons, *last.contended]
                # Only a latency job's numbers depend on a quiet machine; robustness counts answers.
                message = f"{result.message} (unstable: {why[0]})" if why and job.kind == "latency" else result.message
                result = replace(result, metrics=metrics, message=message)
                return replace(result, metrics={**metrics, **self._against_history(job, result)})
            reasons = "; ".join(last.reasons)
            log.warning("%s: %s; cooling down %g s, then retrying", job.id, reasons, self.settings.cooldown_s)
            time.sleep(self.settings.cooldown_s)
            started = now()

    def _against_history(self, job: Job, result: JobResult) -> dict[str, Any]:
        """The same artifact's earlier runs on this device, from the results database (``history_metrics``)."""
        if job.kind != "latency" or result.latency is None or not result.latency.valid or not result.artifact_sha256:
            return {}
        try:
            earlier = self.results_store().job_history(job.id, result.artifact_sha256)
        except StoreError as exc:  # a comparison that cannot be made must not cost the run
            log.warning("%s: no comparison with earlier runs: %s", job.id, exc.one_line())
            return {}
        return history_metrics(result.flat(), earlier)

    def _base_result(self, job: Job, started: str) -> JobResult:
        return JobResult(
            run_id=self.run_id,
            job_id=job.id,
            kind=job.kind,
            model=job.model.name,
            model_sha256="",
            artifact_sha256=None,
            device=job.device.name,
            platform=job.device.platform,
            backend=job.variant.backend,
            runtime=job.variant.backend,
            precision=job.variant.precision,
            input_shape=job.input_shape,
            threads=job.variant.threads,
            status="error",
            message="",
            started_at=started,
            finished_at=started,
        )

    def deploy_model(self, job: Job, link: DeviceLink, extra: Sequence[Deployable] = ()) -> DeployedModel:
        """Build the job's artifact and latency input, put them (and ``extra``) on the device; the spec's model part.

        Shared by single jobs and the interleaving and capacity scenarios, so every path deploys alike.
        """
        backend = get_backend(job.variant.backend)
        device = job.device
        if device.runtimes is not None and backend.runtime not in device.runtimes:
            raise CapabilityMissing(
                f"device {device.name!r} has no {backend.runtime} (it lists {', '.join(device.runtimes) or 'none'})"
            )
        onnx = self.reference(job)
        artifact, artifact_sha = self.compile(job)
        latency_data = latency_file(job.model, job.input_shape)
        link.open(self.agent_bundle())
        # Built and reachable: the interleaving and capacity scenarios record results from here, without run_job.
        self.start()
        assert link.cache is not None
        suffix = artifact.name.split(".", 1)[1] if "." in artifact.name else "bin"
        paths = link.cache.ensure(
            [
                Deployable(artifact, artifact_sha, suffix),
                Deployable(latency_data.path, latency_data.sha256, "npz"),
                *extra,
            ]
        )
        spec = {
            "runtime": backend.runtime,
            "artifact": paths[artifact_sha],
            "input": {
                "name": onnx.input_name,
                "shape": list(job.input_shape),
                "dtype": job.model.input.dtype,
                "layout": job.model.input.layout,
                "mean": list(job.model.input.normalization.mean),
                "std": list(job.model.input.normalization.std),
            },
            "latency": {"file": paths[latency_data.sha256], "key": "latency"},
            "options": backend.runner_options(job.variant.precision, job.variant.threads, dict(job.variant.options)),
        }
        return DeployedModel(onnx, artifact, artifact_sha, paths, spec)

    def _execute(self, job: Job, started: str) -> JobResult:
        if job.kind == "robustness":
            eval_data = corrupted_eval_file(job.model, job.input_shape)
            if eval_data.labels is None:
                raise CapabilityMissing(
                    f"{job.model.name}'s eval set {job.model.eval.dataset!r} has no labels; robustness needs them"
                )
            keys = ["clean", *corruption_keys()]
            timing: dict[str, Any] = {"stop": {"iterations": 20}, "warmup": {"window": 5, "max_iterations": 20}}
        else:
            eval_data = eval_file(job.model, job.input_shape)
            keys = ["clean"]
            timing = {}
        device = job.device
        link = self.links[device.name]
        deployed = self.deploy_model(job, link, [Deployable(eval_data.path, eval_data.sha256, "npz")])
        onnx, artifact_sha = deployed.onnx, deployed.artifact_sha256
        assert link.transport is not None and link.agent_path is not None
        eval_sets = [{"name": k, "file": deployed.paths[eval_data.sha256], "key": k} for k in keys]
        outputs_remote = f"{link.root}/out/{self.run_id}-{_slug(job.id + job.kind)}.npz"
        spec = {
            "protocol": 1,
            "job_id": job.id,
            **deployed.spec,
            "eval": eval_sets,
            "outputs": outputs_remote,
            **self.timing_spec(device),
            **timing,
        }
        link.run_setup()
        raw = self._run_runner(link, spec)
        # Repeats are further runner processes timing the same artifact; the eval pass ran in the first.
        repeats = self.settings.repeats if job.kind == "latency" else 1
        more = [
            self._run_runner(link, {**spec, "eval": [], "outputs": outputs_remote.removesuffix(".npz") + f"-r{i}.npz"})
            for i in range(2, repeats + 1)
        ]
        local_outputs = self._workdir / f"{_slug(job.id + job.kind)}.npz"
        link.transport.get(raw["outputs"], local_outputs)
        if file_sha256(local_outputs) != raw["outputs_sha256"]:
            raise RunnerError("outputs file changed in transfer (sha256 mismatch)", device=device.name)
        with np.load(local_outputs) as npz:
            outputs = {k: npz[k] for k in npz.files}
        local_outputs.unlink()
        if job.kind == "latency":
            self._outputs[(job.id, job.kind)] = outputs
        result = self._analyse(job, started, onnx, artifact_sha, [raw, *more], outputs, eval_data)
        report = compile_report(deployed.artifact) if job.variant.backend == "edgetpu" else None
        if report is not None:
            # How much of the model the Edge TPU compiler mapped: the rest runs on the board's CPU.
            result = replace(result, metrics={**result.metrics, "edgetpu_compile": report})
        return result

    def _run_runner(self, link: DeviceLink, spec: dict[str, Any]) -> dict[str, Any]:
        """One runner process on the device for ``spec``; its reply, or the error it reported."""
        device = link.device
        assert link.transport is not None and link.agent_path is not None
        reply = link.transport.run(
            [device.python_path, link.agent_path, "run"],
            timeout_s=device.job_timeout_s,
            stdin=json.dumps(spec).encode(),
            env=device.env,
        )
        raw = reply.json_reply()
        if raw is None or reply.exit_code != 0 or raw.get("status") != "ok":
            error = (raw or {}).get("error", {})
            if error.get("kind") == "runtime_missing":
                raise CapabilityMissing(f"device {device.name!r}: {error.get('message')}")
            message = error.get("message") or "gave no result"
            raise RunnerError(message, device=device.name, command_exit=reply.exit_code, stderr=reply.stderr_text)
        return raw

    # ---- analyse ----------------------------------------------------------------------------
    def _analyse(
        self,
        job: Job,
        started: str,
        onnx: OnnxModel,
        artifact_sha: str,
        raws: Sequence[dict[str, Any]],
        outputs: dict[str, np.ndarray],
        eval_data: DataFile,
    ) -> JobResult:
        """Statistics, checks and the result record; ``raws`` are the job's runner replies, one per repeat.

        With repeats, the percentiles are the runs' mean with a between-run interval
        (``harness.measure.repeats``), stability is judged run by run, and the first run (the one with
        the eval pass) gives the cold-start, warm-up and device facts.
        """
        raw = raws[0]
        per_run = [np.asarray(r["samples_ns"], dtype=np.int64) for r in raws]
        samples = np.concatenate(per_run)
        repeated = between_runs([summarize(s) for s in per_run], samples) if len(raws) > 1 else None
        summary = repeated.summary if repeated else summarize(samples)
        budgets = job.model.budgets
        stop_reasons = [str(r["stop_reason"]) for r in raws]
        metrics: dict[str, Any] = {
            # The run that did not converge, if any: one run at its time cap is the job's weakest link.
            "stop_reason": next((r for r in stop_reasons if r != "converged"), "converged"),
            "warmup_iterations": raw["warmup_iterations"],
            "warmup_stable": all(bool(r["warmup_stable"]) for r in raws),
            "duration_s": sum(float(r["duration_s"]) for r in raws),
        }
        parallelism = cpu_parallelism([r["facts"] for r in raws])
        if parallelism is not None:
            metrics["cpu_parallelism"] = parallelism
        # What else a later run must share to be compared with this one (analyse.SAME_CONDITIONS): the
        # runner's code (its timing loop) and the device's env: and setup: commands.
        device_setup = json.dumps({"env": job.device.env, "setup": list(job.device.setup)}, sort_keys=True)
        metrics["runner_sha256"] = self.agent_bundle()[1]
        metrics["device_setup_sha256"] = hashlib.sha256(device_setup.encode()).hexdigest()[:16]
        if job.kind == "latency" and self.settings.iterations is None:
            metrics["stop_on"] = list(self.settings.stop_on)  # what "converged" pinned down
        if repeated:
            metrics.update(repeated.metrics(), repeat_stop_reasons=stop_reasons)
        failures: dict[str, tuple[str, ...]] = {}
        keys = sorted(outputs)
        host = host_reference(onnx, job.model, eval_data.path, eval_data.sha256, keys)
        labels = eval_data.labels
        if job.kind == "robustness":
            assert labels is not None
            robust, failures["robustness"] = robustness_checks(outputs, host, labels, budgets)
            metrics.update(robust)
        else:
            runs = list(zip(per_run, repeated.runs, strict=True)) if repeated else []
            stability, failures["latency"] = latency_checks(summary, samples, budgets, runs)
            metrics.update(stability)
            metrics.update(provenance_metrics(job.variant, raw["runtime"], raw["facts"], metrics))
            device_ref = None
            ref_variant = job.variant.reference(job.device.backend_options)
            if ref_variant != job.variant:
                ref_outputs = self._outputs.get((Job(job.model, ref_variant, job.device).id, "latency"))
                device_ref = ref_outputs["clean"] if ref_outputs else None
            parity, failures["parity"] = parity_checks(outputs["clean"], host["clean"], device_ref, labels, budgets)
            metrics.update(parity)
            shadow, failures["production"] = self._production(job, outputs["clean"], labels, summary)
            metrics.update(shadow)
        all_failures = [f for group in failures.values() for f in group]
        status: Status = "failed" if all_failures else "passed"
        if all_failures:
            message = "; ".join(all_failures)
        elif job.kind == "robustness":
            message = f"mCE {metrics['mce']:.3f}, worst corruption {metrics['worst_corruption']}"
        else:
            message = (
                f"P50 {summary.p50.value_ms:.3f} ms, P99 {summary.p99.value_ms:.3f} ms over {summary.n} iterations"
                + (f" in {len(raws)} runs" if repeated else "")
            )
        return JobResult(
            run_id=self.run_id,
            job_id=job.id,
            kind=job.kind,
            model=job.model.name,
            model_sha256=onnx.source_sha256,
            artifact_sha256=artifact_sha,
            device=job.device.name,
            platform=job.device.platform,
            backend=job.variant.backend,
            runtime=str(raw["runtime"].get("runtime", job.variant.backend)),
            precision=job.variant.precision,
            input_shape=job.input_shape,
            threads=job.variant.threads,
            status=status,
            message=message,
            started_at=started,
            finished_at=now(),
            latency=summary,
            samples_ns=samples,
            first_inference_ms=float(raw["first_inference_ms"]),
            load_ms=float(raw["load_ms"]),
            facts={
                **raw["facts"],
                "runtime": raw["runtime"],
                **({"repeat_facts": [r["facts"] for r in raws[1:]]} if repeated else {}),
            },
            metrics=metrics,
            failures=failures,
        )

    def _production(
        self, job: Job, clean: np.ndarray, labels: np.ndarray | None, summary: LatencySummary
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Candidate vs the production model it would replace, same variant on the same device: its
        metrics and the failures of the ``production_*`` budgets."""
        name = job.model.production
        if not name:
            return {}, ()
        production = next((m for m in [*self.catalog, *self.models] if m.name == name), None)
        if production is None:
            raise ConfigError(
                f"production model {name!r} is not in the catalog",
                file=job.model.catalog_file,
                key="production",
                fix="name a model that has a YAML file next to this one",
            )
        prod_job = Job(production, job.variant, job.device, "latency")
        prod_result = self.result_for(prod_job)
        prod_outputs = self._outputs.get((prod_job.id, "latency"))
        if prod_outputs is None or prod_result.latency is None:
            ended = f"cannot be compared with production {name}: its job ended {prod_result.status}"
            unjudged = (f"{ended} ({prod_result.message})",) if job.model.budgets.production_gated else ()
            return {"production_model": name, "production_status": prod_result.status}, unjudged
        if prod_outputs["clean"].shape != clean.shape or production.eval != job.model.eval:
            raise ConfigError(
                f"candidate {job.model.name} and production {name} are not evaluated on the same data",
                file=job.model.catalog_file,
                key="eval",
                fix="give both catalog entries the same eval: and input shape",
            )
        shadow, failures = production_checks(
            clean, prod_outputs["clean"], labels, summary, prod_result.latency, job.model.budgets
        )
        return {"production_model": name, **shadow}, failures

    # ---- finish -----------------------------------------------------------------------------
    def finish(self, outcome: str | None = None) -> str:
        """Mark the run and close devices; return its status.

        The status is ``outcome`` when given (``interrupted``, or ``error`` when the front end met one
        the results do not show), else error, failed or passed from the results, or ``skipped`` when
        every job was skipped. A run that never started a job is not recorded: its status is
        ``not-started``. The run is marked first, so an interrupt during the clean-up cannot leave it
        ``running``.

        Called while an exception is on its way out (a front end marking the run ``error`` or
        ``interrupted``), a failure to mark the run is logged, not raised: the exception that ended
        the run is the one the user must see, and a full disk would fail both writes alike.
        """
        leaving = sys.exc_info()[1]
        statuses = {r.status for r in self.results}
        if outcome is not None:
            status = outcome
        elif "error" in statuses:
            status = "error"
        elif "failed" in statuses:
            status = "failed"
        elif statuses and statuses <= {"skipped"}:
            status = "skipped"
        else:
            status = "passed" if self.started else "not-started"
        try:
            if self.started and not self._finished:
                try:
                    self.results_store().finish_run(self.run_id, now(), status)
                except StoreError as exc:
                    if leaving is None:
                        raise
                    log.error(
                        "run %s could not be marked %s and stays 'running' in the results database: %s",
                        self.run_id,
                        status,
                        exc.one_line(),
                    )
                else:
                    self._finished = True
        finally:
            try:
                for link in self.links.values():
                    link.remove_outputs(self.run_id)
                    link.close()
            finally:
                # The fetched outputs were read into memory job by job; without this every run leaves a tmp dir.
                if self._tmp is not None:
                    shutil.rmtree(self._tmp, ignore_errors=True)
                    self._tmp = None
        return status


def has_labels(model: ModelEntry) -> bool:
    """Whether the model's eval set is labelled (checked on one image)."""
    channels, height, width = model.input.shape[1:]
    sample = load_dataset(model.eval.dataset, count=1, seed=model.eval.seed, shape=(channels, height, width))
    return sample.labels is not None


def _slug(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:16]


def _array_sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _artifact_sha(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    raise EdgebenchError(f"artifact {path} is not a single file; directory artifacts must be archived first")


def empty_plan(
    pipeline: Pipeline,
    kinds: Sequence[str],
    *,
    backends_flag: str = "--backends",
) -> ConfigError:
    """Why the plan has no job, naming the filter that emptied it (``backends_flag``: how the command spells it)."""
    lab = pipeline.lab
    where = f"lab {lab.name!r}" + (f" ({lab.lab_file})" if lab.lab_file else "")
    if "latency" not in kinds and not any(has_labels(m) for m in pipeline.models):
        names = ", ".join(m.name for m in pipeline.models)
        return ConfigError(
            f"robustness needs a labelled eval set and no chosen model has one ({names})",
            key="--kinds",
            fix="add latency to --kinds, or choose a model with labels (--models)",
        )
    unfiltered = {
        v.backend
        for m in pipeline.models
        for d in lab.devices
        for v in plan_variants(m, d, pipeline.profile(d), backends=None)
    }
    if pipeline.backends is not None and not unfiltered & pipeline.backends:
        asked = ", ".join(sorted(pipeline.backends))
        runs = ", ".join(sorted(unfiltered)) or "none"
        return ConfigError(
            f"no device of {where} runs {asked}, so no job was planned",
            key=backends_flag,
            fix=f"use backends its devices run: {runs}",
        )
    if not unfiltered:
        return ConfigError(
            f"no device of {where} runs any backend of its platform, so no job was planned",
            key="runtimes",
            fix="check each device's platform: and runtimes: in the lab file (edgebench devices check --lab FILE)",
        )
    # Every model plans its catalog shape and every device here runs a backend: nothing else empties a plan.
    return ConfigError(f"no job was planned on {where}", key="--models", fix="check --models and the lab's devices")
