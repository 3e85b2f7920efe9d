"""Interleaved suite: a model's variants on a device compared in one process, trusted only if A/A agrees.

Opt-in with ``--interleave``: it spends device time again on variants the latency suite measures.
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
