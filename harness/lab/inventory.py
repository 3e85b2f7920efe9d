"""The device inventory: devices/*.yaml validated once into frozen records."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..config import Strict, load_model
from ..errors import ConfigError

Platform = Literal["jetson-orin", "coral-devboard", "intel-nuc", "snapdragon-linux", "mac", "generic-linux"]


class Device(Strict):
    """One device: how to reach it, its Python and runtimes, and how to run jobs there."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    platform: Platform
    transport: Literal["local", "ssh"] = "ssh"
    host: str | None = Field(default=None, description="address, or a Host alias from ~/.ssh/config")
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity: str | None = Field(default=None, description="private key file")
    known_hosts: str | None = Field(default=None, description="known_hosts file; default ~/.ssh/known_hosts")
    ssh_config: str | None = Field(default=None, description="ssh config file; default ~/.ssh/config")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_s: float = Field(default=15.0, gt=0, description="SSH keepalive interval")
    python: str | None = Field(default=None, description="absolute path of the device's python3")
    runtimes: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    env: dict[str, str] = {}
    setup: tuple[str, ...] = ()
    cache_dir: str = "~/.cache/edgebench"
    cache_max_mb: int = Field(default=4096, gt=0)
    cache_max_age_days: float = Field(default=30.0, gt=0)
    threads: int | None = Field(default=None, gt=0)
    job_timeout_s: float = Field(default=900.0, gt=0)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"environment variable name {name!r} is not valid (letters, digits, _)")
        return env

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
    devices: tuple[Device, ...] = Field(min_length=1)
    lab_file: Path | None = Field(default=None, exclude=True)

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
    return lab.model_copy(update={"lab_file": path.resolve()})
