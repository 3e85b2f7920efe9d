"""Latency suite: every model variant on every device meets its budgets with VALID statistics."""

import pytest

from harness.records import JobResult

pytestmark = pytest.mark.edgebench_kind("latency")


def test_latency(edgebench_result: JobResult) -> None:
    result = edgebench_result
    assert result.status != "error", result.message
    assert not result.failed("latency"), "; ".join(result.failed("latency"))
