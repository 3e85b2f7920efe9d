"""Release gates: latency budgets judged on the percentiles' confidence bounds."""
