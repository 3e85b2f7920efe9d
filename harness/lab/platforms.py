"""Platform profiles (devices/platforms/<platform>.yaml): what a kind of device runs and how to read it.

A profile names the backends a platform runs with their default precisions, the thread counts to
plan, and where its telemetry lives (temperatures, clocks, power) as data: sysfs files (globs) with a
scale to the unit, or commands with a named parser. Backends and precisions are checked against the
backend registry when the file loads, so a typo is a file:line error, not a failed job at 3 a.m.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..build.backends import BACKENDS, get_backend
from ..config import Strict, load_model
from ..errors import ConfigError, UnknownNameError
from .inventory import Platform

PLATFORMS: tuple[str, ...] = ("jetson-orin", "coral-devboard", "intel-nuc", "snapdragon-linux", "mac", "generic-linux")


class Reader(Strict):
    """One telemetry source: a sysfs file glob (value x scale = unit), or a command and its parser."""

    kind: Literal["sysfs", "command"]
    label: str = Field(description="what it measures, e.g. cpu, gpu, apex, soc")
    unit: Literal["C", "MHz", "mW", "W", "%"]
    path: str | None = Field(default=None, description="absolute path; * matches one entry per sensor")
    name_file: str | None = Field(default=None, description="sibling file that names each match, e.g. type")
    scale: float = Field(default=1.0, gt=0, description="raw value x scale = value in unit")
    command: tuple[str, ...] | None = None
    parser: Literal["tegrastats", "powermetrics"] | None = None
    needs_root: bool = False

    @model_validator(mode="after")
    def _complete(self) -> Reader:
        if self.kind == "sysfs":
            if not self.path or not self.path.startswith("/"):
                raise ValueError("a sysfs reader needs an absolute path:")
            if self.command or self.parser:
                raise ValueError("a sysfs reader takes path: (and name_file:, scale:), not command: or parser:")
        elif not self.command or not self.parser:
            raise ValueError("a command reader needs command: [argv...] and parser: (tegrastats or powermetrics)")
        return self

    def spec(self) -> dict[str, Any]:
        """This reader as the runner's ``thermal.readers`` entry (harness.agent.protocol.ProbeSpec)."""
        out: dict[str, Any] = self.model_dump(exclude_none=True)
        if self.command is not None:
            out["command"] = list(self.command)
        return out


class Telemetry(Strict):
    """Where a platform's temperatures, clocks and power are read; sampled around every timed loop."""

    temperatures: tuple[Reader, ...] = ()
    clocks: tuple[Reader, ...] = ()
    power: tuple[Reader, ...] = ()

    @model_validator(mode="after")
    def _units_fit(self) -> Telemetry:
        for group, units in (("temperatures", ("C",)), ("clocks", ("MHz",)), ("power", ("mW", "W", "%"))):
            for reader in getattr(self, group):
                if reader.kind == "sysfs" and reader.unit not in units:
                    raise ValueError(
                        f"{group}: reader {reader.label!r} has unit {reader.unit}; use {' or '.join(units)}"
                    )
        return self

    def readers(self) -> tuple[Reader, ...]:
        """Every reader, each command once (tegrastats reports temperatures, clocks and power in one stream)."""
        out: list[Reader] = []
        seen: set[tuple[str, ...]] = set()
        for reader in (*self.temperatures, *self.clocks, *self.power):
            if reader.command is not None:
                if reader.command in seen:
                    continue
                seen.add(reader.command)
            out.append(reader)
        return tuple(out)


class PlatformProfile(Strict):
    """What one platform runs and how its health is read."""

    schema_version: Literal[1] = 1
    name: Platform
    description: str = ""
    runtimes: dict[str, tuple[str, ...]] = Field(description="backend name -> default precisions on this platform")
    threads: tuple[int | None, ...] = Field(default=(None,), min_length=1, description="None: the runtime's default")
    telemetry: Telemetry = Telemetry()
    profile_file: Path | None = Field(default=None, exclude=True)

    @field_validator("runtimes")
    @classmethod
    def _known_backends(cls, runtimes: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        if not runtimes:
            raise ValueError("a platform runs at least one backend")
        for name, precisions in runtimes.items():
            if name not in BACKENDS:
                raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
            supported = get_backend(name).precisions
            for precision in precisions:
                if precision not in supported:
                    raise ValueError(
                        f"backend {name!r} does not support precision {precision!r}; supported: {', '.join(supported)}"
                    )
            if not precisions:
                raise ValueError(f"backend {name!r} lists no precision; supported: {', '.join(supported)}")
        return runtimes

    @field_validator("threads")
    @classmethod
    def _positive(cls, threads: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if any(t is not None and t < 1 for t in threads):
            raise ValueError("thread counts must be >= 1 (or null for the runtime's default)")
        return threads


def platforms_dir() -> Path:
    """``$EDGEBENCH_PLATFORMS``, else ./devices/platforms, else the checkout's devices/platforms."""
    named = os.environ.get("EDGEBENCH_PLATFORMS")
    if named:
        return Path(named)
    local = Path.cwd() / "devices" / "platforms"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "devices" / "platforms"


def load_platform(name: str, *, directory: Path | None = None) -> PlatformProfile:
    """The profile of a platform, validated; file:line errors for anything wrong in it."""
    if name not in PLATFORMS:
        raise UnknownNameError("platform", name, PLATFORMS)
    root = directory or platforms_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no profile for platform {name!r}",
            file=path,
            fix=f"add {path.name} under {root} (see the other profiles there), or set EDGEBENCH_PLATFORMS",
        )
    profile = load_model(PlatformProfile, path)
    if profile.name != name:
        raise ConfigError(
            f"profile name {profile.name!r} does not match the file name",
            file=path,
            key="name",
            fix=f"set name: {name}",
        )
    return profile.model_copy(update={"profile_file": path.resolve()})
