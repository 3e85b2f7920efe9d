"""Parity suite: every compiled variant's predictions stay within budget of the FP32 model, on the device,
and a candidate within its budgets against the production model it would replace (``production:``)."""

import pytest

from harness.records import JobResult

pytestmark = pytest.mark.edgebench_kind("parity")


def test_parity(edgebench_result: JobResult) -> None:
    result = edgebench_result
    assert result.status != "error", result.message
    assert not result.failed("parity"), "; ".join(result.failed("parity"))
    assert not result.failed("production"), "; ".join(result.failed("production"))
