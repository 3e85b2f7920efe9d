"""Interleaved suite: a model's variants on a device compared in one process, trusted only if A/A agrees.

Opt-in with ``--interleave``: it spends device time again on variants the latency suite measures.
A comparison passes when every variant's percentiles are VALID (enough calls for an interval, P99
from 368), and its in-process numbers are kept only when the A/A copy agreed; when the copy
disagreed, the variants were measured in separate processes, and each says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.scenarios import InterleaveOutcome

pytestmark = pytest.mark.edgebench_kind("interleaved")

AA_FALLBACK = "A/A self-check failed"  # how run_interleaved states the fallback in unstable_reasons


def test_interleaved(edgebench_interleaved: InterleaveOutcome) -> None:
    outcome = edgebench_interleaved
    assert outcome.results, "the interleaved comparison returned no results"
    errors = [f"{r.job_id}: {r.message}" for r in outcome.results if r.status == "error"]
    assert not errors, "; ".join(errors)
    # The comparison's P50 and P99 decide which variant ships: one without an interval decides nothing.
    invalid = [
        f"{r.job_id}: {'; '.join(r.latency.invalid_reasons) if r.latency else 'no samples'}"
        for r in outcome.results
        if r.latency is None or not r.latency.valid
    ]
    assert not invalid, (
        f"INVALID percentiles ({'; '.join(invalid)}); fix: give each variant more timed calls: a longer "
        "time cap (--max-duration, measure: max_duration_s), or measure: iterations of 368 or more"
    )
    assert outcome.aa is not None, "the interleaved comparison ran without its A/A self-check"
    ratio = f"A/A P50 ratio {outcome.aa['ratio']:.4f} (tolerance {outcome.aa['tolerance']:.0%})"
    if outcome.mode == "in_process":
        assert outcome.aa["ok"], f"{ratio}, yet the in-process numbers were kept"
    else:
        assert outcome.mode == "separate_processes", f"unknown interleave mode {outcome.mode!r}"
        unstated = [
            r.job_id
            for r in outcome.results
            if not any(AA_FALLBACK in reason for reason in r.flat().get("unstable_reasons") or [])
        ]
        assert not unstated, f"{ratio}: fell back to separate processes without saying so for {', '.join(unstated)}"
