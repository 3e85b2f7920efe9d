"""Device health: can edgebench reach a device, log in, and run the runner there; what does it have?

``check_device`` walks the steps a job takes (connect and authenticate, the device's Python and numpy,
deploy the runner, ask it to ``probe``) and stops at the first that fails, so the reason names the step
to fix. A device is *offline* when jobs cannot run on it at all, *degraded* when they can but something
will skip or skew them (a declared runtime missing, little free disk, running hot), *healthy* otherwise.
``check_lab`` checks every device in parallel and records each result in the store.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..build.agent_bundle import build_agent_bundle
from ..deploy import Deployable, DeviceCache
from ..errors import EdgebenchError, TransportError
from ..store import Store
from ..transport.protocol import Transport
from .connect import open_transport
from .inventory import Device, Lab
from .platforms import load_platform

HealthState = Literal["healthy", "degraded", "offline"]

MIN_FREE_DISK_MB = 500.0
MAX_TEMPERATURE_C = 85.0
PROBE_TIMEOUT_S = 120.0

# Python version, numpy, and the free space under the cache directory (its nearest existing parent).
_BASICS = r"""
import json, os, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as exc:
    out["numpy"] = None
    out["numpy_error"] = "%s: %s" % (type(exc).__name__, exc)
p = sys.argv[1]
while p and not os.path.exists(p):
    p = os.path.dirname(p)
try:
    s = os.statvfs(p or "/")
    out["free_bytes"] = s.f_bavail * s.f_frsize
except OSError:
    out["free_bytes"] = None
print(json.dumps(out))
"""


@dataclass(frozen=True)
class HealthRecord:
    """What one check of one device found."""

    device: str
    platform: str
    state: HealthState
    reasons: tuple[str, ...]
    checked_at: str
    duration_s: float
    reachable: bool = False
    authenticated: bool = False
    python: str | None = None
    numpy: str | None = None
    runtimes: Mapping[str, str | None] = field(default_factory=dict)  # name -> version, None: not usable
    free_disk_mb: float | None = None
    temperatures_c: Mapping[str, float] = field(default_factory=dict)
    telemetry_errors: tuple[str, ...] = ()  # profile readers that could not be read (informational)
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "ok"

    @property
    def available_runtimes(self) -> list[str]:
        return sorted(name for name, version in self.runtimes.items() if version is not None)

    @property
    def max_temperature_c(self) -> float | None:
        return max(self.temperatures_c.values()) if self.temperatures_c else None

    def as_facts(self) -> dict[str, Any]:
        """The JSON the store keeps with the health row."""
        return {
            "platform": self.platform,
            "reasons": list(self.reasons),
            "duration_s": round(self.duration_s, 3),
            "reachable": self.reachable,
            "authenticated": self.authenticated,
            "python": self.python,
            "numpy": self.numpy,
            "runtimes": dict(self.runtimes),
            "free_disk_mb": self.free_disk_mb,
            "temperatures_c": dict(self.temperatures_c),
            "telemetry_errors": list(self.telemetry_errors),
            "device_facts": dict(self.facts),
        }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class _Checker:
    """Accumulates what the steps of one check found."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.started = time.monotonic()
        self.checked_at = _now()
        self.found: dict[str, Any] = {}
        self.reasons: list[str] = []

    def record(self, state: HealthState) -> HealthRecord:
        return HealthRecord(
            device=self.device.name,
            platform=self.device.platform,
            state=state,
            reasons=tuple(self.reasons),
            checked_at=self.checked_at,
            duration_s=time.monotonic() - self.started,
            **self.found,
        )

    def offline(self, reason: str) -> HealthRecord:
        self.reasons.insert(0, reason)
        return self.record("offline")


def _tail(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return " | ".join(lines[-2:]) if lines else "no output"


def check_device(
    device: Device,
    *,
    agent_bundle: tuple[Path, str] | None = None,
    connect: Callable[[Device], Transport] = open_transport,
    min_free_mb: float = MIN_FREE_DISK_MB,
    max_temperature_c: float = MAX_TEMPERATURE_C,
) -> HealthRecord:
    """Check one device the way a job would use it; never raises for a device-side problem."""
    check = _Checker(device)
    try:
        transport = connect(device)
    except TransportError as exc:
        from ..transport.ssh import AuthenticationFailed, HostKeyRejected

        answered = isinstance(exc, AuthenticationFailed | HostKeyRejected)
        check.found.update(reachable=answered, authenticated=False)
        return check.offline(exc.one_line().removeprefix(f"device {device.name!r}: "))
    check.found.update(reachable=True, authenticated=True)
    try:
        return _check_connected(check, transport, agent_bundle, min_free_mb, max_temperature_c)
    except EdgebenchError as exc:
        return check.offline(exc.one_line().removeprefix(f"device {device.name!r}: "))
    except OSError as exc:  # the local transport copies files with shutil
        return check.offline(f"deploying the runner failed: {exc}")
    finally:
        transport.close()


def _check_connected(
    check: _Checker,
    transport: Transport,
    agent_bundle: tuple[Path, str] | None,
    min_free_mb: float,
    max_temperature_c: float,
) -> HealthRecord:
    device = check.device
    python = device.python_path
    # Not job_timeout_s: the health check's commands have this fixed limit.
    limit = (
        f"the health check's probes have a fixed {PROBE_TIMEOUT_S:g} s limit: look for a device Python or runtime "
        "that hangs on import, or a slow disk"
    )
    home = transport.home()
    root = home + device.cache_dir[1:] if device.cache_dir.startswith("~") else device.cache_dir

    basics_reply = transport.run(
        [python, "-c", _BASICS, root], timeout_s=PROBE_TIMEOUT_S, env=device.env, timeout_fix=limit
    )
    basics = basics_reply.json_reply() if basics_reply.exit_code == 0 else None
    if basics is None:
        return check.offline(
            f"its Python {python} does not run (exit {basics_reply.exit_code}: {_tail(basics_reply.stderr_text)}); "
            "fix: set python: to the absolute path of python3 on the device"
        )
    free = basics.get("free_bytes")
    check.found.update(
        python=basics.get("python"),
        numpy=basics.get("numpy"),
        free_disk_mb=round(free / 2**20, 1) if isinstance(free, int) else None,
    )
    if basics.get("numpy") is None:
        return check.offline(
            f"numpy does not import with {python} ({basics.get('numpy_error')}); "
            f"fix: install numpy for that Python on the device ({python} -m pip install numpy)"
        )

    bundle, sha = agent_bundle or build_agent_bundle()
    cache = DeviceCache(transport, python, root + "/files", timeout_s=PROBE_TIMEOUT_S, env=device.env)
    agent = cache.ensure([Deployable(bundle, sha, "pyz")])[sha]
    # The profile's readers, so a Jetson's tegrastats or a Mac's powermetrics temperatures count too.
    readers = [r.spec() for r in load_platform(device.platform).telemetry.readers()]
    probe_argv = [python, agent, "probe", "--readers", json.dumps(readers, separators=(",", ":"))]
    probe_reply = transport.run(probe_argv, timeout_s=PROBE_TIMEOUT_S, env=device.env, timeout_fix=limit)
    probe = probe_reply.json_reply() if probe_reply.exit_code == 0 else None
    if probe is None:
        return check.offline(
            f"the runner's probe failed (exit {probe_reply.exit_code}: {_tail(probe_reply.stderr_text)})"
        )
    facts = probe.get("facts") or {}
    found_runtimes: dict[str, Any] = probe.get("runtimes") or {}
    runtimes: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for name, info in found_runtimes.items():
        if info.get("available"):
            runtimes[name] = str(info.get("version") or "?")
        else:
            runtimes[name] = None
            errors[name] = str(info.get("error") or "not available")
    temperatures = {str(k): float(v) for k, v in (facts.get("temperatures_c") or {}).items()}
    check.found.update(
        runtimes=runtimes,
        temperatures_c=temperatures,
        telemetry_errors=tuple(str(e) for e in facts.get("telemetry_errors") or ()),
        facts=facts,
    )

    declared = device.runtimes
    if declared is not None:
        for name in declared:
            if name not in runtimes:
                check.reasons.append(f"declares runtime {name!r}, which this runner does not know")
            elif runtimes[name] is None:
                check.reasons.append(f"declares runtime {name!r} but it does not load: {errors[name]}")
    if not any(v is not None for v in runtimes.values()):
        check.reasons.append("no runtime loads on this device; every job would skip")
    free_mb = check.found["free_disk_mb"]
    if free_mb is not None and free_mb < min_free_mb:
        check.reasons.append(
            f"only {free_mb:.0f} MB free under {root} (want {min_free_mb:.0f} MB); free space or move cache_dir"
        )
    hottest = max(temperatures.items(), key=lambda kv: kv[1], default=None)
    if hottest is not None and hottest[1] > max_temperature_c:
        check.reasons.append(
            f"running hot: {hottest[0]} at {hottest[1]:.0f} °C (over {max_temperature_c:.0f} °C); latency will throttle"
        )
    return check.record("degraded" if check.reasons else "healthy")


def check_lab(
    lab: Lab,
    store: Store | None,
    *,
    connect: Callable[[Device], Transport] = open_transport,
    workers: int = 8,
) -> list[HealthRecord]:
    """Check every device (in parallel, each in its own connection); record each in the store."""
    bundle = build_agent_bundle()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(lab.devices)))) as pool:
        records = list(pool.map(lambda d: check_device(d, agent_bundle=bundle, connect=connect), lab.devices))
    if store is not None:
        for record in records:
            store.record_health(record.checked_at, record.device, record.state, record.reason, record.as_facts())
    return records
