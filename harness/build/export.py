"""torch -> ONNX: the FP32 reference every backend compiles from, checked against torch's outputs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import ModelEntry
from ..errors import BuildError, ConfigError
from .cache import ArtifactCache, file_sha256

log = logging.getLogger(__name__)

OPSET = 18
EXPORT_VERSION = 1  # bump to invalidate every cached export


@dataclass(frozen=True)
class OnnxModel:
    """The FP32 ONNX reference of one model at one input shape."""

    path: Path
    sha256: str
    source_sha256: str
    input_name: str
    input_shape: tuple[int, ...]


def load_factory(entry: ModelEntry) -> Callable[..., Any]:
    """Import the catalog's "pkg.module:fn"; a miss is a ConfigError naming the catalog key."""
    assert entry.source.factory is not None
    module_name, _, attr = entry.source.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r}: {exc}",
            file=entry.catalog_file,
            key="source.factory",
            fix="install the package that provides it, or fix the module path",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"{module_name} has no callable {attr!r}",
            file=entry.catalog_file,
            key="source.factory",
            fix=f"use one of its functions: {', '.join(defined)}" if defined else "name a function the module defines",
        )
    return fn  # type: ignore[no-any-return]


def source_fingerprint(entry: ModelEntry) -> str:
    """Hash of what defines the model: the ONNX file, or the factory module's source and its args."""
    if entry.source.kind == "onnx":
        return file_sha256(entry.onnx_path())
    fn = load_factory(entry)
    try:
        source = inspect.getsource(inspect.getmodule(fn) or fn)
    except (OSError, TypeError):
        source = entry.source.factory or ""
    payload = json.dumps({"factory": entry.source.factory, "args": entry.source.args, "source": source}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _shape_for(entry: ModelEntry, size: int | None) -> tuple[int, ...]:
    shape = list(entry.input.shape)
    if size is not None:
        if entry.input.layout == "NCHW":
            shape[2] = shape[3] = size
        else:
            shape[1] = shape[2] = size
    return tuple(shape)


def _export(model: Any, example: Any, out: Path, input_name: str) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[input_name],
                output_names=["logits"],
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=({0: batch},),
                external_data=False,
            )
        assert program is not None
        program.save(str(out))
    except Exception as exc:  # torch.export rejects some models the TorchScript exporter still handles
        log.info("torch.export-based ONNX export failed (%s); using the TorchScript exporter", exc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(out),
                input_names=[input_name],
                output_names=["logits"],
                dynamo=False,
                opset_version=OPSET,
                dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
            )


def check_onnx(path: Path, input_shape: tuple[int, ...], *, where: Path | None = None) -> str:
    """Validate an ONNX file and that it accepts the catalog's input shape; return its input name."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BuildError(
            f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}",
            fix="re-export the model, or point the catalog at the right file",
        ) from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        message = f"{path} has {len(inputs)} inputs; edgebench benchmarks single-input vision models"
        fix = "point source.path at a model with one image input (export it with the other inputs as constants)"
        if where is not None:  # the catalog's own ONNX file: its entry names it
            raise ConfigError(message, file=where, key="source.path", fix=fix)
        raise BuildError(message, fix=fix)
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(declared) != len(input_shape) or any(
        d is not None and i > 0 and d != s for i, (d, s) in enumerate(zip(declared, input_shape, strict=True))
    ):
        shown = ["?" if d is None else d for d in declared]
        raise ConfigError(
            f"input shape {list(input_shape)} does not match the model's input {shown}",
            file=where,
            key="input.shape",
            fix=f"set input.shape to the model's input, e.g. {[1 if d is None else d for d in declared]}",
        )
    return str(inputs[0].name)


def _compare_with_torch(model: Any, onnx_path: Path, shape: tuple[int, ...], input_name: str) -> float:
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape[1:]), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    got = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).run(None, {input_name: x})[0]
    err = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not np.isfinite(err) or err > 1e-3 * scale:
        raise BuildError(
            f"exported ONNX differs from torch by {err:.3g} (allowed {1e-3 * scale:.3g})",
            fix="check the model for ops the exporter mistranslates (file an issue with the model)",
        )
    return err


def reference_onnx(entry: ModelEntry, *, size: int | None = None, cache: ArtifactCache | None = None) -> OnnxModel:
    """The FP32 ONNX for a catalog entry at its input shape (or a square input ``size``)."""
    cache = cache or ArtifactCache()
    shape = _shape_for(entry, size)
    source_sha = source_fingerprint(entry)
    if entry.source.kind == "onnx":
        path = entry.onnx_path()
        name = check_onnx(path, shape, where=entry.catalog_file)
        return OnnxModel(path, source_sha, source_sha, name, shape)

    def build(tmp: Path) -> Path:
        import torch

        fn = load_factory(entry)
        model = fn(**entry.source.args)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{entry.source.factory} returned {type(model).__name__}, not a torch.nn.Module",
                file=entry.catalog_file,
                key="source.factory",
                fix="point source.factory at a function that returns a torch.nn.Module (it is called with source.args)",
            )
        model.eval()
        out = tmp / f"{entry.name}.onnx"
        example = torch.zeros(shape, dtype=torch.float32)
        _export(model, example, out, entry.input.name)
        check_onnx(out, shape)
        err = _compare_with_torch(model, out, shape, entry.input.name)
        log.info("exported %s at %s to ONNX (max abs diff vs torch %.2e)", entry.name, shape, err)
        return out

    parts = {"source": source_sha, "shape": shape, "opset": OPSET, "version": EXPORT_VERSION}
    path, _ = cache.get_or_build("onnx", parts, build)
    return OnnxModel(path, file_sha256(path), source_sha, entry.input.name, shape)
