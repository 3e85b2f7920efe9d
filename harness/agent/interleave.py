"""Several variants timed in one process, in rounds of blocks whose order is shuffled every round.

Google Benchmark's random interleaving: whatever drifts during a run (clocks, temperature, a
neighbour's load) lands on every variant alike instead of on whichever ran last. On the reference
machine two copies of one model timed this way agree within 0.1-0.3%, where separate processes
scatter by a CV of about 2.7% (starting measurements, docs/measurements.md). Each block starts with
a few untimed calls so one variant's warm caches or still-spinning worker threads are not charged to
the next.

The runner only times; whether the variants can share a process at all (the A/A self-check) is
judged on the host from these samples.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from .loop import Watch, converged, latency_input, no_gc, perf_ns, time_calls, warm_up
from .protocol import InterleaveSpec, StopSpec
from .thermal import Sampler


def rounds(
    runs: Sequence[Callable[[], None]],
    stop: StopSpec,
    block: int,
    block_warmup: int,
    seed: int,
    sampler: Sampler | None = None,
) -> tuple[list[list[int]], str, int, float]:
    """Time every run in shuffled rounds until all converge or a cap hits; (samples, reason, rounds, seconds).

    ``sampler`` takes its readings between calls when they are due, never inside a timed one.
    """
    rng = random.Random(seed)
    samples: list[list[int]] = [[] for _ in runs]
    order = list(range(len(runs)))
    started = time.monotonic()
    target = stop.iterations
    next_check = stop.min_iterations
    count = 0
    while True:
        rng.shuffle(order)
        for i in order:
            run, out = runs[i], samples[i]
            size = block if target is None else min(block, target - len(out))
            if size <= 0:
                continue
            for _ in range(block_warmup):
                run()
            time_calls(run, size, out.append, sampler)
        count += 1
        n = min(len(s) for s in samples)
        elapsed = time.monotonic() - started
        if target is not None:
            if n >= target:
                return samples, "fixed_count", count, elapsed
            continue
        # min_iterations is a floor the time cap does not cut, as in timed_loop: fewer calls would leave
        # a slow variant's P99 INVALID. The job timeout bounds the floor.
        timed_out = elapsed >= stop.max_duration_s and n >= stop.min_iterations
        at_cap = n >= stop.max_iterations or timed_out
        # Convergence before the caps (as in timed_loop): precise enough at the cap is converged.
        if (at_cap or n >= next_check) and n >= stop.min_iterations and elapsed >= stop.min_duration_s:
            if all(converged(s, stop) for s in samples):
                return samples, "converged", count, elapsed
            next_check = n + max(n // 10, block)
        if n >= stop.max_iterations:
            return samples, "max_iterations", count, elapsed
        if timed_out:
            return samples, "time_cap", count, elapsed


def interleave(sessions: Sequence[tuple[Any, float]], spec: InterleaveSpec) -> dict[str, Any]:
    """Bind, cold-start and warm every (session, load_ms), then time them in interleaved rounds."""
    # Indexed loops, not zip: the runner supports Python 3.8, which has no zip(strict=True).
    variants: list[dict[str, Any]] = []
    for i, v in enumerate(spec.variants):
        session, load_ms = sessions[i]
        session.bind(latency_input(v.latency_file, v.latency_key, v.input, spec.batch))
        variants.append({"name": v.name, "runtime": session.describe(), "load_ms": load_ms})
    watch = Watch(spec.thermal)
    try:
        for i, record in enumerate(variants):
            session = sessions[i][0]
            t0 = perf_ns()
            session.run_bound()
            t1 = perf_ns()
            record["first_inference_ms"] = (t1 - t0) / 1e6
            watch.sampler.poll(t1)
            warmed = warm_up(session.run_bound, spec.warmup, watch.sampler)
            record["warmup_iterations"], record["warmup_stable"] = warmed
        runs = [session.run_bound for session, _ in sessions]
        with no_gc(), watch.timed_loop():
            samples, reason, count, duration = rounds(
                runs, spec.stop, spec.block, spec.block_warmup, spec.seed, watch.sampler
            )
    finally:
        watched = watch.finish()
    for i, record in enumerate(variants):
        record["samples_ns"] = samples[i]
    return {
        "stop_reason": reason,
        "rounds": count,
        "block": spec.block,
        "seed": spec.seed,
        "duration_s": duration,
        "batch": spec.batch,
        "variants": variants,
        "_facts": watched,
    }
