"""Telemetry probes a platform profile names: sysfs files and vendor commands (tegrastats, powermetrics).

The host sends the device's platform profile readers (``devices/platforms/*.yaml``) in the job
spec; this module turns each into a probe the sampler reads. A sysfs probe reads its files at every
sample. A command probe starts the vendor's streaming tool once, before the calibration workload,
reads its output on a thread and hands the sampler the newest complete record, which the sampler
parses (between timed calls, not on that thread) into numbers: temperatures in C, clocks in MHz,
power in mW. Nothing here judges the numbers.

The parsers are written by hand because no maintained parser exists that a device with only the
standard library can import (jetson-stats wraps tegrastats in a service with its own dependencies;
powermetrics has no Python reader at all). They read the formats NVIDIA's tegrastats documentation
and Apple's powermetrics(1) describe; a token they do not know is skipped, never an error, since
each JetPack and macOS release adds fields.

A probe that cannot run (tool missing, sudo wanting a password, a glob matching nothing) reports why
under ``errors`` and the run goes on without its readings: telemetry is evidence about a run, not a
precondition for it.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from . import facts

# tegrastats: "CPU [12%@1190,off,...]" (JetPack 4.4+) or "cpu [17%,13%]@408" (older), "GR3D_FREQ 0%@[305,305]"
# or "GR3D_FREQ 3%@76", "name@47.5C" temperatures (-256C: a sensor that is absent or off), and rails
# "VDD_IN 5000mW/4900mW" (instant/average; JetPack 5+) or "POM_5V_IN 2545/2547" (older, mW).
_TEGRA_CPU_NEW = re.compile(r"\bCPU \[([^\]]*)\]")
_TEGRA_CPU_OLD = re.compile(r"\bcpu \[([^\]]*)\]@(\d+)", re.IGNORECASE)
_TEGRA_ENGINE = re.compile(r"\b(GR3D|EMC|VIC|NVENC|NVDEC|NVJPG|DLA\d?)(?:_FREQ)? (?:\d+%)?@\[?([\d,]+)\]?")
_TEGRA_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_TEGRA_RAIL = re.compile(r"\b((?:VDDQ?|VIN|POM)_[\w]+) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_ABSENT_C = -200.0  # tegrastats prints -256C for a sensor that is off

# powermetrics (Apple silicon): "CPU Power: 1234 mW", "Combined Power (CPU + GPU + ANE): 1290 mW",
# "P-Cluster HW active frequency: 3228 MHz", "GPU HW active frequency: 389 MHz"; Intel Macs:
# "Intel energy model derived package power (CPUs+GT+SA): 3.20W", "CPU die temperature: 65.3 C".
_PM_POWER = re.compile(r"^([A-Za-z][\w +()\-]*?) Power(?: \(([^)]*)\))?:\s*(\d+(?:\.\d+)?)\s*(mW|W)\s*$")
_PM_PACKAGE = re.compile(r"^Intel energy model derived package power \(([^)]*)\):\s*(\d+(?:\.\d+)?)\s*W\s*$")
_PM_FREQ = re.compile(r"^([A-Za-z][\w\- ]*?) HW active frequency:\s*(\d+(?:\.\d+)?)\s*MHz\s*$")
_PM_TEMP = re.compile(r"^([A-Za-z][\w ]*?) die temperature:\s*(-?\d+(?:\.\d+)?)\s*C\s*$")
_PM_PRESSURE = re.compile(r"^Current pressure level:\s*(\w+)")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One tegrastats line as ``{temperatures_c, cpu_freq_mhz, clocks_mhz, power_mw}``."""
    out: dict[str, Any] = {"temperatures_c": {}, "cpu_freq_mhz": [], "clocks_mhz": {}, "power_mw": {}}
    new = _TEGRA_CPU_NEW.search(line)
    if new:
        for core in new.group(1).split(","):
            _, at, mhz = core.partition("@")
            out["cpu_freq_mhz"].append(float(mhz) if at and mhz.isdigit() else None)
    else:
        old = _TEGRA_CPU_OLD.search(line)
        if old:
            cores = [c for c in old.group(1).split(",") if c]
            out["cpu_freq_mhz"] = [None if c == "off" else float(old.group(2)) for c in cores]
    for engine, mhz in _TEGRA_ENGINE.findall(line):
        values = [float(v) for v in mhz.split(",") if v]
        if values:
            out["clocks_mhz"][_slug(engine)] = max(values)
    for name, value in _TEGRA_TEMP.findall(line):
        celsius = float(value)
        if celsius > _ABSENT_C:
            out["temperatures_c"][_slug(name)] = celsius
    for rail, instant, _average in _TEGRA_RAIL.findall(line):
        out["power_mw"][rail] = float(instant)
    return out


def parse_powermetrics(block: str) -> dict[str, Any]:
    """One powermetrics sample (the text after a ``*** Sampled`` header) as the same reading fields."""
    out: dict[str, Any] = {"temperatures_c": {}, "cpu_freq_mhz": [], "clocks_mhz": {}, "power_mw": {}}
    for raw in block.splitlines():
        line = raw.strip()
        power = _PM_POWER.match(line)
        if power:
            name = power.group(1) if not power.group(2) else power.group(1) + " " + power.group(2)
            scale = 1.0 if power.group(4) == "mW" else 1000.0
            out["power_mw"][_slug(name)] = float(power.group(3)) * scale
            continue
        package = _PM_PACKAGE.match(line)
        if package:
            out["power_mw"]["package"] = float(package.group(2)) * 1000.0
            continue
        freq = _PM_FREQ.match(line)
        if freq:
            out["clocks_mhz"][_slug(freq.group(1))] = float(freq.group(2))
            continue
        temp = _PM_TEMP.match(line)
        if temp:
            out["temperatures_c"][_slug(temp.group(1))] = float(temp.group(2))
            continue
        pressure = _PM_PRESSURE.match(line)
        if pressure:
            out["thermal_pressure"] = pressure.group(1)
    return out


PARSERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "tegrastats": parse_tegrastats,
    "powermetrics": parse_powermetrics,
}


def _star_part(pattern: str, path: str) -> str:
    """The path component a glob's ``*`` matched: thermal_zone3, apex_0, hwmon2, cpu1."""
    for pat, part in zip(pattern.split("/"), path.split("/")):  # noqa: B905 (no strict= on Python 3.8)
        if "*" in pat or "?" in pat or "[" in pat:
            return part
    return os.path.basename(path)


class SysfsProbe:
    """Files matching one glob, each value x ``scale``; named by ``name_file`` or the matched component."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.error: str | None = None
        self._files: list[tuple[str, str]] = []  # (value file, sensor name)

    def start(self) -> None:
        """Resolve the glob and the sensor names once: each reading then reads only the values."""
        spec = self.spec
        for path in sorted(glob.glob(spec.path), key=facts.cpu_order):
            name = facts.read_text(os.path.join(os.path.dirname(path), spec.name_file)) if spec.name_file else None
            self._files.append((path, _slug(name or _star_part(spec.path, path))))
        if not self._files:
            self.error = f"{spec.label}: nothing matches {spec.path}"

    def read(self, out: dict[str, Any]) -> None:
        spec = self.spec
        cpu_clock = spec.unit == "MHz" and spec.label == "cpu"
        for path, key in self._files:
            raw = facts.read_text(path)
            try:
                value = float(raw) * spec.scale if raw else None
            except ValueError:
                value = None
            if cpu_clock:
                out["cpu_freq_mhz"].append(value)
            elif value is not None:
                _put(out, spec.unit, key, value)

    def stop(self) -> None:
        pass


def _put(out: dict[str, Any], unit: str, key: str, value: float) -> None:
    if unit == "C":
        field, scale = "temperatures_c", 1.0
    elif unit == "MHz":
        field, scale = "clocks_mhz", 1.0
    elif unit in ("mW", "W"):
        field, scale = "power_mw", 1000.0 if unit == "W" else 1.0
    else:
        field, scale = "utilisation_pct", 1.0
    bucket = out.setdefault(field, {})
    name, i = key, 2
    while name in bucket:  # two zones of the same type: cpu-thermal, cpu-thermal_2
        name, i = f"{key}_{i}", i + 1
    bucket[name] = value * scale


class CommandProbe:
    """A vendor tool streaming one record per interval; the newest complete record, parsed."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.parse = PARSERS[spec.parser]
        self.error: str | None = None
        self.records = 0
        self._latest: str | None = None  # the newest complete record, as printed
        self._parsed: tuple[str, dict[str, Any]] | None = None  # (record, its reading): parsed once
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stderr_thread: threading.Thread | None = None
        self._stderr: list[str] = []

    def argv(self) -> list[str]:
        argv = list(self.spec.command)
        if self.spec.needs_root and hasattr(os, "geteuid") and os.geteuid() != 0:
            argv = ["sudo", "-n", *argv]  # -n: fail at once instead of waiting for a password
        return argv

    def start(self) -> None:
        try:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self.error = f"{self.spec.label}: cannot start {self.spec.command[0]}: {exc.strerror or exc}"
            return
        self._thread = threading.Thread(target=self._pump, name="edgebench-" + self.spec.parser, daemon=True)
        self._thread.start()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _publish(self, text: str) -> None:
        # Only kept here: parsing waits for the sampler, which reads between timed calls, so this thread
        # (woken by every record while the loop runs) does as little as it can.
        if not text.strip():
            return
        with self._lock:
            self._latest = text
            self.records += 1

    def _pump(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        block: list[str] = []
        for line in self._process.stdout:
            if self.spec.parser == "tegrastats":
                self._publish(line)
            elif line.startswith("*** Sampled"):
                self._publish("".join(block))  # the previous sample is complete once the next begins
                block = []
            else:
                block.append(line)
        if block:
            self._publish("".join(block))

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line.strip())
            del self._stderr[:-20]  # the last lines say why it stopped

    def exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def read(self, out: dict[str, Any]) -> None:
        with self._lock:
            text = self._latest
        if text is None:
            return
        if self._parsed is None or self._parsed[0] is not text:
            self._parsed = (text, self.parse(text))
        latest = self._parsed[1]
        out["cpu_freq_mhz"] = latest["cpu_freq_mhz"] or out["cpu_freq_mhz"]
        for field in ("temperatures_c", "clocks_mhz", "power_mw"):
            out.setdefault(field, {}).update(latest.get(field) or {})
        if "thermal_pressure" in latest:
            out["thermal_pressure"] = latest["thermal_pressure"]

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for thread in (self._thread, self._stderr_thread):
            if thread is not None:
                thread.join(timeout=2)  # the last lines of stderr say why a tool stopped: read them first
        if self.records == 0 and self.error is None:
            said = next((line for line in reversed(self._stderr) if line), "")  # a traceback ends with the error
            why = said or f"it printed no record (exit code {process.returncode})"
            self.error = f"{self.spec.label}: {self.spec.command[0]} gave no reading: {why}"
            if self.spec.needs_root and "password" in said:
                self.error += "; allow it without a password (sudoers NOPASSWD) for the lab user"


class Probes:
    """Every probe of a spec, or the built-in readers (thermal zones, cpufreq, Coral Apex) when none is named."""

    def __init__(self, readers: Any) -> None:
        self.probes: list[Any] = [CommandProbe(r) if r.kind == "command" else SysfsProbe(r) for r in readers]

    def start(self) -> None:
        for probe in self.probes:
            probe.start()

    def read(self, out: dict[str, Any]) -> dict[str, Any]:
        """Fill ``out`` (which carries ``t_s``) with one reading of every probe."""
        if not self.probes:
            out["temperatures_c"] = facts.temperatures_c()
            out["cpu_freq_mhz"] = facts.cpu_frequencies_mhz()
            return out
        out["temperatures_c"] = {}
        out["cpu_freq_mhz"] = []
        for probe in self.probes:
            probe.read(out)
        return out

    def stop(self) -> None:
        for probe in self.probes:
            probe.stop()

    def wait_for_first_records(self, timeout_s: float) -> None:
        """Give streaming tools up to ``timeout_s`` to print a first record (tegrastats waits one interval)."""
        deadline = time.monotonic() + timeout_s
        while any(n == 0 for n in self.records().values()) and time.monotonic() < deadline:
            if all(p.error or p.exited() for p in self.probes if isinstance(p, CommandProbe) and p.records == 0):
                return  # the ones still without a record cannot produce one
            time.sleep(0.02)

    def errors(self) -> list[str]:
        return [p.error for p in self.probes if p.error]

    def records(self) -> dict[str, int]:
        return {p.spec.label: p.records for p in self.probes if isinstance(p, CommandProbe)}
