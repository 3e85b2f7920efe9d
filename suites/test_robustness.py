"""Robustness suite: accuracy under the 19 corruptions x 5 severities, normalised by the FP32 reference."""

import pytest

from harness.records import JobResult

pytestmark = pytest.mark.edgebench_kind("robustness")


def test_robustness(edgebench_result: JobResult) -> None:
    result = edgebench_result
    assert result.status != "error", result.message
    assert not result.failed("robustness"), "; ".join(result.failed("robustness"))
