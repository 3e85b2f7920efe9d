"""Analyse: turn a job's raw device outputs into metrics and check-group failures, on the host.

Pure functions over arrays and records (no I/O): the pipeline fetches the data, these decide.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .catalog import Budgets
from .gate.budgets import check_latency
from .measure.corruptions import ALL_CORRUPTIONS, SEVERITIES
from .measure.parity import (
    ParityBudget,
    ParityMetrics,
    check_parity,
    compare_outputs,
    drop_text,
    format_limit,
    places_for,
)
from .measure.repeats import HISTORY_RUNS, history_shift, level_shifts
from .measure.robustness import cell_from_logits, robustness_delta, robustness_report
from .measure.stability import TwoSpeeds, assess_stability
from .measure.stats import LatencySummary
from .records import Variant

Metrics = dict[str, Any]


def latency_checks(
    summary: LatencySummary,
    samples_ns: np.ndarray,
    budgets: Budgets,
    runs: Sequence[tuple[np.ndarray, LatencySummary]] = (),
) -> tuple[Metrics, tuple[str, ...]]:
    """Stability metrics and latency budget failures (an INVALID percentile is a failure too).

    ``runs`` are a repeated job's runs (samples, summary): each is judged for stability on its own, and
    a run at another level from the others is a reason of its own (``repeated_stability``).
    """
    failures = list(check_latency(summary, budgets))
    if not summary.valid:
        failures.append("statistics INVALID: " + "; ".join(summary.invalid_reasons))
    stability = repeated_stability(runs) if runs else stability_metrics(samples_ns, summary)
    return stability, tuple(failures)


def repeated_stability(runs: Sequence[tuple[np.ndarray, LatencySummary]]) -> Metrics:
    """Stability over several runs: the worst run's CV, drift and outlier share, every run's reasons by number.

    A run at another level from the others (``level_shifts``) is a reason too: the host changed speed
    between runner processes.
    """
    each = [stability_metrics(samples, summary) for samples, summary in runs]
    reasons = [f"run {i} of {len(each)}: {r}" for i, m in enumerate(each, 1) for r in m.get("unstable_reasons", [])]
    reasons += level_shifts([summary for _, summary in runs])
    measured = [m for m in each if m]  # a run of one call has no spread to judge
    if not measured:
        return {}
    metrics: Metrics = {
        "cv": max(m["cv"] for m in measured),
        "drift": max((m["drift"] for m in measured), key=abs),
        "outlier_share": max(m["outlier_share"] for m in measured),
        "unstable": bool(reasons),
        "unstable_reasons": reasons,
    }
    # The run whose two speeds were furthest apart stands for the job.
    split = [m for m in measured if "speeds_ms" in m]
    if split:
        widest = max(split, key=lambda m: m["speeds_ms"][1] / m["speeds_ms"][0])
        metrics.update({k: widest[k] for k in SPEED_FIELDS})
    return metrics


def stability_metrics(samples_ns: np.ndarray, summary: LatencySummary) -> Metrics:
    """CV, drift, outlier share and the unstable verdict with its reasons (empty for fewer than 2 samples).

    A percentile whose interval is too narrow for the run's bursts of slow calls (``summary``) is a
    reason too: its number is not pinned down as well as its interval claims.
    """
    if len(samples_ns) < 2:
        return {}
    verdict = assess_stability(samples_ns)
    reasons = [*verdict.reasons, *summary.dependence_reasons]
    metrics: Metrics = {
        "cv": verdict.cv,
        "drift": verdict.drift,
        "outlier_share": verdict.outlier_share,
        "unstable": bool(reasons),
        "unstable_reasons": reasons,
    }
    if verdict.speeds is not None:
        metrics.update(speed_metrics(verdict.speeds))
    return metrics


SPEED_FIELDS = ("speeds_ms", "slow_speed_share", "speed_switches")


def speed_metrics(speeds: TwoSpeeds) -> Metrics:
    """A two-speed run's SPEED_FIELDS: both speeds in ms, the slow share of its windows, its switches."""
    return dict(zip(SPEED_FIELDS, ([speeds.fast_ms, speeds.slow_ms], speeds.slow_share, speeds.switches), strict=True))


def oversubscription(threads: int | None, options: Mapping[str, Any], cpu_affinity: Any) -> str | None:
    """Why a run's threads outnumber the CPUs its runner was allowed on, or None.

    A runtime's threads synchronise at every operator, so one that waits for a CPU stalls the call:
    on the reference machine, ONNX Runtime with two inter-op threads on one pinned CPU took 8 ms a
    call instead of 0.05 ms. Such a number measures the scheduler, not the model.
    """
    if not threads or not isinstance(cpu_affinity, list) or not cpu_affinity:
        return None
    demand = int(threads) + max(int(options.get("inter_op_threads", 1)) - 1, 0)
    if demand <= len(cpu_affinity):
        return None
    return (
        f"{demand} runtime threads on {len(cpu_affinity)} allowed CPU(s) {cpu_affinity}: "
        "give the device more cpus: or the variant fewer threads"
    )


def cpu_parallelism(facts: Sequence[Mapping[str, Any]]) -> float | None:
    """CPUs the runtime's threads had during the timed loops: process CPU time over wall time, or None.

    ``facts`` are the runner processes' facts (``loop_cpu_s``, ``loop_wall_s``, ``cpu_affinity``);
    threads that spin-wait count as busy. None when any process did not record both times (an older
    runner).

    The answer is at most the CPUs the runner was allowed on. Linux brings a process's CPU time up to
    date for the reading thread only: another thread running on another CPU is accounted at its next
    scheduler tick (1-10 ms). A loop of a few tens of milliseconds whose worker thread was mid-tick
    when it began can so read 2.19 CPUs on two (seen on a 2-CPU machine for a 0.1 ms model); the
    recorded times keep what the clock said.
    """
    if not facts or any(f.get("loop_cpu_s") is None or f.get("loop_wall_s") is None for f in facts):
        return None
    wall_s = sum(float(f["loop_wall_s"]) for f in facts)
    if wall_s <= 0:
        return None
    used = sum(float(f["loop_cpu_s"]) for f in facts) / wall_s
    allowed = [len(f["cpu_affinity"]) for f in facts if isinstance(f.get("cpu_affinity"), list) and f["cpu_affinity"]]
    if allowed:
        used = min(used, float(max(allowed)))
    return round(used, 3)


# What an earlier result must share with this one to be the same measurement on the same device: the
# compiled artifact, the job (model, variant, threads, device, input size), the batch, what the runtime
# was asked for and applied (its version among them), the CPUs the runner had, the runner's own code and
# the device's env: and setup:.
SAME_CONDITIONS = (
    "job_id",
    "artifact_sha256",
    "input_shape",
    "batch",
    "variant_options",
    "runtime_config",
    "cpu_affinity",
    "pinning",
    "runner_sha256",
    "device_setup_sha256",
)


def _conditions(record: Mapping[str, Any]) -> str:
    return json.dumps([record.get(k) for k in SAME_CONDITIONS], sort_keys=True, default=str)


def history_metrics(record: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> Metrics:
    """This latency result against the same artifact's earlier valid runs under the same conditions.

    ``record`` is the result's flat record, ``history`` earlier records of its job, newest first.
    Gives ``history_runs`` (how many it was compared with, up to HISTORY_RUNS) and, once there are
    enough (``history_shift``), ``history_p50_ratio``; a P50 at another level marks the result
    unstable. Nothing when the result itself is not a valid latency measurement.
    """
    if record.get("kind") != "latency" or not record.get("valid") or not record.get("p50_ms"):
        return {}
    mine = _conditions(record)
    earlier = [
        (str(r["run_id"]), float(r["p50_ms"]))
        for r in history
        if r.get("kind") == "latency"
        and r.get("valid")
        and r.get("status") in ("passed", "failed")
        and r.get("p50_ms")
        and r.get("run_id") != record.get("run_id")
        and _conditions(r) == mine
    ]
    ratio, reason = history_shift(float(record["p50_ms"]), earlier)
    out: Metrics = {"history_runs": min(len(earlier), HISTORY_RUNS)}
    if ratio is not None:
        out["history_p50_ratio"] = round(ratio, 4)
    if reason:
        out["unstable"] = True
        out["unstable_reasons"] = [*record.get("unstable_reasons", []), reason]
    return out


def provenance_metrics(
    variant: Variant, runtime: Mapping[str, Any], facts: Mapping[str, Any], metrics: Metrics
) -> Metrics:
    """What a number was measured with, and an unstable reason when its threads outnumbered its CPUs.

    ``variant_options`` are the variant's options as asked for, ``runtime_config`` the runtime's own account of
    its settings (OpenVINO's applied streams and hints, ONNX Runtime's threads and mode),
    ``cpu_affinity`` and ``pinning`` the CPUs the runner was allowed on and how (from the run's
    ``facts``); ``metrics`` holds the unstable reasons so far.
    """
    cpu_affinity = facts.get("cpu_affinity")
    options = dict(variant.options)
    out: Metrics = {
        "variant_options": options,
        "runtime_config": dict(runtime),
        "cpu_affinity": cpu_affinity,
        "pinning": facts.get("pinning"),
    }
    crowded = oversubscription(variant.threads, options, cpu_affinity)
    if crowded:
        out["unstable"] = True
        out["unstable_reasons"] = [*metrics.get("unstable_reasons", []), crowded]
    return out


def _parity_fields(m: ParityMetrics, prefix: str = "") -> Metrics:
    return {
        f"{prefix}top1_acc": m.top1_acc,
        f"{prefix}reference_top1_acc": m.reference_top1_acc,
        f"{prefix}top1_drop_pp": m.top1_drop_pp,
        f"{prefix}top1_drop_ci_pp": list(m.top1_drop_ci_pp) if m.top1_drop_ci_pp else None,
        f"{prefix}top1_agreement": m.top1_agreement,
        f"{prefix}top5_agreement": m.top5_agreement,
        f"{prefix}psnr_db": m.psnr_db,
        f"{prefix}sqnr_db": m.sqnr_db,
        f"{prefix}cosine": m.cosine,
        f"{prefix}max_abs_err": m.max_abs_err,
        f"{prefix}mean_abs_err": m.mean_abs_err,
        f"{prefix}p99_abs_err": m.p99_abs_err,
    }


def parity_budget(budgets: Budgets) -> ParityBudget:
    return ParityBudget(
        max_top1_drop_pp=budgets.top1_drop_pp, min_top1_agreement=budgets.top1_agreement, min_psnr_db=budgets.psnr_db
    )


def parity_checks(
    clean: np.ndarray,
    host_reference: np.ndarray,
    device_reference: np.ndarray | None,
    labels: np.ndarray | None,
    budgets: Budgets,
) -> tuple[Metrics, tuple[str, ...]]:
    """Parity against the host FP32 reference (the gate) and, when run, the FP32 variant on the device."""
    host = compare_outputs(clean, host_reference, labels)
    metrics = _parity_fields(host)
    failures = list(check_parity(host, parity_budget(budgets)))
    if device_reference is not None:
        device = compare_outputs(clean, device_reference, labels)
        metrics.update(_parity_fields(device, prefix="device_fp32_"))
    return metrics, tuple(f"vs host FP32: {f}" for f in failures)


def corruption_keys() -> list[str]:
    return [f"{c}-{s}" for c in ALL_CORRUPTIONS for s in SEVERITIES]


def robustness_checks(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    labels: np.ndarray,
    budgets: Budgets,
) -> tuple[Metrics, tuple[str, ...]]:
    """mCE and relative mCE normalised by the host FP32 reference on the same corrupted sets."""
    cells, ref_cells = [], []
    for name in ALL_CORRUPTIONS:
        for severity in SEVERITIES:
            key = f"{name}-{severity}"
            cells.append(cell_from_logits(name, severity, outputs[key], labels))
            ref_cells.append(cell_from_logits(name, severity, reference[key], labels))
    ref_clean_acc = float(np.mean(np.argmax(reference["clean"], axis=1) == labels))
    report = robustness_report(outputs["clean"], labels, cells, ref_cells, ref_clean_acc)
    ref_report = robustness_report(reference["clean"], labels, ref_cells, ref_cells, ref_clean_acc)
    delta = robustness_delta(report, ref_report)
    worst_acc = float(np.mean([c.top1_acc for c in cells if c.corruption == report.worst_corruption]))
    metrics: Metrics = {
        "robust_clean_acc": report.clean_acc,
        "mce": report.mce,
        "rel_mce": report.rel_mce,
        "worst_corruption": report.worst_corruption,
        "worst_corruption_acc": worst_acc,
        "ce": dict(report.ce),
        "confidence_shift": dict(report.confidence_shift),
        "entropy_shift": dict(report.entropy_shift),
        "robustness_delta_pp": dict(delta),
        "corruption_acc": {f"{c.corruption}-{c.severity}": c.top1_acc for c in cells},
    }
    failures = []
    if not math.isnan(report.mce) and report.mce > budgets.mce:
        failures.append(
            f"mCE {report.mce:.3f} vs the FP32 reference exceeds budget {budgets.mce:g}; "
            f"worst corruption {report.worst_corruption} (mean top-1 {worst_acc:.1%})"
        )
    return metrics, tuple(failures)


def production_checks(
    candidate: np.ndarray,
    production: np.ndarray,
    labels: np.ndarray | None,
    candidate_latency: LatencySummary | None,
    production_latency: LatencySummary | None,
    budgets: Budgets | None = None,
) -> tuple[Metrics, tuple[str, ...]]:
    """Shadow comparison (seed Q7): the candidate against the production model it would replace.

    The budgets ``production_top1_drop_pp`` and ``production_p99_ratio`` gate it when set. The accuracy
    drop is judged on its point estimate, as the FP32 parity drop is, with its paired interval printed.
    The P99 ratio fails only when the intervals show it: the candidate's P99 lower bound above the
    allowed multiple of the production P99's upper bound, as a latency budget is judged on its lower
    bound. A budget that cannot be judged (no labels, an INVALID P99) is a failure that says why.
    """
    m = compare_outputs(candidate, production, labels)
    metrics: Metrics = {
        "production_top1_agreement": m.top1_agreement,
        "production_acc_delta_pp": None if m.top1_drop_pp is None else -m.top1_drop_pp,
        "production_acc_delta_ci_pp": None
        if m.top1_drop_ci_pp is None
        else [-m.top1_drop_ci_pp[1], -m.top1_drop_ci_pp[0]],
        "production_top1_acc": m.reference_top1_acc,
    }
    if candidate_latency is not None and production_latency is not None:
        metrics["production_p50_delta_ms"] = candidate_latency.p50.value_ms - production_latency.p50.value_ms
        metrics["production_p99_delta_ms"] = candidate_latency.p99.value_ms - production_latency.p99.value_ms
        metrics["production_p50_ratio"] = candidate_latency.p50.value_ms / production_latency.p50.value_ms
        metrics["production_p99_ratio"] = candidate_latency.p99.value_ms / production_latency.p99.value_ms
    failures: list[str] = []
    drop_budget = budgets.production_top1_drop_pp if budgets else None
    if drop_budget is not None:
        if m.top1_drop_pp is None:
            failures.append(
                f"top-1 drop vs production cannot be judged: the eval set has no labels (budget "
                f"production_top1_drop_pp {drop_budget:g} pp; use a labelled eval: set, or drop the budget)"
            )
        elif not m.top1_drop_pp <= drop_budget:
            value, ci = drop_text(m, drop_budget)
            failures.append(
                f"top-1 {m.top1_acc:.2%} is {value} below production's {m.reference_top1_acc:.2%}{ci}, "
                f"over budget production_top1_drop_pp {format_limit(drop_budget, 1)} pp"
            )
    ratio_budget = budgets.production_p99_ratio if budgets else None
    if ratio_budget is not None:
        failures.extend(_p99_ratio_failure(candidate_latency, production_latency, ratio_budget))
    if budgets is not None and budgets.production_gated:
        metrics["production_gated"] = list(budgets.production_gated)
    return metrics, tuple(failures)


def _p99_ratio_failure(
    candidate: LatencySummary | None, production: LatencySummary | None, budget: float
) -> tuple[str, ...]:
    """The P99 ratio budget's failure, if the intervals show the candidate over it (or it cannot be judged)."""
    label = f"budget production_p99_ratio {budget:g}x"
    for who, summary in (("candidate", candidate), ("production", production)):
        if summary is None or not summary.p99.valid:
            reason = "no latency measured" if summary is None else summary.p99.reason
            return (f"P99 vs production cannot be judged: the {who}'s P99 is INVALID ({reason}); {label}",)
    assert candidate is not None and production is not None
    c, p = candidate.p99, production.p99
    assert c.ci_low_ms is not None and p.ci_high_ms is not None
    if c.ci_low_ms > budget * p.ci_high_ms:
        ratio = c.value_ms / p.value_ms
        return (
            f"P99 {c.value_ms:.3f} ms (95% CI from {c.ci_low_ms:.3f}) is {ratio:.{places_for(ratio, budget, 2)}f}x "
            f"production's {p.value_ms:.3f} ms (CI to {p.ci_high_ms:.3f}), over {label}",
        )
    return ()
