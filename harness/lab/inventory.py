"""The device inventory: devices/*.yaml validated once into frozen records."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictFloat, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..config import Strict, load_model
from ..errors import ConfigError

Platform = Literal["jetson-orin", "coral-devboard", "intel-nuc", "snapdragon-linux", "mac", "generic-linux"]
OptionValue = bool | int | float | str


def _check_backend_options(options: dict[str, dict[str, OptionValue]]) -> dict[str, dict[str, OptionValue]]:
    """Backend names and option names against the backend registry (imported only when options are set)."""
    if not options:
        return options
    from ..build.backends import BACKENDS, get_backend

    for name, values in options.items():
        if name not in BACKENDS:
            raise PydanticCustomError(
                "unknown_backend",
                "unknown backend '{name}'",
                {"name": name, "at": (name,), "fix": f"use one of: {', '.join(BACKENDS)}"},
            )
        backend = get_backend(name)
        known = backend.build_options + backend.run_options
        for key in values:
            if key not in known:
                raise PydanticCustomError(
                    "unknown_option",
                    "{backend} has no option '{key}'",
                    {"backend": name, "key": key, "at": (name, key), "fix": f"use one of: {', '.join(known)}"},
                )
    return options


def _check_runtimes(runtimes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Runtime names against the runner's registry: a misspelt one would silently plan no job."""
    if runtimes is None:
        return runtimes
    from ..agent.runtimes import known

    names = known()
    for index, name in enumerate(runtimes):
        if name in names:
            if name in runtimes[:index]:
                raise PydanticCustomError(
                    "duplicate_runtime",
                    "runtime '{name}' is listed twice",
                    {"name": name, "at": (index,), "fix": "list each runtime once"},
                )
            continue
        fix = f"use one of: {', '.join(names)}"
        from ..build.backends import BACKENDS, get_backend

        if name in BACKENDS:  # a backend name (edgetpu, qnn): say which runner runtime carries it
            runtime = get_backend(name).runtime
            fix = f"{name} variants run on the {runtime} runtime: list {runtime} (runtimes: {', '.join(names)})"
        raise PydanticCustomError(
            "unknown_runtime", "unknown runtime '{name}'", {"name": name, "at": (index,), "fix": fix}
        )
    return runtimes


class Measure(Strict):
    """The lab's ``measure:`` block: how long and how carefully every job measures; unset keys keep the default.

    The defaults are ``harness.pipeline.MeasureSettings``'s. A nightly lab that wants sustained numbers
    (a board or VM that slows after some seconds of load) raises ``min_duration_s``; a release gate
    that wants a tighter P99 lowers ``max_half_width`` and raises ``max_duration_s``.
    """

    min_iterations: StrictInt | None = Field(default=None, ge=1, description="timed calls before the rule may stop")
    min_duration_s: StrictFloat | None = Field(default=None, ge=0, description="seconds before the rule may stop")
    max_duration_s: StrictFloat | None = Field(default=None, gt=0, description="time cap of the timed loop")
    max_half_width: StrictFloat | None = Field(default=None, gt=0, lt=1, description="target half-width / estimate")
    iterations: StrictInt | None = Field(default=None, ge=1, description="a fixed count instead of the stop rule")
    warmup_window: StrictInt | None = Field(default=None, ge=1)
    warmup_max_iterations: StrictInt | None = Field(default=None, ge=1)
    warmup_max_duration_s: StrictFloat | None = Field(default=None, gt=0, description="warm-up time cap")
    batch: StrictInt | None = Field(default=None, ge=1, description="rows of the latency input per timed call")
    repeats: StrictInt | None = Field(default=None, ge=1, description="runner processes per latency job: 1, or 3+")
    stop_on: tuple[str, ...] | None = Field(default=None, description="percentiles the stop rule pins: p50..p99")
    eval_batch: StrictInt | None = Field(default=None, ge=1)
    thermal_interval_s: StrictFloat | None = Field(default=None, ge=0, description="0 turns the sampler off")
    calibration_reps: StrictInt | None = Field(default=None, ge=0, description="0 turns the calibration off")
    throttle_retries: StrictInt | None = Field(default=None, ge=0, le=5)
    cooldown_s: StrictFloat | None = Field(default=None, ge=0)

    def overrides(self) -> dict[str, Any]:
        """The keys the lab sets, as MeasureSettings field values."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Device(Strict):
    """One device: how to reach it, its Python and runtimes, and how to run jobs there."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    platform: Platform
    transport: Literal["local", "ssh"] = "ssh"
    host: str | None = Field(default=None, description="address, or a Host alias from ~/.ssh/config")
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity: str | None = Field(default=None, description="private key file")
    known_hosts: str | None = Field(
        default=None, description="known_hosts file (the global one is read too); default ~/.ssh/known_hosts"
    )
    ssh_config: str | None = Field(default=None, description="ssh config file; default ~/.ssh/config")
    connect_timeout_s: StrictFloat = Field(default=10.0, gt=0)
    keepalive_s: StrictFloat = Field(default=15.0, gt=0, description="SSH keepalive interval")
    keepalive_count: StrictInt = Field(
        default=3, ge=1, description="unanswered keepalives (keepalive_s apart) before the device counts as gone"
    )
    python: str | None = Field(default=None, description="absolute path of the device's python3")
    runtimes: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    env: dict[str, str] = {}
    setup: tuple[str, ...] = ()
    cache_dir: str = "~/.cache/edgebench"
    cache_max_mb: StrictInt = Field(default=4096, gt=0)
    cache_max_age_days: StrictFloat = Field(default=30.0, gt=0)
    threads: StrictInt | None = Field(default=None, gt=0)
    cpus: tuple[StrictInt, ...] | None = Field(default=None, min_length=1, description="pin the runner to these CPUs")
    options: dict[str, dict[str, OptionValue]] = Field(
        default={}, description="per backend: build and run options of every variant on this device"
    )
    job_timeout_s: StrictFloat = Field(default=900.0, gt=0)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise PydanticCustomError(
                    "env_name",
                    "environment variable name '{name}' is not valid (letters, digits, _)",
                    {
                        "name": name,
                        "at": (name,),
                        "fix": "use letters, digits and _ only, not starting with a digit, e.g. LD_LIBRARY_PATH",
                    },
                )
        return env

    @field_validator("python")
    @classmethod
    def _absolute_python(cls, python: str | None) -> str | None:
        # The runner is started without a login shell: no PATH lookup, no ~ expansion.
        if python is not None and not python.startswith("/"):
            raise PydanticCustomError(
                "relative_python",
                "python must be an absolute path: no login shell is started to search PATH",
                {
                    "fix": "write the interpreter's full path, e.g. /usr/bin/python3 ('command -v python3' on the "
                    "device prints it)",
                },
            )
        return python

    _runtimes = field_validator("runtimes")(_check_runtimes)

    @field_validator("cpus")
    @classmethod
    def _cpu_ids(cls, cpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if cpus is not None and (any(c < 0 for c in cpus) or len(set(cpus)) != len(cpus)):
            raise PydanticCustomError(
                "cpu_ids",
                "CPU ids must be distinct and >= 0, got {cpus}",
                {"cpus": list(cpus), "fix": "list each CPU id once, e.g. [0, 1]"},
            )
        return cpus

    _options = field_validator("options")(_check_backend_options)

    def backend_options(self, backend: str) -> tuple[tuple[str, OptionValue], ...]:
        """This device's options for a backend, in the sorted, hashable form a Variant carries."""
        return tuple(sorted(self.options.get(backend, {}).items()))

    @model_validator(mode="after")
    def _reachable(self) -> Device:
        if self.transport == "ssh" and not self.host:
            raise PydanticCustomError(
                "missing_host",
                "an ssh device needs a host",
                {"at": ("host",), "fix": "add host: (an address or a Host alias from ~/.ssh/config)"},
            )
        return self

    @property
    def python_path(self) -> str:
        """The interpreter that runs the runner; for the local device, this very interpreter."""
        if self.python:
            return self.python
        return sys.executable if self.transport == "local" else "python3"


class Lab(Strict):
    schema_version: Literal[1] = 1
    name: str = "lab"
    measure: Measure = Measure()
    devices: tuple[Device, ...] = Field(min_length=1)
    # Bookkeeping, not input: set by load_lab, so a lab_file: key in the YAML is an unknown key.
    _lab_file: Path | None = PrivateAttr(default=None)

    @property
    def lab_file(self) -> Path | None:
        """The file this lab was read from, if it was read from one."""
        return self._lab_file

    @model_validator(mode="after")
    def _unique(self) -> Lab:
        seen: set[str] = set()
        for index, device in enumerate(self.devices):
            if device.name in seen:
                raise PydanticCustomError(
                    "duplicate_device",
                    "device name '{name}' appears twice; names must be unique",
                    {"name": device.name, "at": ("devices", index, "name"), "fix": "rename one of the two devices"},
                )
            seen.add(device.name)
        return self

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(
            f"no device named {name!r}",
            file=self.lab_file,
            fix=f"use one of: {', '.join(d.name for d in self.devices)}",
        )


def load_lab(path: Path) -> Lab:
    lab = load_model(Lab, path)
    lab._lab_file = path.resolve()
    return lab
