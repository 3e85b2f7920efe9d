"""Clocks, temperatures and contention around a timed loop, and the calibration workload.

The sampler reads the thermal zones, the CPU clocks and the CPU time other processes used every
``interval_s`` while warm-up and the timed loop run, between two calls: the loop polls it after each
call it times, so no reading ever lands inside a timed call. It used to run on a thread of its own.
On the 2-CPU reference VM a reading takes about 0.6 ms of CPU, and a wake-up every 0.5 s then fell
inside about 2.5% of MobileNetV2-style's 12 ms calls: those calls ran 0.8 ms slower in the median
and 5 times as often above P99; in paired blocks a P99 within 5% needed a median of 1,100-1,250
calls with the thread against 490-875 without it.
A call longer than the interval gets one reading after it, so the readings' ``t_s`` show the gaps.

The calibration workload is the AndroidX benchmark library's throttle check: a fixed busy loop timed
before warm-up and again after the timed loop. The same work taking longer afterwards means the CPU
got slower (throttled clocks) or busier (another process), whatever the sensors say; many boards
expose no cpufreq or thermal zone at all (this project's reference machine among them).
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from .telemetry import Probes

perf_ns = time.perf_counter_ns
# A due time no perf_counter_ns value reaches (about 146 years): the sampler is off.
NEVER_NS = 1 << 62
# Clock ticks per CPU a CPU-share window needs: 0.25 s at the usual 100 Hz. /proc/stat sums every CPU's
# tick counters and each CPU's count is off by up to about a tick in a window, so a share is off by about
# one over the ticks per CPU, whatever the CPU count: the window needs a length of wall time, not a total
# of ticks. The fixed total of 50 this replaces was 0.25 s on 2 CPUs but 8 ms on 64 (rounding read as load).
MIN_TICKS_PER_CPU = 25


class CpuTicks(NamedTuple):
    """One look at /proc: the whole machine's busy and total CPU time, this process's CPU time (clock ticks)."""

    machine_busy: int
    machine_total: int
    own: int


class CpuShareWindow:
    """Other processes' share of all CPUs' time between successive /proc readings; no I/O of its own.

    /proc counts in clock ticks (10 ms at the usual 100 Hz): a window of a few ticks per CPU reads 0% or
    100% by rounding alone (a 20-iteration robustness loop read "other processes used 100%"), so a window
    shorter than ``MIN_TICKS_PER_CPU`` ticks per CPU gives no share and stays open for the next reading.
    """

    def __init__(self, cpus: int, start: CpuTicks | None) -> None:
        self.cpus = max(cpus, 1)
        self.start = start

    def share(self, now: CpuTicks | None) -> float | None:
        """The share (0..1) since the window opened, which then closes; None while it is too short."""
        start = self.start
        if now is None or start is None:  # no /proc here, or none when the window opened
            self.start = now
            return None
        total = now.machine_total - start.machine_total
        if total < MIN_TICKS_PER_CPU * self.cpus:
            return None  # keep the window open: the next reading covers this stretch too
        self.start = now
        foreign = (now.machine_busy - start.machine_busy) - (now.own - start.own)
        return round(min(max(foreign / total, 0.0), 1.0), 3)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user and nice)
    values = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
    idle = values[3] + values[4]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy, busy + idle


def _own_jiffies() -> int | None:
    """CPU time (user + system, all threads) this process used, in clock ticks."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def _cpu_ticks() -> CpuTicks | None:
    machine, own = _cpu_jiffies(), _own_jiffies()
    if machine is None or own is None:
        return None
    return CpuTicks(machine[0], machine[1], own)


def reading(origin: float, probes: Probes | None = None) -> dict[str, Any]:
    """One snapshot: seconds since ``origin`` (a time.monotonic value), temperatures, clocks, power.

    ``probes`` are the platform profile's readers (see ``telemetry``); without them, the built-in
    Linux thermal zones and cpufreq files.
    """
    out: dict[str, Any] = {"t_s": round(time.monotonic() - origin, 3)}
    return (probes or Probes(())).read(out)


class Sampler:
    """Reads clocks, temperatures and other processes' CPU share every ``interval_s``, when polled between calls."""

    def __init__(self, interval_s: float, origin: float, probes: Probes | None = None) -> None:
        self.interval_s = interval_s
        self.origin = origin
        self.probes = probes
        self.samples: list[dict[str, Any]] = []
        self._interval_ns = int(interval_s * 1e9)
        # With the sampler off, the first reading is never due: poll() is then never called at all.
        self.next_ns = perf_ns() + self._interval_ns if interval_s > 0 else NEVER_NS
        # /proc/stat's "cpu" line advances by the time of every online CPU, the ones os.cpu_count() counts.
        self._cpu_share = CpuShareWindow(os.cpu_count() or 1, _cpu_ticks())

    def _sample(self) -> None:
        sample = reading(self.origin, self.probes)
        sample["foreign_cpu"] = self._cpu_share.share(_cpu_ticks())
        self.samples.append(sample)

    def poll(self, now_ns: int) -> int:
        """Take a reading if one is due at ``now_ns`` (a perf_counter_ns value); return when the next is due.

        The loops call this only once ``now_ns`` reaches the value it last returned, so a timed call
        costs one integer comparison. The next reading is due an interval after this one ends.
        """
        if now_ns >= self.next_ns:
            self._sample()
            self.next_ns = perf_ns() + self._interval_ns
        return self.next_ns

    def close(self) -> None:
        """One last reading: it covers the stretch since the previous one (all of a run shorter than the interval)."""
        if self.interval_s > 0:
            self._sample()
            self.next_ns = NEVER_NS


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


def calibration_size(target_ms: float) -> int:
    """Loop count that takes about ``target_ms`` here (the same count is then timed before and after)."""
    n = 10_000
    while True:
        elapsed_ms = min(calibrate(n, 3)) / 1e6  # the fastest of three: a preempted try would undersize it
        if elapsed_ms >= target_ms / 4 or n >= 1 << 26:
            return max(int(n * target_ms / max(elapsed_ms, 1e-3)), 1000)
        n *= 4


def calibrate(n: int, reps: int) -> list[int]:
    """Time the fixed busy loop ``reps`` times; raw nanoseconds, the host picks the statistic."""
    out: list[int] = []
    for _ in range(reps):
        t0 = perf_ns()
        _spin(n)
        out.append(perf_ns() - t0)
    return out


def apply_affinity(cpus: tuple[int, ...] | None) -> dict[str, Any]:
    """Pin this process to ``cpus`` unless the launcher (taskset) already did; report what applies.

    Threads the runtime starts later inherit the mask, so this runs before any session is opened.
    """
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        return {"cpu_affinity": None, "pinning": "unsupported" if cpus else None}
    method = None
    if cpus:
        if set(getter(0)) == set(cpus):
            method = "inherited"
        else:
            setter(0, set(cpus))
            method = "sched_setaffinity"
    return {"cpu_affinity": sorted(getter(0)), "pinning": method}
