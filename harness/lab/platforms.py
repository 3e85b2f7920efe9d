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

from pydantic import Field, PrivateAttr, StrictBool, StrictFloat, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

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
    scale: StrictFloat = Field(default=1.0, gt=0, description="raw value x scale = value in unit")
    command: tuple[str, ...] | None = None
    parser: Literal["tegrastats", "powermetrics"] | None = None
    needs_root: StrictBool = False

    @model_validator(mode="after")
    def _complete(self) -> Reader:
        if self.kind == "sysfs":
            if not self.path or not self.path.startswith("/"):
                raise PydanticCustomError(
                    "sysfs_path",
                    "a sysfs reader needs an absolute path",
                    {"at": ("path",), "fix": 'set path: "/sys/class/thermal/thermal_zone*/temp" or the like'},
                )
            if self.command or self.parser:
                raise PydanticCustomError(
                    "sysfs_command",
                    "a sysfs reader takes path: (and name_file:, scale:), not command: or parser:",
                    {"fix": "remove command: and parser:, or set kind: command"},
                )
        elif not self.command or not self.parser:
            raise PydanticCustomError(
                "command_reader",
                "a command reader needs command: [argv...] and parser:",
                {"fix": "add command: [tegrastats, --interval, '500'] and parser: tegrastats (or powermetrics)"},
            )
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
            for index, reader in enumerate(getattr(self, group)):
                if reader.kind == "sysfs" and reader.unit not in units:
                    raise PydanticCustomError(
                        "reader_unit",
                        "reader '{label}' measures {unit}, not a unit of {group}",
                        {
                            "label": reader.label,
                            "unit": reader.unit,
                            "group": group,
                            "at": (group, index, "unit"),
                            "fix": f"use unit: {' or '.join(units)}, or move the reader to the group it measures",
                        },
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
    threads: tuple[StrictInt | None, ...] = Field(
        default=(None,), min_length=1, description="None: the runtime's default"
    )
    telemetry: Telemetry = Telemetry()
    # Bookkeeping, not input: set by load_platform, so a profile_file: key in the YAML is an unknown key.
    _profile_file: Path | None = PrivateAttr(default=None)

    @property
    def profile_file(self) -> Path | None:
        """The file this profile was read from, if it was read from one."""
        return self._profile_file

    @field_validator("runtimes")
    @classmethod
    def _known_backends(cls, runtimes: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        known = ", ".join(sorted(BACKENDS))
        if not runtimes:
            raise PydanticCustomError(
                "no_backend", "a platform runs at least one backend", {"fix": f"add e.g. onnxruntime: [fp32] ({known})"}
            )
        for name, precisions in runtimes.items():
            if name not in BACKENDS:
                raise PydanticCustomError(
                    "unknown_backend",
                    "unknown backend '{name}'; known: {known}",
                    {"name": name, "known": known, "at": (name,), "fix": "name one of the known backends"},
                )
            known_precisions = get_backend(name).precisions
            supported = ", ".join(known_precisions)
            for precision in precisions:
                if precision not in known_precisions:
                    raise PydanticCustomError(
                        "unknown_precision",
                        "backend '{name}' does not support precision '{precision}'; supported: {supported}",
                        {
                            "name": name,
                            "precision": precision,
                            "supported": supported,
                            "fix": f"list only precisions {name} supports",
                        },
                    )
            if not precisions:
                raise PydanticCustomError(
                    "no_precision",
                    "backend '{name}' lists no precision",
                    {"name": name, "at": (name,), "fix": f"list one or more of: {supported}"},
                )
        return runtimes

    @field_validator("threads")
    @classmethod
    def _positive(cls, threads: tuple[int | None, ...]) -> tuple[int | None, ...]:
        for index, t in enumerate(threads):
            if t is not None and t < 1:
                raise PydanticCustomError(
                    "threads",
                    "thread counts must be >= 1, got {t}",
                    {"t": t, "at": (index,), "fix": "use a count >= 1, or null for the runtime's default"},
                )
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
    profile._profile_file = path.resolve()
    return profile
