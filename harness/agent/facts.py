"""Facts about the device, read where it runs: OS, kernel, CPU, memory, clocks, temperatures.

Every reader is best effort: a file that is missing on this platform gives ``None``, never an error,
because the same runner runs on a Jetson, a Coral board, a NUC and a Mac.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
import sys
from typing import Any


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = read_text("/proc/cpuinfo")
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model"):
                return value.strip()
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            return out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return platform.processor() or None


# Instruction sets that change what a quantised model computes or how fast: ONNX Runtime's x86 INT8
# kernels saturate without VNNI; ARM's dot-product and i8mm extensions select other INT8 kernels.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimddp", "i8mm", "sve", "neon")


def _cpu_isa() -> list[str] | None:
    text = read_text("/proc/cpuinfo")
    if not text:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in _ISA_FLAGS if flag in present]
    return None


def _memory_mb() -> int | None:
    text = read_text("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def cpu_order(path: str) -> tuple[int, str]:
    """Sort key putting ``.../cpu2/...`` before ``.../cpu10/...``: list position is the CPU's number in reports."""
    match = re.search(r"/cpu(\d+)/", path)
    return (int(match.group(1)) if match else 1 << 30, path)


def cpu_frequencies_mhz() -> list[float | None]:
    """Current frequency of each CPU from cpufreq, in MHz (empty where cpufreq is absent), CPU0 first."""
    freqs: list[float | None] = []
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"), key=cpu_order):
        value = read_text(path)
        freqs.append(int(value) / 1000.0 if value and value.isdigit() else None)
    return freqs


def temperatures_c() -> dict[str, float]:
    """Every Linux thermal zone and the Coral Apex sensor, in degrees Celsius."""
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = read_text(os.path.join(zone, "temp"))
        kind = read_text(os.path.join(zone, "type")) or os.path.basename(zone)
        if raw and raw.lstrip("-").isdigit():
            temps[kind] = int(raw) / 1000.0
    for apex in sorted(glob.glob("/sys/class/apex/apex_*/temp")):
        raw = read_text(apex)
        if raw and raw.isdigit():
            temps[apex.split("/")[-2]] = int(raw) / 1000.0
    return temps


def collect() -> dict[str, Any]:
    """The device's facts as a JSON-ready dict."""
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    uname = platform.uname()
    return {
        "os": uname.system,
        "os_release": platform.platform(),
        "kernel": uname.release,
        "arch": uname.machine,
        "hostname": uname.node,
        "cpu_model": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "cpu_count": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy_version,
        "cpu_governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_freq_mhz": cpu_frequencies_mhz(),
        "temperatures_c": temperatures_c(),
    }
