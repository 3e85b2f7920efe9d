"""The model catalog: one YAML per model under models/, validated once into frozen records."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .config import Strict, line_of, load_document
from .errors import ConfigError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Normalization(Strict):
    """Pixel values in [0, 1] become (x - mean) / std, per channel (one value applies to all)."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


class InputSpec(Strict):
    name: str = "input"
    shape: tuple[int, ...] = Field(description="batch first, e.g. [1, 3, 224, 224]")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    normalization: Normalization = Normalization()

    @field_validator("shape")
    @classmethod
    def _four_d(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) != 4 or any(d <= 0 for d in v):
            raise ValueError("shape must be 4 positive sizes, batch first, e.g. [1, 3, 224, 224]")
        return v

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])


class Source(Strict):
    """Where the model comes from: a torch factory "pkg.module:fn" with args, or an .onnx file."""

    kind: Literal["torch", "onnx"]
    factory: str | None = None
    args: dict[str, int | float | str | bool] = {}
    path: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Source:
        if self.kind == "torch":
            if not self.factory or not _FACTORY.match(self.factory):
                raise PydanticCustomError(
                    "bad_factory",
                    "a torch source needs a factory",
                    {"at": ("factory",), "fix": 'set factory: "package.module:function"'},
                )
        elif not self.path:
            raise PydanticCustomError(
                "missing_path",
                "an onnx source needs a path",
                {"at": ("path",), "fix": "set path: to the .onnx file (relative to the catalog file)"},
            )
        return self


class DataRef(Strict):
    """A data set from harness.zoo.datasets, by name."""

    dataset: str
    count: int | None = Field(default=None, gt=0)
    seed: int = 0


class Budgets(Strict):
    """Default release budgets for this model; any may be overridden by suites/budgets.yaml."""

    p50_ms: float | None = Field(default=None, gt=0)
    p95_ms: float | None = Field(default=None, gt=0)
    p99_ms: float | None = Field(default=None, gt=0)
    top1_drop_pp: float = 1.0
    top1_agreement: float = Field(default=0.99, ge=0, le=1)
    psnr_db: float = 30.0
    mce: float = Field(default=1.10, gt=0, description="max mCE vs the same run's FP32 reference")


class ModelEntry(Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    pretrained: bool
    note: str = ""
    source: Source
    input: InputSpec
    num_classes: int = Field(gt=0)
    labels: tuple[str, ...] | None = None
    eval: DataRef
    calibration: DataRef | None = None
    input_sizes: tuple[int, ...] = ()
    production: str | None = None
    budgets: Budgets = Budgets()
    catalog_file: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _labels_match(self) -> ModelEntry:
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise PydanticCustomError(
                "labels_mismatch",
                "labels has {count} names but num_classes is {num_classes}",
                {
                    "count": len(self.labels),
                    "num_classes": self.num_classes,
                    "at": ("labels",),
                    "fix": "give one label per class, or correct num_classes",
                },
            )
        return self

    def onnx_path(self) -> Path:
        assert self.source.path is not None and self.catalog_file is not None
        path = Path(self.source.path)
        return path if path.is_absolute() else self.catalog_file.parent / path


def load_entry(path: Path) -> ModelEntry:
    entry, node = load_document(ModelEntry, path)
    if path.stem != entry.name:
        raise ConfigError(
            f"name {entry.name!r} does not match the file name",
            file=path,
            line=line_of(node, ("name",)),
            key="name",
            fix=f"rename the file to {entry.name}.yaml or set name: {path.stem}",
        )
    entry = entry.model_copy(update={"catalog_file": path.resolve()})
    if entry.source.kind == "onnx" and not entry.onnx_path().is_file():
        raise ConfigError(
            f"ONNX file {entry.onnx_path()} not found",
            file=path,
            line=line_of(node, ("source", "path")),
            key="source.path",
            fix="fix the path (a relative path starts at the catalog file's directory)",
        )
    return entry


def load_catalog(directory: Path, pattern: str = "*") -> list[ModelEntry]:
    """Every model in a catalog directory whose name matches the glob, sorted by name."""
    if not directory.is_dir():
        raise ConfigError("model catalog directory not found", file=directory, fix="pass --catalog DIR")
    entries = [load_entry(p) for p in sorted(directory.glob("*.yaml"))]
    chosen = [e for e in entries if fnmatch.fnmatch(e.name, pattern)]
    if not chosen:
        known = ", ".join(e.name for e in entries) or "none"
        raise ConfigError(f"no model matches --models {pattern!r}", file=directory, fix=f"use a glob over: {known}")
    return chosen
