"""The CPU quota of the control group this runner runs in, and how often it stalled the runner.

A container started with a CPU limit (``docker --cpus``, a Kubernetes CPU limit, systemd's
``CPUQuota=``) gets a quota per period, 100 ms by default. Once its threads use it up, the kernel
stops all of them until the next period begins: a call that meets the stall takes tens of
milliseconds longer, and a runtime asked for more threads than the quota allows runs at the quota's
speed. Neither shows as another process's CPU time, so the competing-load check cannot see it; the
kernel counts it per group instead (``nr_throttled``, ``throttled_time``/``throttled_usec`` in
cpu.stat, cgroup v1 and v2).

The quota may be set on any ancestor of the runner's own group, so every level from the runner's
group up to the hierarchy's root is read. The files are read between timed calls, never during one.
Standard library only, Python 3.8 (the runner's floor); no library reads cgroup CPU statistics
without pulling in far more than this.
"""

from __future__ import annotations

import os
from typing import Any

PROC_CGROUP = "/proc/self/cgroup"
PROC_MOUNTINFO = "/proc/self/mountinfo"


def _mounts(mountinfo: str) -> list[tuple[str, str, str, list[str]]]:
    """(fstype, root, mount point, super options) of each mount in a mountinfo text."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        out.append((fields[sep + 1], fields[3], fields[4], fields[sep + 3].split(",")))
    return out


def find_group(cgroup: str, mountinfo: str) -> tuple[int, str, str] | None:
    """(cgroup version, the group's directory, the hierarchy's mount point) that holds the CPU controller.

    The cgroup v1 ``cpu`` hierarchy when there is one (hybrid systems mount both, and only v1 then
    controls the CPU), else the unified v2 one. None when neither is mounted.
    """
    paths_v1: dict[str, str] = {}
    path_v2 = None
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            path_v2 = parts[2]
            continue
        for controller in parts[1].split(","):
            paths_v1[controller] = parts[2]
    mounts = _mounts(mountinfo)
    for fstype, root, point, options in mounts:
        if fstype == "cgroup" and "cpu" in options and "cpu" in paths_v1:
            return _under_mount(1, point, _join(point, root, paths_v1["cpu"]))
    for fstype, root, point, _ in mounts:
        if fstype == "cgroup2" and path_v2 is not None:
            # Without the cpu controller there is no cpu.max: no quota.
            return _under_mount(2, point, _join(point, root, path_v2))
    return None


def _under_mount(version: int, point: str, group: str) -> tuple[int, str, str] | None:
    """The group found, or None when its directory is not one the mount shows.

    A process in a group outside its cgroup namespace's root sees a path like ``/../sibling`` in
    /proc/self/cgroup: that group's files are not under the mount, so its quota is unknown, as when
    they cannot be read.
    """
    return (version, group, point) if _within(group, point) else None


def _within(group: str, point: str) -> bool:
    group, point = os.path.normpath(group), os.path.normpath(point)
    return group == point or group.startswith(point.rstrip("/") + "/")


def _join(point: str, root: str, path: str) -> str:
    """The directory of ``path`` under a mount whose own root in the hierarchy is ``root``.

    Inside a container the mount's root is the container's group, and /proc/self/cgroup either shows
    the full path (which then starts with that root) or, with a cgroup namespace, a path from it.
    """
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root) :]
    return os.path.normpath(os.path.join(point, path.lstrip("/")))


def _name(group: str, point: str) -> str:
    """The group as the hierarchy names it: "/" for its root, "/docker/abc" below."""
    rel = os.path.relpath(group, point)
    return "/" if rel == "." else "/" + rel


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _stat(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _quota_cpus(version: int, group: str) -> float | None:
    """CPUs' worth of time the group may use per period; None when it has no limit (or no readable one)."""
    if version == 1:
        fields = [_read(os.path.join(group, name)) or "" for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    else:
        fields = (_read(os.path.join(group, "cpu.max")) or "").split()  # "max 100000" or "50000 100000"
    try:
        quota, period = (int(f) for f in fields)
    except ValueError:  # "max", a missing file, anything else: no limit to report
        return None
    return quota / period if quota > 0 and period > 0 else None


def snapshot(found: tuple[int, str, str] | None) -> list[dict[str, Any]]:
    """Each level from the group up to the root that has a CPU quota, with its throttling counters now."""
    if found is None:
        return []
    version, group, point = found
    if not _within(group, point):  # the walk up would never meet the mount point: nothing known
        return []
    group, point = os.path.normpath(group), os.path.normpath(point)
    levels = []
    while True:
        quota = _quota_cpus(version, group)
        if quota is not None:
            stat = _stat(_read(os.path.join(group, "cpu.stat")))
            throttled_s = stat.get("throttled_time", 0) / 1e9 if version == 1 else stat.get("throttled_usec", 0) / 1e6
            levels.append(
                {
                    "group": _name(group, point),
                    "quota_cpus": round(quota, 3),
                    "periods": stat.get("nr_periods", 0),
                    "throttled_periods": stat.get("nr_throttled", 0),
                    "throttled_s": throttled_s,
                }
            )
        parent = os.path.dirname(group)
        if group == point or parent == group:  # at the mount point, or at "/" (which is its own parent)
            return levels
        group = parent


def locate() -> tuple[int, str, str] | None:
    """This process's CPU control group, from /proc (None off Linux or without cgroups)."""
    cgroup, mountinfo = _read(PROC_CGROUP), _read(PROC_MOUNTINFO)
    if cgroup is None or mountinfo is None:
        return None
    return find_group(cgroup, mountinfo)


def throttling(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per limited level, the periods and stalls between two snapshots (the timed loop's)."""
    start = {level["group"]: level for level in before}
    out = []
    for level in after:
        first = start.get(level["group"])
        if first is None:
            continue
        out.append(
            {
                "group": level["group"],
                "quota_cpus": level["quota_cpus"],
                "periods": level["periods"] - first["periods"],
                "throttled_periods": level["throttled_periods"] - first["throttled_periods"],
                "throttled_s": round(level["throttled_s"] - first["throttled_s"], 6),
            }
        )
    return out
