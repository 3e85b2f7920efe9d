"""The runner's cgroup reader on the files a kernel presents, and the verdict on what it read.

The directory trees below stand in for /sys/fs/cgroup with the files and formats the kernel writes
(cgroup v1's cpu.cfs_quota_us and throttled_time in ns; v2's cpu.max and throttled_usec). The real
kernel's quota is in tests/integration/test_cpu_quota.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from harness.agent import cgroup
from harness.measure.throttle import assess_throttle, throttle_metrics

V1_STAT = "nr_periods {p}\nnr_throttled {t}\nthrottled_time {ns}\nnr_bursts 0\nburst_time 0\n"
V2_STAT = "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods {p}\nnr_throttled {t}\nthrottled_usec {us}\n"


def mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """mountinfo lines for (fstype, root, mount point, super options)."""
    return "".join(
        f"{30 + i} 25 0:{40 + i} {root} {point} rw,nosuid,nodev,noexec,relatime shared:{i} - {fstype} {fstype} {opts}\n"
        for i, (fstype, root, point, opts) in enumerate(mounts)
    )


def test_a_hybrid_system_reads_the_v1_cpu_hierarchy_not_the_empty_unified_one(tmp_path: Path) -> None:
    cpu, unified = tmp_path / "cpu", tmp_path / "unified"
    cgroups = "12:cpu,cpuacct:/ci/job7\n4:memory:/ci/job7\n0::/ci/job7\n"
    mounts = mountinfo(("cgroup2", "/", str(unified), "rw"), ("cgroup", "/", str(cpu), "rw,cpu,cpuacct"))
    assert cgroup.find_group(cgroups, mounts) == (1, str(cpu / "ci" / "job7"), str(cpu))


def test_inside_a_container_the_groups_path_starts_at_the_mounts_own_root(tmp_path: Path) -> None:
    point = tmp_path / "cgroup"
    (point).mkdir()
    (point / "cpu.max").write_text("50000 100000\n")
    mounts = mountinfo(("cgroup2", "/docker/abc123", str(point), "rw,nsdelegate"))
    # Without a cgroup namespace /proc/self/cgroup shows the host's path; with one, "/".
    for seen in ("0::/docker/abc123\n", "0::/\n"):
        assert cgroup.find_group(seen, mounts) == (2, str(point), str(point))


def test_no_cgroup_mount_means_nothing_to_read() -> None:
    assert cgroup.find_group("0::/\n", mountinfo(("ext4", "/", "/", "rw"))) is None
    assert cgroup.snapshot(None) == []


def test_a_quota_on_an_ancestor_group_is_found_and_its_stalls_counted_v2(tmp_path: Path) -> None:
    parent = tmp_path / "kubepods" / "pod1"
    child = parent / "ctr"
    child.mkdir(parents=True)
    (tmp_path / "cpu.stat").write_text(V2_STAT.format(p=0, t=0, us=0))
    (parent / "cpu.max").write_text("150000 100000\n")
    (child / "cpu.max").write_text("max 100000\n")  # the container itself: no limit of its own
    found = (2, str(child), str(tmp_path))
    (parent / "cpu.stat").write_text(V2_STAT.format(p=100, t=10, us=250_000))
    before = cgroup.snapshot(found)
    (parent / "cpu.stat").write_text(V2_STAT.format(p=160, t=52, us=1_450_000))
    (level,) = cgroup.throttling(before, cgroup.snapshot(found))
    assert level == {
        "group": "/kubepods/pod1",
        "quota_cpus": 1.5,
        "periods": 60,
        "throttled_periods": 42,
        "throttled_s": 1.2,
    }


def test_v1_counts_throttled_time_in_nanoseconds_and_minus_one_means_no_quota(tmp_path: Path) -> None:
    group = tmp_path / "job"
    group.mkdir()
    for directory, quota in ((tmp_path, "-1"), (group, "50000")):
        (directory / "cpu.cfs_quota_us").write_text(quota + "\n")
        (directory / "cpu.cfs_period_us").write_text("100000\n")
    (group / "cpu.stat").write_text(V1_STAT.format(p=5, t=5, ns=130_000_000))
    (level,) = cgroup.snapshot((1, str(group), str(tmp_path)))
    assert level["group"] == "/job" and level["quota_cpus"] == 0.5
    assert level["throttled_periods"] == 5 and level["throttled_s"] == 0.13


def levels_within(seconds: float, cgroups: str, mounts: str) -> list[dict[str, Any]]:
    """The levels snapshot() reads for the group find_group() names, failing if that takes longer than ``seconds``.

    A thread bounds the call: a walk that never ends would otherwise hang the test run instead of failing it.
    """
    out: list[list[dict[str, Any]]] = []
    worker = threading.Thread(
        target=lambda: out.append(cgroup.snapshot(cgroup.find_group(cgroups, mounts))), daemon=True
    )
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"reading the cgroup still running after {seconds} s: the walk up does not end"
    return out[0]


def test_a_v2_group_outside_the_cgroup_namespace_is_unknown_not_a_hang(tmp_path: Path) -> None:
    # In a cgroup namespace whose root is not the process's group, the kernel shows a path from that
    # root: "/../sibling". The sibling's limit lies outside the mount, so nothing is known about it.
    point, sibling = tmp_path / "ns" / "cgroup", tmp_path / "ns" / "sibling"
    point.mkdir(parents=True)
    sibling.mkdir()
    for directory in (point, sibling):
        (directory / "cpu.max").write_text("50000 100000\n")
        (directory / "cpu.stat").write_text(V2_STAT.format(p=10, t=4, us=1000))
    mounts = mountinfo(("cgroup2", "/", str(point), "rw,nsdelegate"))
    assert cgroup.find_group("0::/../sibling\n", mounts) is None
    assert levels_within(5.0, "0::/../sibling\n", mounts) == []
    # Handed such a group directly, the walk still ends, and with nothing read outside the mount.
    assert cgroup.snapshot((2, str(sibling), str(point))) == []


def test_a_v1_group_outside_the_cgroup_namespace_is_unknown_not_a_hang(tmp_path: Path) -> None:
    point = tmp_path / "cpu"
    point.mkdir()
    (point / "cpu.cfs_quota_us").write_text("50000\n")
    (point / "cpu.cfs_period_us").write_text("100000\n")
    cgroups = "12:cpu,cpuacct:/../../ci/job7\n4:memory:/\n0::/\n"
    mounts = mountinfo(("cgroup2", "/", str(tmp_path / "unified"), "rw"), ("cgroup", "/", str(point), "rw,cpu,cpuacct"))
    assert cgroup.find_group(cgroups, mounts) is None, "not the unified hierarchy: it holds no CPU limit here"
    assert levels_within(5.0, cgroups, mounts) == []
    # A path that names the mount's own directory by a way round ("/../cpu") is still inside it.
    (level,) = levels_within(5.0, "12:cpu,cpuacct:/../cpu\n", mounts)
    assert level["group"] == "/" and level["quota_cpus"] == 0.5


def quota_facts(throttled: int) -> dict[str, object]:
    return {
        "cpu_quota": [
            {"group": "/ci/job7", "quota_cpus": 2.0, "periods": 80, "throttled_periods": throttled, "throttled_s": 0.9}
        ]
    }


def test_a_loop_the_quota_stalled_is_contended_naming_the_group_and_a_fix() -> None:
    verdict = assess_throttle(quota_facts(throttled=31))
    assert not verdict.throttled, "a quota is not cured by cooling down: no retry"
    assert verdict.quota_cpus == 2.0
    assert verdict.quota == (
        "CPU quota: control group /ci/job7 may use 2 CPU(s), and the kernel stalled the runner in 31 of 80 "
        "scheduling periods (0.90 s in all) during the timed loop; run without the limit (docker --cpus, a "
        "Kubernetes CPU limit) or with at most 2 thread(s)"
    )
    metrics = throttle_metrics({}, [verdict])
    assert metrics["unstable"] is True and metrics["unstable_reasons"] == [verdict.quota]
    assert metrics["cpu_quota_cpus"] == 2.0 and metrics["cpu_quota_stalls"] == verdict.quota


def test_a_quota_that_never_stalled_the_loop_is_reported_but_not_held_against_it() -> None:
    verdict = assess_throttle(quota_facts(throttled=0))
    assert verdict.quota is None and verdict.quota_cpus == 2.0
    assert "unstable" not in throttle_metrics({}, [verdict])
    assert assess_throttle({}).quota_cpus is None, "a runner outside any limit (or an older one)"
