"""The capacity scenario: how many streams at F frames per second one device serves.

Each stream is a thread with its own session and its own copy of the input, calling the runtime at
its frame times (a random phase per stream, as unsynchronised cameras are). A frame's latency runs
from the moment it is due to the moment its result is back, so a stream that falls behind carries
its queueing delay into the tail. The stream count doubles until a step's P99 passes the frame
interval (1000/F ms), then bisects between the last pass and the first fail.

The pass/fail decision here only steers the search (as the stop rule steers the timed loop); the
host recomputes every step's percentile and the answer from the raw samples.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .loop import interval_ranks, latency_input, perf_ns, warm_up
from .protocol import CapacitySpec, WarmupSpec

_MAX_LAG_NS = 2_000_000_000  # a stream this far behind its frames has failed the step; stop feeding it
_STREAM_WARMUP = WarmupSpec(window=10, windows=3, tolerance=0.05, min_iterations=10, max_iterations=200)


def _stream(
    run: Callable[[], None], first_due: int, period: float, ramp_end: int, end: int, out: list[tuple[int, int]]
) -> None:
    """Run frames at their due times until ``end``; record (due, due -> done) for frames due after the ramp."""
    k = 0
    while True:
        due = first_due + int(k * period)
        if due >= end:
            return
        now = perf_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
        elif now - due > _MAX_LAG_NS:
            out.append((due, -1))  # marks an overloaded stream: the host fails the step
            return
        run()
        if due >= ramp_end:
            out.append((due, perf_ns() - due))
        k += 1


@functools.lru_cache(maxsize=None)  # noqa: UP033 - functools.cache is Python 3.9+, the runner supports 3.8
def valid_floor(q: float, confidence: float = 0.95) -> int:
    """The fewest samples that give the q-quantile an order-statistic interval (368 for P99): VALID.

    The host's ``min_samples_for_interval``, found here by search (the runner imports nothing from
    harness); cached, since every step of a search asks for the same one."""
    n = 1
    while interval_ranks(n, q, confidence) is None:
        n += 1
    return n


def step(runs: list[Callable[[], None]], fps: float, spec: CapacitySpec, rng: random.Random) -> dict[str, Any]:
    """One load level: len(runs) streams at fps for long enough to expect ``min_samples`` frames.

    ``max_step_s`` caps that, but never below the frames a VALID percentile needs (one more per
    stream, as a random phase may cost one): a step judged on an INVALID P99 would decide nothing.
    """
    n = len(runs)
    period = 1e9 / fps
    floor = valid_floor(spec.percentile)
    floor_s = (math.ceil(floor / n) + 1) / fps
    measure_s = max(min(max(spec.min_step_s, spec.min_samples / (n * fps)), spec.max_step_s), floor_s)
    start = perf_ns() + 50_000_000  # every thread is started before the first frame is due
    ramp_end = start + int(spec.ramp_s * 1e9)
    end = ramp_end + int(measure_s * 1e9)
    outs: list[list[tuple[int, int]]] = [[] for _ in runs]
    threads = [
        threading.Thread(
            target=_stream, args=(run, start + int(rng.random() * period), period, ramp_end, end, outs[i]), daemon=True
        )
        for i, run in enumerate(runs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    overloaded = any(out and out[-1][1] < 0 for out in outs)
    # In the order the frames were due, across streams: the host's effective count reads the samples
    # as a time series, and one slow stream pooled as a block would look like a long burst.
    samples = [latency for _, latency in sorted(frame for out in outs for frame in out if frame[1] >= 0)]
    tail = float(np.quantile(samples, spec.percentile)) if samples else float("inf")
    return {
        "streams": n,
        "fps": fps,
        "measure_s": measure_s,
        "overloaded": overloaded,
        "samples_ns": samples,
        "passed": len(samples) >= floor and not overloaded and tail <= period,
    }


def capacity(open_session: Callable[[], Any], spec: CapacitySpec) -> dict[str, Any]:
    """For each frame rate: double the streams until a step fails, bisect, and return every step's samples."""
    x = latency_input(spec.variant.latency_file, spec.variant.latency_key, spec.variant.input, 1)
    sessions: list[Any] = []
    load_ms: list[float] = []

    def runs(n: int) -> list[Callable[[], None]]:
        while len(sessions) < n:
            t0 = perf_ns()
            session = open_session()
            load_ms.append((perf_ns() - t0) / 1e6)
            session.bind(np.array(x, copy=True))
            warm_up(session.run_bound, _STREAM_WARMUP)
            sessions.append(session)
        return [s.run_bound for s in sessions[:n]]

    rng = random.Random(spec.seed)
    searches: list[dict[str, Any]] = []
    for fps in spec.fps:
        steps: dict[int, dict[str, Any]] = {}

        def passes(n: int, fps: float = fps, steps: dict[int, dict[str, Any]] = steps) -> bool:
            if n not in steps:
                steps[n] = step(runs(n), fps, spec, rng)
            return bool(steps[n]["passed"])

        passed, failed = 0, None
        n = 1
        while True:
            if not passes(n):
                failed = n
                break
            passed = n
            if n >= spec.max_streams:
                break
            n = min(2 * n, spec.max_streams)
        while failed is not None and failed - passed > 1:
            mid = (passed + failed) // 2
            if passes(mid):
                passed = mid
            else:
                failed = mid
        searches.append({"fps": fps, "steps": [steps[k] for k in sorted(steps)]})
    describe = sessions[0].describe() if sessions else {}
    return {"runtime": describe, "load_ms": load_ms, "searches": searches}
