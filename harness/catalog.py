"""The model catalog: one YAML per model under models/, validated once into frozen records."""

from __future__ import annotations

import ast
import fnmatch
import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, PrivateAttr, StrictBool, StrictFloat, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .config import Strict, line_of, load_document
from .errors import ConfigError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

PositiveInt = Annotated[StrictInt, Field(gt=0)]


class Normalization(Strict):
    """Pixel values in [0, 1] become (x - mean) / std, per channel (one value applies to all)."""

    mean: tuple[StrictFloat, ...] = (0.0,)
    std: tuple[StrictFloat, ...] = (1.0,)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for index, s in enumerate(v):
            if s <= 0:
                raise PydanticCustomError(
                    "std_not_positive",
                    "every std must be > 0, got {value}",
                    {
                        "value": s,
                        "at": (index,),
                        "fix": "write the positive spread of each channel's pixels in [0, 1], e.g. "
                        "[0.229, 0.224, 0.225] (ImageNet), or one value for all channels",
                    },
                )
        return v


class InputSpec(Strict):
    name: str = "input"
    shape: tuple[StrictInt, ...] = Field(description="batch first, e.g. [1, 3, 224, 224]")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    normalization: Normalization = Normalization()

    @field_validator("shape")
    @classmethod
    def _four_d(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) != 4 or any(d <= 0 for d in v):
            raise PydanticCustomError(
                "bad_shape",
                "shape must be 4 positive sizes, got {shape}",
                {
                    "shape": list(v),
                    "fix": "write [batch, channels, height, width] for NCHW or [batch, height, width, channels] "
                    "for NHWC, e.g. [1, 3, 224, 224]",
                },
            )
        return v

    @model_validator(mode="after")
    def _normalization_per_channel(self) -> InputSpec:
        # Checked here, not where it is used: the host used to resize the values to fit (so calibration and
        # the FP32 reference normalised otherwise than the catalog says) and the device failed on a reshape.
        channels = self.channels
        for key in ("mean", "std"):
            values = getattr(self.normalization, key)
            if len(values) in (1, channels):
                continue
            plural = "" if channels == 1 else "s"
            write = "write one value" if channels == 1 else f"write one value (used for every channel) or {channels}"
            raise PydanticCustomError(
                "normalization_channels",
                "has {count} values {values} but the input has {channels} channel{plural} "
                "(shape {shape}, layout {layout})",
                {
                    "count": len(values),
                    "values": list(values),
                    "channels": channels,
                    "plural": plural,
                    "shape": list(self.shape),
                    "layout": self.layout,
                    "at": ("normalization", key),
                    "fix": f"{write}; or correct input.shape and input.layout if the model takes "
                    f"{len(values)} channels",
                },
            )
        return self

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
            missing = _missing_factory(self.factory)
            if missing is not None:
                raise PydanticCustomError(
                    "no_factory", "{message}", {"message": missing[0], "at": ("factory",), "fix": missing[1]}
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
    count: StrictInt | None = Field(default=None, gt=0)
    seed: StrictInt = 0

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        from .zoo.datasets import DATASETS

        if name not in DATASETS:
            raise PydanticCustomError(
                "unknown_dataset",
                "unknown data set",
                {"fix": f"use one of: {', '.join(sorted(DATASETS))} (harness/zoo/datasets.py)"},
            )
        return name


class Budgets(Strict):
    """Release budgets for this model (a missing one is not checked)."""

    p50_ms: StrictFloat | None = Field(default=None, gt=0)
    p95_ms: StrictFloat | None = Field(default=None, gt=0)
    p99_ms: StrictFloat | None = Field(default=None, gt=0)
    top1_drop_pp: StrictFloat = 1.0
    top1_agreement: StrictFloat = Field(default=0.99, ge=0, le=1)
    psnr_db: StrictFloat = 30.0
    mce: StrictFloat = Field(default=1.10, gt=0, description="max mCE vs the same run's FP32 reference")
    # Against the production model this one would replace (``production:``); unset means not gated.
    production_top1_drop_pp: StrictFloat | None = Field(
        default=None, ge=0, description="max pp the candidate's top-1 may fall below the production model's"
    )
    production_p99_ratio: StrictFloat | None = Field(
        default=None, gt=0, description="max candidate P99 as a multiple of the production model's P99"
    )

    @property
    def production_gated(self) -> tuple[str, ...]:
        """The budgets set against the production model, by name (empty: the comparison is not gated)."""
        names = ("production_top1_drop_pp", "production_p99_ratio")
        return tuple(name for name in names if getattr(self, name) is not None)


class ModelEntry(Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    pretrained: StrictBool
    note: str = ""
    source: Source
    input: InputSpec
    num_classes: StrictInt = Field(gt=0)
    labels: tuple[str, ...] | None = None
    eval: DataRef
    calibration: DataRef | None = None
    input_sizes: tuple[PositiveInt, ...] = ()
    production: str | None = None
    budgets: Budgets = Budgets()
    # Bookkeeping, not input: set by load_entry, so a catalog_file: key in the YAML is an unknown key.
    _catalog_file: Path | None = PrivateAttr(default=None)

    @property
    def catalog_file(self) -> Path | None:
        """The file this entry was read from, if it was read from one."""
        return self._catalog_file

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

    @model_validator(mode="after")
    def _production_budgets_need_production(self) -> ModelEntry:
        if self.budgets.production_gated and not self.production:
            key = self.budgets.production_gated[0]
            raise PydanticCustomError(
                "production_budget_alone",
                "set to {value}, but production: names no model to compare with",
                {
                    "value": getattr(self.budgets, key),
                    "at": ("budgets", key),
                    "fix": "name the model this one would replace (production: <name>), or drop the budget",
                },
            )
        return self

    def onnx_path(self) -> Path:
        assert self.source.path is not None and self.catalog_file is not None
        path = Path(self.source.path)
        return path if path.is_absolute() else self.catalog_file.parent / path


def _read_entry(path: Path) -> tuple[ModelEntry, yaml.Node | None]:
    entry, node = load_document(ModelEntry, path)
    if path.stem != entry.name:
        raise ConfigError(
            f"name {entry.name!r} does not match the file name",
            file=path,
            line=line_of(node, ("name",)),
            key="name",
            fix=f"rename the file to {entry.name}.yaml or set name: {path.stem}",
        )
    entry._catalog_file = path.resolve()
    if entry.source.kind == "onnx" and not entry.onnx_path().is_file():
        raise ConfigError(
            f"ONNX file {entry.onnx_path()} not found",
            file=path,
            line=line_of(node, ("source", "path")),
            key="source.path",
            fix="fix the path (a relative path starts at the catalog file's directory)",
        )
    return entry, node


def load_entry(path: Path) -> ModelEntry:
    """One catalog file, validated; its ``production`` link is checked only with the whole catalog."""
    return _read_entry(path)[0]


def _check_production(loaded: list[tuple[Path, ModelEntry, yaml.Node | None]]) -> None:
    """Every ``production:`` names another model of the catalog, evaluated alike, and the links end.

    Checked here, not at job time: a model that is its own production made the run recurse forever,
    and a missing one failed only after the candidate had been measured.
    """
    by_name = {entry.name: entry for _, entry, _ in loaded}
    for path, entry, node in loaded:
        target = entry.production
        if target is None:
            continue
        line = line_of(node, ("production",))
        others = ", ".join(name for name in by_name if name != entry.name) or "none"
        problem: tuple[str, str] | None = None
        production = by_name.get(target)
        if target == entry.name:
            problem = (
                f"a model cannot be its own production model (got {target!r})",
                f"name the model this one would replace (one of: {others}), or write production: null",
            )
        elif production is None:
            problem = (
                f"production model {target!r} is not in the catalog",
                f"use one of: {others}, or write production: null",
            )
        elif production.eval != entry.eval or production.num_classes != entry.num_classes:
            problem = (
                f"production model {target!r} is not evaluated on the same data (its eval or num_classes differs)",
                f"give {entry.name} and {target} the same eval: block and num_classes",
            )
        else:
            chain = [entry.name]
            current: str | None = target
            while current is not None and current in by_name:
                if current == entry.name:
                    problem = (
                        f"production links form a cycle: {' -> '.join([*chain, current])} (got {target!r})",
                        "a production model is the one already shipped: write production: null in one of them",
                    )
                    break
                if current in chain:  # a cycle further on: its own members report it
                    break
                chain.append(current)
                current = by_name[current].production
        if problem is not None:
            raise ConfigError(problem[0], file=path, line=line, key="production", fix=problem[1])


def load_catalog(directory: Path, pattern: str = "*") -> list[ModelEntry]:
    """Every model in a catalog directory whose name matches the glob, sorted by name.

    The whole catalog is validated whatever the glob picks, ``production`` links included.
    """
    if not directory.is_dir():
        raise ConfigError("model catalog directory not found", file=directory, fix="pass --catalog DIR")
    strays = sorted(p for p in directory.glob("*.yml") if not p.name.startswith("."))
    if strays:
        raise ConfigError(
            "catalog files end in .yaml: this one would be ignored",
            file=strays[0],
            fix=f"rename it to {strays[0].stem}.yaml",
        )
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(
            "the catalog directory has no .yaml model files",
            file=directory,
            fix="pass --catalog with the directory of your models/<name>.yaml files (README: Adding a model)",
        )
    loaded = [(p, *_read_entry(p)) for p in files]
    _check_production(loaded)
    entries = [entry for _, entry, _ in loaded]
    chosen = [e for e in entries if fnmatch.fnmatch(e.name, pattern)]
    if not chosen:
        known = ", ".join(e.name for e in entries)
        raise ConfigError(f"no model matches --models {pattern!r}", file=directory, fix=f"use a glob over: {known}")
    return chosen


# --- factories, checked without importing them -------------------------------------------------------


class _NoModule(Exception):
    """Import would not find this module (nor, for a dotted name, one of its packages)."""


def _module_file(module_name: str) -> Path | None:
    """The source file of a module, found the way import would, without running any package code.

    None when the module exists but its source cannot be read here (an extension, a zip); _NoModule
    when import would not find it at all.
    """
    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            raise _NoModule
        name = ".".join(parts[: depth + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    if spec is None:
        raise _NoModule
    if not isinstance(spec.loader, importlib.machinery.SourceFileLoader) or spec.origin is None:
        return None
    return Path(spec.origin)


def _module_names(tree: ast.Module) -> set[str] | None:
    """Names the module binds at its top level, or None if it could supply others (``*`` import, __getattr__)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            return None
        if isinstance(node, ast.Global):
            names.update(node.names)
        if isinstance(node, ast.Name) and node.id in ("globals", "vars"):  # may bind any name
            return None
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop()
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in stmt.names)
            continue
        for child in ast.walk(stmt):  # assignments, for/with targets and walruses, inside if/try too
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                names.add(child.id)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
    return None if "__getattr__" in names else names


def _missing_factory(factory: str) -> tuple[str, str] | None:
    """(message, fix) when "pkg.module:fn" surely names nothing; None when it exists or cannot be told here.

    The factory's module usually imports torch, so it is read, not imported: only a module whose source
    is found, parses, and binds no such name counts as a miss, besides a module import would not find.
    Anything else is left to the build.
    """
    module_name, _, attr = factory.partition(":")
    module = sys.modules.get(module_name)
    if module is not None:
        if callable(getattr(module, attr, None)):
            return None
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
    else:
        try:
            path = _module_file(module_name)
        except _NoModule:
            return f"no module named {module_name!r}", "install the package that provides it, or fix the module path"
        if path is None:
            return None
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            return None
        names = _module_names(tree)
        if names is None or attr in names:
            return None
        defined = sorted(
            stmt.name
            for stmt in tree.body
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) and not stmt.name.startswith("_")
        )
    fix = f"use one of its functions: {', '.join(defined)}" if defined else "name a function the module defines"
    return f"{module_name} has no callable '{attr}'", fix
