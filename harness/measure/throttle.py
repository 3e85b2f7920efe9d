"""Was the device throttled or contended during a run: clocks, temperatures and a calibration workload.

Pure: takes the thermal record and calibration times the runner reports among a result's facts and
returns a verdict. Four independent signs, any of which makes a run's numbers describe a device
that changed under the measurement:

- the calibration workload (a fixed busy loop timed before warm-up and after the timed loop; the
  AndroidX benchmark library's check) took more than ``max_slowdown`` longer afterwards. Sensors
  need not exist for this one: it sees throttled clocks and a CPU shared with another process alike;
- a CPU or GPU clock fell more than ``max_freq_drop`` below where it started while the loop ran;
- a temperature rose more than ``max_temp_rise_c``: a run that warms a device that much did not
  reach thermal steady state, so its early and late iterations measured different machines;
- macOS reported a thermal pressure level above nominal (powermetrics' only thermal signal there);

The readings come from the platform profile's readers (sysfs files, tegrastats, powermetrics);
their mean power per rail is summarised beside the verdict, as evidence, not as a sign.

and two signs of contention, kept apart: other processes used more than ``max_foreign_cpu`` of all
CPU time on average while the loop ran; or the control group's CPU quota (a container's CPU limit)
stalled the runner in any period of the timed loop (``harness.agent.cgroup``), so some calls include
the wait for the next period. A throttled job is cooled down and retried (cooling helps a hot
device); a contended one is marked unstable and not retried, since waiting does not remove another
tenant's load or a limit, and retrying on a shared machine would only multiply the run time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "ThrottleLimits",
    "ThrottleVerdict",
    "assess_runs",
    "assess_throttle",
    "calibration_per_iteration_ns",
    "throttle_metrics",
]


@dataclass(frozen=True)
class ThrottleLimits:
    """Thresholds past which a run counts as throttled or contended (fractions, degrees Celsius)."""

    max_slowdown: float = 0.10
    max_freq_drop: float = 0.10
    max_temp_rise_c: float = 15.0
    max_foreign_cpu: float = 0.25

    def __post_init__(self) -> None:
        for name in ("max_slowdown", "max_freq_drop", "max_temp_rise_c", "max_foreign_cpu"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ThrottleLimits.{name}={value!r} must be a positive number, e.g. 0.1")


@dataclass(frozen=True)
class ThrottleVerdict:
    """What the thermal record says about one run, and why it counts as throttled (if it does)."""

    throttled: bool
    reasons: tuple[str, ...]  # why it counts as throttled: clocks, temperatures, calibration
    contention: str | None  # why it counts as contended by other processes (None: it does not)
    quota: str | None  # how a control group's CPU quota stalled the timed loop (None: it did not)
    quota_cpus: float | None  # the tightest CPU quota over the runner's control groups (None: no limit)
    calibration_slowdown: float | None  # after / before - 1 of the calibration workload's fastest repetition
    calibration_ns: float | None  # nanoseconds per calibration loop iteration before the run
    freq_drop: float | None
    temp_rise_c: float | None
    foreign_cpu: float | None  # mean share of all CPU time other processes used during the run
    thermal: Mapping[str, Any]  # {before, after, max}: the summary the flat record carries
    power_mw: Mapping[str, float]  # mean per rail during the run (empty where the platform reports none)
    telemetry_errors: tuple[str, ...]  # profile readers that could not be read

    @property
    def contended(self) -> tuple[str, ...]:
        """The contention sentences (other processes, a CPU quota): unstable, but not retried."""
        return tuple(c for c in (self.contention, self.quota) if c)


def calibration_per_iteration_ns(calibration: Mapping[str, Any], key: str = "before_ns") -> float | None:
    """Fastest repetition of the calibration loop, per iteration, in nanoseconds (None when not run).

    The fastest repetition, not the median: a burst from some other process slows a few repetitions,
    while throttled clocks or a competing load that lasts slow every one of them.
    """
    times = calibration.get(key) or []
    iterations = calibration.get("iterations") or 0
    if not times or iterations <= 0:
        return None
    return float(min(times)) / float(iterations)


def _temperature_state(reading: Mapping[str, Any]) -> dict[str, float]:
    temps = reading.get("temperatures_c") or {}
    return {str(k): float(v) for k, v in temps.items() if isinstance(v, (int, float))}


def _freqs(reading: Mapping[str, Any]) -> list[float | None]:
    return [float(f) if isinstance(f, (int, float)) else None for f in reading.get("cpu_freq_mhz") or []]


def _lowest_freqs(during: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Each CPU's lowest clock over the readings taken while the loop ran (None where it had none)."""
    lowest: list[float | None] = []
    for reading in during:
        for i, f in enumerate(_freqs(reading)):
            if i == len(lowest):
                lowest.append(f)
            elif f is not None:
                current = lowest[i]
                lowest[i] = f if current is None else min(current, f)
    return lowest


def _is_gpu_clock(name: str) -> bool:
    """tegrastats' GR3D, or a sensor with a ``gpu`` part in its name: a sysfs devfreq node is named by
    the directory its glob matched, so Jetson's ``/sys/class/devfreq/17000000.gpu`` reads as ``17000000_gpu``."""
    parts = re.split(r"[^a-z0-9]+", name.lower())
    return name.lower() == "gr3d" or any(part.startswith("gpu") for part in parts)


def _clocks(reading: Mapping[str, Any]) -> dict[str, float | None]:
    """The clocks judged for throttling: each CPU (CPU0, CPU1, ...) and the GPU's, by name.

    Other engines a tool reports (tegrastats' EMC, VIC, NVENC) scale with their own idle demand, so a
    fall there says nothing about the model's speed and would only raise false alarms.
    """
    out: dict[str, float | None] = {f"CPU{i}": f for i, f in enumerate(_freqs(reading))}
    for name, value in (reading.get("clocks_mhz") or {}).items():
        if _is_gpu_clock(str(name)) and isinstance(value, (int, float)):
            out[str(name).upper()] = float(value)
    return out


def _freq_drop(before: Mapping[str, Any], during: Sequence[Mapping[str, Any]]) -> tuple[float | None, str | None]:
    """Largest fall of one clock during the loop below max(before, first sample); (fraction, clock)."""
    if not during:
        return None, None
    start = [_clocks(before), _clocks(during[0])]
    lows = [_clocks(d) for d in during]
    worst, worst_clock = None, None
    for clock in dict.fromkeys(k for s in start for k in s):
        ref_values = [v for v in (s.get(clock) for s in start) if v]
        low_values = [v for v in (d.get(clock) for d in lows) if v]
        if not ref_values or not low_values:
            continue
        drop = 1.0 - min(low_values) / max(ref_values)
        if worst is None or drop > worst:
            worst, worst_clock = drop, clock
    return worst, worst_clock


def _mean_power(readings: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each power rail over the readings (mW), where the platform reports power."""
    sums: dict[str, list[float]] = {}
    for reading in readings:
        for rail, value in (reading.get("power_mw") or {}).items():
            if isinstance(value, (int, float)):
                sums.setdefault(str(rail), []).append(float(value))
    return {rail: round(float(np.mean(values)), 1) for rail, values in sums.items()}


def _max_temperatures(readings: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for reading in readings:
        for zone, value in _temperature_state(reading).items():
            out[zone] = max(value, out.get(zone, value))
    return out


def _quota_stalls(levels: Sequence[Mapping[str, Any]]) -> str | None:
    """The sentence for the limited control group that stalled the timed loop most often, if any did."""
    stalled = [level for level in levels if int(level.get("throttled_periods") or 0) > 0]
    if not stalled:
        return None
    worst = max(stalled, key=lambda level: int(level["throttled_periods"]))
    cpus = float(worst["quota_cpus"])
    # Under one CPU even a single busy thread meets the limit; above, fewer threads can stay within it.
    fewer = f" or with at most {int(cpus)} thread(s)" if cpus >= 1 else ": below 1 CPU every busy thread is stalled"
    return (
        f"CPU quota: control group {worst['group']} may use {cpus:g} CPU(s), and the kernel stalled the "
        f"runner in {worst['throttled_periods']} of {worst['periods']} scheduling periods "
        f"({float(worst['throttled_s']):.2f} s in all) during the timed loop; run without the limit "
        f"(docker --cpus, a Kubernetes CPU limit){fewer}"
    )


def assess_throttle(facts: Mapping[str, Any], limits: ThrottleLimits = ThrottleLimits()) -> ThrottleVerdict:
    """Judge one run from its facts' ``thermal`` and ``calibration`` records (absent: not throttled).

    The calibration workload is compared within one runner process only. Across processes the same
    Python loop runs several percent faster or slower (memory layout, hash seeds), so a retry is not
    judged against an earlier attempt's timing: a load that outlasts the first attempt shows in the
    retry's own sampled CPU share instead.
    """
    thermal: Mapping[str, Any] = facts.get("thermal") or {}
    calibration: Mapping[str, Any] = facts.get("calibration") or {}
    before: Mapping[str, Any] = thermal.get("before") or {}
    after: Mapping[str, Any] = thermal.get("after") or {}
    during: Sequence[Mapping[str, Any]] = thermal.get("during") or []
    reasons: list[str] = []

    cal_before = calibration_per_iteration_ns(calibration, "before_ns")
    cal_after = calibration_per_iteration_ns(calibration, "after_ns")
    slowdown = None
    if cal_before and cal_after:
        slowdown = cal_after / cal_before - 1.0
        if slowdown > limits.max_slowdown:
            reasons.append(
                f"calibration workload {slowdown * 100:.0f}% slower after the run than before "
                f"(limit {limits.max_slowdown * 100:g}%)"
            )

    drop, clock = _freq_drop(before, during)
    if drop is not None and drop > limits.max_freq_drop:
        reasons.append(f"{clock} clock fell {drop * 100:.0f}% during the run (limit {limits.max_freq_drop * 100:g}%)")

    # Each sensor's start is its first reading: a streaming tool's sensors may first appear during the loop.
    start: dict[str, float] = {}
    for reading in (before, *during):
        for zone, value in _temperature_state(reading).items():
            start.setdefault(zone, value)
    hottest = _max_temperatures([before, *during, after])
    rises = {zone: hottest[zone] - t for zone, t in start.items() if zone in hottest}
    rise_zone = max(rises, key=lambda z: rises[z]) if rises else None
    rise = rises[rise_zone] if rise_zone is not None else None
    if rise is not None and rise > limits.max_temp_rise_c:
        reasons.append(
            f"{rise_zone} rose {rise:.1f} C during the run (limit {limits.max_temp_rise_c:g} C): "
            "not at thermal steady state"
        )

    pressure = [str(d["thermal_pressure"]) for d in [before, *during, after] if d.get("thermal_pressure")]
    raised = sorted({p for p in pressure if p.lower() != "nominal"})
    if raised:
        # macOS reports no temperatures to a user process; its thermal pressure level is the throttle signal.
        reasons.append(f"thermal pressure {', '.join(raised)} during the run (powermetrics; nominal expected)")

    shares = [float(s["foreign_cpu"]) for s in during if isinstance(s.get("foreign_cpu"), (int, float))]
    foreign = float(np.mean(shares)) if shares else None
    contention = None
    if foreign is not None and foreign > limits.max_foreign_cpu:
        contention = (
            f"competing load: other processes used {foreign * 100:.0f}% of the CPU time during the run "
            f"(limit {limits.max_foreign_cpu * 100:g}%)"
        )

    limited = facts.get("cpu_quota") or []
    quota = _quota_stalls(limited)

    summary = {
        "before": {"temperatures_c": start, "cpu_freq_mhz": _freqs(before)},
        "after": {"temperatures_c": _temperature_state(after), "cpu_freq_mhz": _freqs(after)},
        "max": {"temperatures_c": hottest},
        "min": {"cpu_freq_mhz": _lowest_freqs(during)},
        "samples": len(during),
        "foreign_cpu_max": max(shares) if shares else None,
        "readers": list(thermal.get("readers") or []),
    }
    if pressure:
        summary["thermal_pressure"] = sorted(set(pressure))
    return ThrottleVerdict(
        throttled=bool(reasons),
        reasons=tuple(reasons),
        contention=contention,
        quota=quota,
        quota_cpus=min((float(level["quota_cpus"]) for level in limited), default=None),
        calibration_slowdown=slowdown,
        calibration_ns=cal_before,
        freq_drop=drop,
        temp_rise_c=rise,
        foreign_cpu=foreign,
        thermal=summary,
        power_mw=_mean_power(during),
        telemetry_errors=tuple(str(e) for e in thermal.get("reader_errors") or ()),
    )


def assess_runs(facts: Mapping[str, Any], limits: ThrottleLimits = ThrottleLimits()) -> ThrottleVerdict:
    """The verdict on a job's facts, over every run of a repeated job (``facts["repeat_facts"]``).

    One run throttled or contended makes the job so. The figures (slowdown, clocks, thermals) are
    those of the first run that was throttled, else contended, else the first run; the reasons of
    every run are kept, each naming its run.
    """
    runs = [facts, *(facts.get("repeat_facts") or ())]
    verdicts = [assess_throttle(f, limits) for f in runs]
    if len(verdicts) == 1:
        return verdicts[0]
    shown = next((v for v in verdicts if v.throttled), None) or next((v for v in verdicts if v.contended), verdicts[0])
    k = len(verdicts)
    contention = [f"run {i} of {k}: {v.contention}" for i, v in enumerate(verdicts, 1) if v.contention]
    quota = [f"run {i} of {k}: {v.quota}" for i, v in enumerate(verdicts, 1) if v.quota]
    return replace(
        shown,
        throttled=any(v.throttled for v in verdicts),
        reasons=tuple(f"run {i} of {k}: {r}" for i, v in enumerate(verdicts, 1) for r in v.reasons),
        contention="; ".join(contention) or None,
        quota="; ".join(quota) or None,
    )


def throttle_metrics(metrics: Mapping[str, Any], attempts: Sequence[ThrottleVerdict]) -> dict[str, Any]:
    """The flat-record fields for a job measured ``len(attempts)`` times (the last one is the result).

    A result still throttled after its retries, or contended, keeps its numbers but is marked unstable
    with the reasons; the reasons of the attempts thrown away are kept too, so a retried run says why.
    """
    last = attempts[-1]
    out: dict[str, Any] = {
        "throttled": last.throttled,
        "throttle_reasons": list(last.reasons),
        "throttle_retries": len(attempts) - 1,
        "retried_because": [r for a in attempts[:-1] for r in a.reasons],
        "calibration_slowdown": last.calibration_slowdown,
        "freq_drop": last.freq_drop,
        "temp_rise_c": last.temp_rise_c,
        "foreign_cpu": last.foreign_cpu,
        "competing_load": last.contention,
        "cpu_quota_cpus": last.quota_cpus,
        "cpu_quota_stalls": last.quota,
        "thermal": dict(last.thermal),
        "power_mw": dict(last.power_mw) or None,
        "telemetry_errors": list(last.telemetry_errors),
    }
    reasons = [f"throttled: {r}" for r in last.reasons] + list(last.contended)
    if reasons:
        out["unstable"] = True
        out["unstable_reasons"] = [*metrics.get("unstable_reasons", []), *reasons]
    return out
