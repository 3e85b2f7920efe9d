"""Latency suite: every model variant on every device meets its budgets with VALID statistics."""

import pytest

from harness.records import JobResult

pytestmark = pytest.mark.edgebench_kind("latency")


def test_latency(edgebench_result: JobResult) -> None:
    result = edgebench_result
    assert result.status == "passed", result.message
    assert result.latency is not None and result.latency.valid, result.latency and result.latency.invalid_reasons
