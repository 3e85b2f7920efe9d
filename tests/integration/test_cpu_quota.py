"""A runner under a CPU limit is caught: its result names the quota and how often it stalled the loop.

A container with ``--cpus`` (or a Kubernetes CPU limit) runs the runner in a control group with a CPU
quota. Here the device's ``python:`` is a wrapper that moves the runner into a real control group
with a quota of half a CPU, then runs the real interpreter: the real kernel enforces the quota, the
real runner reads the group's counters. Needs root and a writable cgroup CPU controller (v1 or v2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

pytestmark = [pytest.mark.slow]

QUOTA_CPUS = 0.5


def _limited_group(name: str) -> tuple[Path, Path]:
    """(the group's directory, the file a process writes its pid to) with a 0.5-CPU quota."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(QUOTA_CPUS * 100_000)))
        return group, group / "cgroup.procs"
    v2 = Path("/sys/fs/cgroup")
    if "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
        group = v2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(QUOTA_CPUS * 100_000)} 100000")
        return group, group / "cgroup.procs"
    raise OSError("no cgroup v1 cpu hierarchy, and cgroup v2 has the cpu controller off for its children")


@pytest.fixture
def limited_python(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(an interpreter wrapper that runs under the quota, the group's name as the runner sees it)."""
    name = f"edgebench-test-{uuid.uuid4().hex[:8]}"
    try:
        group, procs = _limited_group(name)
    except OSError as exc:
        pytest.skip(f"cannot make a CPU-limited control group here (needs root): {exc}")
    wrapper = tmp_path / "python-limited"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {procs}\nexec {sys.executable} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    try:
        yield wrapper, "/" + name
    finally:
        group.rmdir()  # every runner has exited: the group is empty


def lab(tmp_path: Path, python: Path | str, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = f"""\
        schema_version: 1
        name: {name}
        measure: {{min_iterations: 400, max_duration_s: 1.0, calibration_reps: 2, throttle_retries: 0}}
        devices:
          - name: local
            platform: generic-linux
            transport: local
            python: {python}
            runtimes: [onnxruntime]
            cache_dir: {tmp_path / "device"}
            threads: 1
        """
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def fp32_record(tmp_path: Path, lab_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    db = tmp_path / f"{lab_path.stem}.sqlite"
    argv = ["run", "--lab", str(lab_path), "--catalog", str(catalog), "--db", str(db), "--kinds", "latency"]
    assert main([*argv, "--backends", "onnxruntime", "--report", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()
    assert main(["results", "--db", str(db), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    record: dict[str, Any] = next(r for r in rows if r["precision"] == "fp32")
    return record


def test_a_runner_stalled_by_its_cpu_quota_is_marked_unstable_naming_the_quota(
    edgebench_env: Path,
    tiny_catalog: Path,
    tmp_path: Path,
    limited_python: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrapper, group = limited_python
    limited = fp32_record(tmp_path, lab(tmp_path, wrapper, "limited"), tiny_catalog, capsys)
    assert limited["cpu_quota_cpus"] == QUOTA_CPUS
    assert limited["unstable"] is True
    reason = next(r for r in limited["unstable_reasons"] if r.startswith("CPU quota:"))
    assert f"control group {group} may use {QUOTA_CPUS:g} CPU(s)" in reason
    assert reason.endswith("Kubernetes CPU limit): below 1 CPU every busy thread is stalled")
    # The kernel let the busy runner use half a CPU: the loop's threads got about that much.
    assert limited["cpu_parallelism"] < 0.7

    free = fp32_record(tmp_path, lab(tmp_path, sys.executable, "free"), tiny_catalog, capsys)
    assert free["cpu_quota_cpus"] is None and free["cpu_quota_stalls"] is None
    assert not any(r.startswith("CPU quota:") for r in free["unstable_reasons"] or [])
    assert 0.8 < free["cpu_parallelism"] <= 1.1, "one busy thread, unlimited, uses one whole CPU and no more"


def test_the_runner_names_the_group_it_reads(limited_python: tuple[Path, str], tmp_path: Path) -> None:
    """What the runner's cgroup reader finds from inside the group: the quota and its stall counters."""
    wrapper, group = limited_python
    probe = (
        "import json, time; from harness.agent import cgroup; g = cgroup.locate(); a = cgroup.snapshot(g); "
        "t = time.monotonic()\nwhile time.monotonic() - t < 0.5: pass\n"
        "print(json.dumps(cgroup.throttling(a, cgroup.snapshot(g))))"
    )
    done = subprocess.run([str(wrapper), "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    (level,) = [lv for lv in json.loads(done.stdout) if lv["group"] == group]
    assert level["quota_cpus"] == QUOTA_CPUS
    assert level["periods"] >= 4 and level["throttled_periods"] >= 3, level
    assert 0.1 < level["throttled_s"] < 0.5, "stalled for about half of the half second it spun"
