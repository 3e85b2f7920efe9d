"""The measuring loop: load, cold first inference, warm-up until stable, timed loop, eval pass.

The stop rule here mirrors ``harness.measure.stability.stop_decision`` (the host-side reference,
which the tests hold this copy to). It lives here too because the runner may not import harness
and the device may have no scipy: the binomial ranks are computed with the standard library. Both
sides take the effective count of independent calls from ``dependence``, which is numpy only.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import cgroup, thermal
from .dependence import effective_sizes, scale_ranks
from .protocol import InputSpec, JobSpec, StopSpec, ThermalSpec, WarmupSpec
from .telemetry import Probes

perf_ns = time.perf_counter_ns


def interval_ranks(n: int, q: float, confidence: float) -> tuple[int, int] | None:
    """1-based ranks (lo, hi) of the equal-tailed order-statistic interval for the q-quantile.

    The binomial CDF is summed in log space over a window of +-12 sigma around n*q; outside it the
    mass is below 1e-30, so the ranks are exact while a check stays O(sqrt(n)).
    """
    if n < 1:
        return None
    tail = (1.0 - confidence) / 2.0
    sigma = math.sqrt(n * q * (1.0 - q))
    k_first = max(0, int(n * q - 12 * sigma - 10))
    k_last = min(n, int(n * q + 12 * sigma + 10))
    log_q, log_p = math.log(q), math.log1p(-q)
    lo, hi = 0, None
    cdf = 0.0
    for k in range(k_first, k_last + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_q + (n - k) * log_p
        cdf += math.exp(log_pmf)
        # lo: largest rank with P(Bin <= lo - 1) <= tail; hi: smallest rank with P(Bin <= hi - 1) >= 1 - tail.
        if cdf <= tail:
            lo = k + 1
        if hi is None and cdf >= 1.0 - tail:
            hi = k + 1
            break
    if lo < 1 or hi is None or hi > n:
        return None
    return lo, hi


def converged(samples: list[int], stop: StopSpec, dependence: bool = True) -> bool:
    """All requested percentiles have an interval whose relative half-width is within target.

    The intervals are for as many independent calls as the samples are worth (``dependence``); with
    ``dependence=False`` they assume independence, a cheaper check (no FFT) the timed loop runs first,
    since bursts only ever widen an interval. Only the few order statistics involved are placed
    (np.partition), not the whole sample sorted.
    """
    n = len(samples)
    data = np.asarray(samples, dtype=np.int64)
    sizes = effective_sizes(data, stop.percentiles) if dependence else tuple(n for _ in stop.percentiles)
    plan = []
    for i, q in enumerate(stop.percentiles):  # indexed, not zip: Python 3.8 has no zip(strict=True)
        n_eff = sizes[i]
        ranks = scale_ranks(interval_ranks(min(n_eff, n), q, stop.confidence), n_eff, n)
        if ranks is None:
            return False
        plan.append((q, ranks))
    # numpy's default quantile interpolates between ranks floor(h) and floor(h) + 1, h = (n - 1) q.
    needed: set[int] = set()
    for q, (lo, hi) in plan:
        h = int((n - 1) * q)
        needed.update((lo - 1, hi - 1, h, min(h + 1, n - 1)))
    placed = np.partition(data, sorted(needed))
    for q, (lo, hi) in plan:
        position = (n - 1) * q
        base = int(position)
        upper = placed[min(base + 1, n - 1)]
        value = float(placed[base] + (position - base) * (upper - placed[base]))
        low, high = float(placed[lo - 1]), float(placed[hi - 1])
        if value <= 0 or (high - low) / 2.0 / value > stop.max_half_width:
            return False
    return True


def time_calls(
    run: Callable[[], None], count: int, append: Callable[[int], None], sampler: thermal.Sampler | None
) -> None:
    """Time ``count`` calls of ``run``, appending each one's nanoseconds; take due readings between calls.

    The one timing loop every measuring loop runs. Per call it costs one integer comparison beyond the
    clock reads; ``sampler`` keeps when its next reading is due (never, without one).
    """
    due = thermal.NEVER_NS if sampler is None else sampler.next_ns
    for _ in range(count):
        t0 = perf_ns()
        run()
        t1 = perf_ns()
        append(t1 - t0)
        if t1 >= due and sampler is not None:
            due = sampler.poll(t1)


def warm_up(run: Callable[[], None], spec: WarmupSpec, sampler: thermal.Sampler | None = None) -> tuple[int, bool]:
    """Run windows until the last ``windows`` window medians agree within tolerance; return (count, stable).

    Capped at ``max_iterations`` calls and, once ``windows`` windows have run, at ``max_duration_s``.
    ``sampler`` takes its readings between calls when they are due (``thermal``).
    """
    medians: list[float] = []
    count = 0
    started = time.monotonic()
    while count < spec.max_iterations:
        window: list[int] = []
        time_calls(run, spec.window, window.append, sampler)
        count += spec.window
        medians.append(float(np.median(window)))
        if count >= spec.min_iterations and len(medians) >= spec.windows:
            last = medians[-spec.windows :]
            if max(last) / min(last) - 1.0 <= spec.tolerance:
                return count, True
        # A warm model on a machine whose speed wanders by more than the tolerance from one window to
        # the next would otherwise warm up to max_iterations: 12 s at 12 ms a call, 50 s at 50 ms.
        if len(medians) >= spec.windows and time.monotonic() - started >= spec.max_duration_s:
            break
    return count, False


def timed_loop(
    run: Callable[[], None], stop: StopSpec, sampler: thermal.Sampler | None = None
) -> tuple[list[int], str, float]:
    """Time ``run`` call by call; return raw samples (ns), why it stopped and the wall time.

    ``sampler`` takes its readings between calls when they are due, never inside a timed one.
    """
    samples: list[int] = []
    started = time.monotonic()
    if stop.iterations is not None:
        time_calls(run, stop.iterations, samples.append, sampler)
        return samples, "fixed_count", time.monotonic() - started
    next_check = stop.min_iterations
    # The effective count costs an FFT per percentile (70 ms each at 3e5 samples). While bursts keep a
    # run from converging it is recomputed only after 19 times its last cost has passed, so these
    # checks take at most 5% of the loop.
    next_dependence_check = 0.0
    while True:
        # min_iterations is a floor the time cap does not cut (MLPerf LoadGen's min_query_count): a slow
        # model's 400 calls may outlast max_duration_s, but fewer would leave its P99 INVALID. The job
        # timeout bounds the floor. Never run past max_iterations: the next check may be far ahead.
        chunk = max(min(next_check, stop.max_iterations) - len(samples), 1)
        time_calls(run, chunk, samples.append, sampler)
        elapsed = time.monotonic() - started
        at_cap = len(samples) >= stop.max_iterations or elapsed >= stop.max_duration_s
        # Convergence is checked before the caps, as the host's stop_decision does: samples that are
        # precise enough when a cap is reached converged, whichever came first. At a cap the effective
        # count is computed whatever its pacing says, since no later check will come.
        due = elapsed >= stop.min_duration_s and (at_cap or elapsed >= next_dependence_check)
        if due and converged(samples, stop, dependence=False):
            if converged(samples, stop):
                return samples, "converged", elapsed
            now = time.monotonic() - started
            next_dependence_check = now + 19.0 * (now - elapsed)
        if len(samples) >= stop.max_iterations:
            return samples, "max_iterations", elapsed
        if elapsed >= stop.max_duration_s:
            return samples, "time_cap", elapsed
        # Check again after ~2% more samples (a check costs well under a millisecond at 1e4 samples, and
        # a coarser step overshoots: at 10% a 4,000-sample run measured up to 400 samples too many), or
        # at the minimum duration if that is further.
        rate = len(samples) / max(elapsed, 1e-9)
        until_min = max(stop.min_duration_s - elapsed, 0.0) * rate
        next_check = len(samples) + max(int(max(len(samples) * 0.02, until_min)), 50)


def preprocess(images: np.ndarray, spec: JobSpec | InputSpec) -> np.ndarray:
    """Pixel images (uint8 0..255 or float in [0, 1]) -> normalised model input of the input dtype."""
    inp = spec.input if isinstance(spec, JobSpec) else spec
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    channels = x.shape[1] if inp.layout == "NCHW" else x.shape[-1]
    shape = (1, channels, 1, 1) if inp.layout == "NCHW" else (1, 1, 1, channels)
    mean = _per_channel(inp.mean, "mean", channels, inp.layout, x.shape)
    std = _per_channel(inp.std, "std", channels, inp.layout, x.shape)
    normalised: np.ndarray = (x - mean.reshape(shape)) / std.reshape(shape)
    return normalised.astype(inp.dtype)


def _per_channel(
    values: tuple[float, ...], key: str, channels: int, layout: str, images: tuple[int, ...]
) -> np.ndarray:
    """One value per channel: a single value repeated, else exactly one per channel (never resized to fit)."""
    array = np.asarray(values, dtype=np.float32)
    if array.size == 1:
        return np.repeat(array, channels)
    if array.size != channels:
        raise ValueError(
            f"input.{key} has {array.size} values but the images {list(images)} ({layout}) have {channels} "
            f"channel{'' if channels == 1 else 's'}; fix: give one value or one per channel in the catalog's "
            f"input.normalization.{key}"
        )
    return array


def latency_input(path: str, key: str, inp: InputSpec, batch: int) -> np.ndarray:
    """The normalised latency input with ``batch`` rows (the file's rows repeated as needed)."""
    with np.load(path) as data:
        x = preprocess(data[key], inp)
    if batch != len(x):
        x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    return x


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while timing (as timeit does): its pauses are the harness's, not the model's.

    Runtime bindings allocate a few Python objects per call (OpenVINO's infer() returns a dict of
    results), so a collection would otherwise land inside some timed calls and inflate the tail.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Watch:
    """Thermal state and the calibration workload before, during and after a measurement; the timed loop's CPU."""

    def __init__(self, spec: ThermalSpec) -> None:
        self.spec = spec
        self.origin = time.monotonic()
        # Streaming tools print their first record one interval after they start (tegrastats: 500 ms):
        # start them first, so the calibration workload runs while they get going.
        self.probes = Probes(spec.readers)
        self.probes.start()
        self.size = thermal.calibration_size(spec.calibration_ms) if spec.calibration_reps > 0 else 0
        self.calibration_before = thermal.calibrate(self.size, spec.calibration_reps)
        # The "before" reading is the reference for every rise and drop: it must hold the tools' values.
        self.probes.wait_for_first_records(timeout_s=3.0)
        self.before = thermal.reading(self.origin, self.probes)
        # Polled by the loops between calls from here on (the cold first call, warm-up, the timed loop).
        self.sampler = thermal.Sampler(spec.interval_s, self.origin, self.probes)
        self.group = cgroup.locate()
        self.loop: dict[str, Any] = {}

    @contextlib.contextmanager
    def timed_loop(self) -> Iterator[None]:
        """Account the timed loop: its process CPU time and any stalls a control group's CPU quota caused.

        The CPU time covers every thread of this process, so over the loop's wall time it says how many
        CPUs the runtime's threads really had.
        """
        quota_before = cgroup.snapshot(self.group)
        cpu_started, wall_started = time.process_time(), time.monotonic()
        yield
        # The same window for both: the loop's own duration_s leaves out its last convergence check.
        self.loop["loop_cpu_s"] = time.process_time() - cpu_started
        self.loop["loop_wall_s"] = time.monotonic() - wall_started
        if quota_before:
            self.loop["cpu_quota"] = cgroup.throttling(quota_before, cgroup.snapshot(self.group))

    def finish(self) -> dict[str, Any]:
        """Stop sampling, time the calibration again and return the raw record (facts, not conclusions)."""
        self.sampler.close()
        # The runtime's worker threads spin-wait for a while after the last call (ONNX Runtime's
        # allow_spinning, OpenVINO's CPU streams): let them go idle, or the busy loop competes with them
        # and the "after" timing reads as throttling.
        if self.spec.calibration_reps > 0:
            time.sleep(0.25)
        calibration_after = thermal.calibrate(self.size, self.spec.calibration_reps)
        after = thermal.reading(self.origin, self.probes)
        self.probes.stop()
        return {
            "thermal": {
                "interval_s": self.spec.interval_s,
                "before": self.before,
                "during": self.sampler.samples,
                "after": after,
                "readers": [r.label for r in self.spec.readers],
                "reader_records": self.probes.records(),
                "reader_errors": self.probes.errors(),
            },
            "calibration": {
                "iterations": self.size,
                "before_ns": self.calibration_before,
                "after_ns": calibration_after,
            },
            **self.loop,
        }


def measure(session: Any, job: JobSpec, load_ms: float) -> dict[str, Any]:
    """Everything the runner measures for one job, as JSON-ready values plus the eval outputs.

    The thermal record and calibration times go under ``_facts`` (device facts of this run), which
    the command merges into the result's ``facts``.
    """
    session.bind(latency_input(job.latency_file, job.latency_key, job.input, job.batch))
    watch = Watch(job.thermal)
    try:
        t0 = perf_ns()
        session.run_bound()
        t1 = perf_ns()
        first_ms = (t1 - t0) / 1e6
        watch.sampler.poll(t1)
        with no_gc():
            warmup_count, warmup_stable = warm_up(session.run_bound, job.warmup, watch.sampler)
            with watch.timed_loop():
                samples, stop_reason, duration = timed_loop(session.run_bound, job.stop, watch.sampler)
    finally:
        watched = watch.finish()
    outputs: dict[str, np.ndarray] = {}
    for eval_set in job.eval_sets:
        with np.load(eval_set.file) as data:
            images = data[eval_set.key]
        parts = []
        for start in range(0, len(images), job.eval_batch):
            batch = preprocess(images[start : start + job.eval_batch], job)
            parts.append(np.asarray(session.infer(batch), dtype=np.float32).reshape(len(batch), -1))
        outputs[eval_set.name] = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    return {
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup_iterations": warmup_count,
        "warmup_stable": warmup_stable,
        "stop_reason": stop_reason,
        "duration_s": duration,
        "samples_ns": samples,
        "batch": job.batch,
        "_outputs": outputs,
        "_facts": watched,
    }
