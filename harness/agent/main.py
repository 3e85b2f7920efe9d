"""Runner command line: ``run`` a job, ``interleave`` several, ``capacity``, ``probe``, ``hash``, ``version``.

``run`` reads the job spec as JSON from standard input (or ``--job FILE``), writes the eval outputs
to the npz the spec names and prints exactly one JSON result line on standard output. Anything the
runtime prints goes to standard error, so stdout stays parseable. A runner whose host went away
stops by itself (exit code 6).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import sys
import threading
import time
import traceback
from typing import Any

from . import PROTOCOL_VERSION, facts, runtimes, telemetry, thermal
from .protocol import (
    SpecError,
    VariantSpec,
    error_result,
    parse_capacity,
    parse_interleave,
    parse_job,
    parse_thermal,
)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _write_npz_atomic(path: str, arrays: dict[str, Any]) -> str:
    import numpy as np

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return _sha256(path)


def run_job(raw: Any) -> int:
    """Run one job spec; print its result; return the process exit code."""
    job_id: str | None = raw.get("job_id") if isinstance(raw, dict) else None
    try:
        job = parse_job(raw)
    except SpecError as exc:
        _emit(error_result(job_id, "spec", str(exc)))
        return 3
    for path in [job.artifact, job.latency_file] + [e.file for e in job.eval_sets]:
        if not os.path.exists(path):
            _emit(error_result(job.job_id, "missing_file", f"{path} does not exist on the device"))
            return 3
    try:
        module = runtimes.load(job.runtime)
    except runtimes.UnknownRuntime as exc:
        _emit(error_result(job.job_id, "unknown_runtime", str(exc)))
        return 3
    try:
        module.available()
    except ImportError as exc:
        _emit(error_result(job.job_id, "runtime_missing", f"runtime {job.runtime!r} is not installed: {exc}"))
        return 4
    from .loop import measure

    try:
        placement = thermal.apply_affinity(job.cpus)
    except OSError as exc:
        _emit(error_result(job.job_id, "spec", f"cannot pin the runner to CPUs {list(job.cpus or ())}: {exc}"))
        return 3
    try:
        t0 = time.perf_counter_ns()
        session = module.open_session(job.artifact, job.input.name, job.options)
        load_ms = (time.perf_counter_ns() - t0) / 1e6
        measured = measure(session, job, load_ms)
    except runtimes.RuntimeMissing as exc:
        _emit(error_result(job.job_id, "runtime_missing", str(exc)))
        return 4
    except Exception as exc:  # the runtime's own errors are many and untyped: report, don't crash
        traceback.print_exc(file=sys.stderr)
        _emit(error_result(job.job_id, "runtime_error", f"{type(exc).__name__}: {exc}"))
        return 5
    outputs = measured.pop("_outputs")
    run_facts = measured.pop("_facts")
    outputs_sha = _write_npz_atomic(job.outputs_file, outputs)
    result: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job.job_id,
        "status": "ok",
        "runtime": session.describe(),
        "facts": {**facts.collect(), **placement, **run_facts},
        **measured,
        "outputs": job.outputs_file,
        "outputs_keys": sorted(outputs),
        "outputs_sha256": outputs_sha,
    }
    _emit(result)
    return 0


def _check_variants(job_id: str, variants: list[VariantSpec]) -> tuple[int, dict[str, Any] | None]:
    """(exit code, error result) when a variant's files or runtime are missing; (0, None) when all are ready."""
    for v in variants:
        for path in (v.artifact, v.latency_file):
            if not os.path.exists(path):
                return 3, error_result(job_id, "missing_file", f"{path} does not exist on the device")
        try:
            runtimes.load(v.runtime).available()
        except runtimes.UnknownRuntime as exc:
            return 3, error_result(job_id, "unknown_runtime", str(exc))
        except ImportError as exc:
            return 4, error_result(job_id, "runtime_missing", f"runtime {v.runtime!r} is not installed: {exc}")
    return 0, None


def _open(variant: VariantSpec) -> Any:
    return runtimes.load(variant.runtime).open_session(variant.artifact, variant.input.name, variant.options)


def run_interleaved(raw: Any) -> int:
    """Run several variants in randomised interleaved rounds in this one process; print per-variant samples."""
    job_id: str | None = raw.get("job_id") if isinstance(raw, dict) else None
    try:
        spec = parse_interleave(raw)
    except SpecError as exc:
        _emit(error_result(job_id, "spec", str(exc)))
        return 3
    code, error = _check_variants(spec.job_id, list(spec.variants))
    if error is not None:
        _emit(error)
        return code
    from .interleave import interleave

    try:
        placement = thermal.apply_affinity(spec.cpus)
        sessions = []
        for v in spec.variants:
            t0 = time.perf_counter_ns()
            sessions.append((_open(v), (time.perf_counter_ns() - t0) / 1e6))
        measured = interleave(sessions, spec)
    except Exception as exc:  # the runtime's own errors are many and untyped: report, don't crash
        traceback.print_exc(file=sys.stderr)
        _emit(error_result(spec.job_id, "runtime_error", f"{type(exc).__name__}: {exc}"))
        return 5
    run_facts = measured.pop("_facts")
    _emit(
        {
            "protocol": PROTOCOL_VERSION,
            "job_id": spec.job_id,
            "status": "ok",
            "facts": {**facts.collect(), **placement, **run_facts},
            **measured,
        }
    )
    return 0


def run_capacity(raw: Any) -> int:
    """Raise concurrent streams at each frame rate until the tail latency passes the frame interval."""
    job_id: str | None = raw.get("job_id") if isinstance(raw, dict) else None
    try:
        spec = parse_capacity(raw)
    except SpecError as exc:
        _emit(error_result(job_id, "spec", str(exc)))
        return 3
    code, error = _check_variants(spec.job_id, [spec.variant])
    if error is not None:
        _emit(error)
        return code
    from .capacity import capacity

    try:
        placement = thermal.apply_affinity(spec.cpus)
        measured = capacity(lambda: _open(spec.variant), spec)
    except Exception as exc:  # the runtime's own errors are many and untyped: report, don't crash
        traceback.print_exc(file=sys.stderr)
        _emit(error_result(spec.job_id, "runtime_error", f"{type(exc).__name__}: {exc}"))
        return 5
    _emit(
        {
            "protocol": PROTOCOL_VERSION,
            "job_id": spec.job_id,
            "status": "ok",
            "facts": {**facts.collect(), **placement},
            **measured,
        }
    )
    return 0


def _telemetry_now(readers: Any, wait_s: float = 2.0) -> dict[str, Any]:
    """One reading of the platform profile's readers (streaming tools get ``wait_s`` for a first record)."""
    spec = parse_thermal({"readers": readers}, "readers")
    probes = telemetry.Probes(spec.readers)
    probes.start()
    try:
        probes.wait_for_first_records(wait_s)
        reading = probes.read({})
    finally:
        probes.stop()
    return {**reading, "telemetry_errors": probes.errors()}


def _read_spec(rest: list[str]) -> Any:
    if rest[:1] == ["--job"] and len(rest) == 2:
        with open(rest[1], encoding="utf-8") as f:
            return json.load(f)
    return json.load(sys.stdin)


_SPEC_COMMANDS = {"run": run_job, "interleave": run_interleaved, "capacity": run_capacity}
EXIT_ORPHANED = 6


def _stdout_closed() -> bool:
    """Whether nobody reads our standard output any more (a pipe whose reader exited reports POLLERR)."""
    poll = getattr(select, "poll", None)
    if poll is None:
        return False
    try:
        poller = poll()
        # Only error and hang-up: poll reports them whatever the mask, and a healthy pipe reports nothing.
        poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def exit_with_parent(interval_s: float = 1.0) -> None:
    """Stop this runner within ``interval_s`` once the host that started it is gone.

    A host killed mid-run (a CI job cancelled, a lost SSH connection) cannot stop its runner, which
    would go on timing for up to its time cap and then run the eval pass, loading the device as a
    competing load for whatever is measured next. Two signs, polled (the same on Linux and macOS): the
    parent exited, so this process was re-parented; or the pipe the result would go to lost its
    reader, which also covers a runner behind a shell or ``timeout`` that outlives the host.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if (parent > 1 and os.getppid() != parent) or _stdout_closed():
                try:
                    sys.stderr.write("agent: the host that started this run is gone; stopping\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass  # stderr went with the host (EPIPE): exiting is all that is left to do
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="edgebench-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: agent {run|interleave|capacity [--job FILE] | probe | hash FILE... | version}\n")
        return 2
    command, rest = argv[0], argv[1:]
    if command == "version":
        _emit({"protocol": PROTOCOL_VERSION})
        return 0
    if command == "probe":
        found = facts.collect()
        if rest[:1] == ["--readers"] and len(rest) == 2:
            try:
                found.update(_telemetry_now(json.loads(rest[1])))
            except (ValueError, SpecError) as exc:
                _emit(error_result(None, "spec", f"probe --readers: {exc}"))
                return 3
        _emit({"protocol": PROTOCOL_VERSION, "facts": found, "runtimes": runtimes.probe()})
        return 0
    if command == "hash":
        _emit({p: (_sha256(p) if os.path.isfile(p) else None) for p in rest})
        return 0
    if command in _SPEC_COMMANDS:
        exit_with_parent()
        try:
            raw = _read_spec(rest)
        except (OSError, ValueError) as exc:
            _emit(error_result(None, "spec", f"cannot read the job spec: {exc}"))
            return 3
        return _SPEC_COMMANDS[command](raw)
    sys.stderr.write(f"agent: unknown command {command!r}; use run, interleave, capacity, probe, hash or version\n")
    return 2
