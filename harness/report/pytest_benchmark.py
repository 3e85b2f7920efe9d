"""Export a run's device results in pytest-benchmark's JSON format, so its compare tooling reads them.

``pytest-benchmark compare A.json B.json`` (or ``--benchmark-compare``) then tables and plots device
latencies next to each other. The statistics are pytest-benchmark's own (its ``Stats`` class over our
raw samples), so the numbers mean exactly what that tool's users expect: seconds per iteration.
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import Any

from pytest_benchmark import __version__ as pytest_benchmark_version
from pytest_benchmark.stats import Stats

from ..store import Store

# The result kinds whose samples time the model, and what their benchmark names add. A robustness
# job's loop serves its eval pass, and its job id is the latency job's: exporting it would list that
# variant twice.
TIMED_KINDS = {"latency": "", "interleaved": " interleaved"}

# Per-benchmark fields beside the stats: what a reader of `pytest-benchmark compare` needs to trust a row.
EXTRA_INFO = ("p95_ms", "p99_ms", "p99_ci_ms", "p99_effective_n", "repeats", "valid", "status", "platform", "top1_acc")


def export_run(store: Store, run_id: str, *, include_data: bool = False) -> dict[str, Any]:
    """The run as one pytest-benchmark JSON document (one benchmark per measured job)."""
    run = store.run_info(run_id)
    facts = store.device_facts(run_id)
    benchmarks: list[dict[str, Any]] = []
    for record in store.results(run_id):
        kind = record["kind"]
        if kind not in TIMED_KINDS:
            continue
        samples = store.samples_of(run_id, record["job_id"], kind)
        if samples.size == 0:
            continue
        stats = Stats()
        for ns in samples.tolist():
            stats.update(ns / 1e9)
        stats_dict: dict[str, Any] = stats.as_dict()
        stats_dict["iterations"] = 1
        if include_data:
            stats_dict["data"] = stats.data
        # The job id's variant (backend, precision, threads, options) and the input size: two variants
        # that differ only in threads must not share a name.
        variant = f"{record['job_id'].split('/')[1]}-{'x'.join(map(str, record['input_shape'][1:]))}"
        benchmarks.append(
            {
                "group": f"{record['model']} on {record['device']}",
                "name": f"{record['model']}[{variant}@{record['device']}{TIMED_KINDS[kind]}]",
                "fullname": f"edgebench::{record['job_id']}{TIMED_KINDS[kind]}",
                "params": {"variant": variant, "device": record["device"]},
                "param": f"{variant}@{record['device']}",
                "extra_info": {
                    k: record.get(k)
                    for k in EXTRA_INFO
                    if record.get(k) is not None
                }
                | {"device_cpu": facts.get(record["device"], {}).get("cpu_model")},
                "options": {"timer": "perf_counter_ns (on device)", "warmup": True, "min_rounds": 1},
                "stats": stats_dict,
            }
        )
    return {
        "machine_info": {
            "node": run["host"],
            "machine": platform.machine(),
            "python_version": platform.python_version(),
            "edgebench_lab": run["lab_name"],
            "edgebench_run": run_id,
        },
        "commit_info": {"id": run["git_sha"], "time": run["started_at"], "project": "edgebench"},
        "benchmarks": benchmarks,
        "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
        "version": pytest_benchmark_version,
    }
