"""Input files for the device: the latency input and eval sets as content-addressed uint8 npz.

Images travel as uint8 pixels (what a camera delivers, and a quarter of float32's size) in the model's
layout; the runner normalises them with the catalog's mean and std outside the timed region. The data
sets make NCHW pixels from the entry's channels and size; an NHWC model's are transposed once, at the end.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import DataRef, ModelEntry
from ..errors import ConfigError
from ..paths import cache_dir
from ..zoo.datasets import LabeledImages, load_dataset


@dataclass(frozen=True)
class DataFile:
    """An npz on the host, named by the sha256 of its content."""

    path: Path
    sha256: str
    labels: np.ndarray | None = None


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def normalise(images_u8: np.ndarray, entry: ModelEntry) -> np.ndarray:
    """uint8 pixels in the model's layout -> its float input, exactly as the runner does it."""
    x = images_u8.astype(np.float32) / 255.0
    axis = 1 if entry.input.layout == "NCHW" else 3
    shape = [1, 1, 1, 1]
    shape[axis] = x.shape[axis]
    mean = _per_channel(entry, "mean", x.shape[axis]).reshape(shape)
    std = _per_channel(entry, "std", x.shape[axis]).reshape(shape)
    out: np.ndarray = (x - mean) / std
    return out.astype(np.float32)


def _per_channel(entry: ModelEntry, key: str, channels: int) -> np.ndarray:
    """The catalog's mean or std, one value per channel; never resized to fit (the catalog load checks the count)."""
    values = np.asarray(getattr(entry.input.normalization, key), np.float32)
    if values.size == 1:
        return np.repeat(values, channels)
    if values.size != channels:
        raise ConfigError(
            f"has {values.size} values but the images have {channels} channels (layout {entry.input.layout})",
            file=entry.catalog_file,
            key=f"input.normalization.{key}",
            fix=f"write one value (used for every channel) or {channels}, one per channel",
        )
    return values


def chw(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """(channels, height, width) of a model input shape in its layout."""
    if layout == "NCHW":
        return (shape[1], shape[2], shape[3])
    return (shape[3], shape[1], shape[2])


def in_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """NCHW images in the model's layout."""
    return images if layout == "NCHW" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def write_npz(arrays: dict[str, np.ndarray], directory: Path | None = None) -> DataFile:
    """Save arrays to ``<cache>/data/<sha256>.npz`` (deterministic bytes, so equal data dedupes)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(str(arrays[key].dtype).encode() + str(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    content_id = digest.hexdigest()
    root = directory or cache_dir() / "data"
    path = root / f"{content_id[:32]}.npz"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return DataFile(path, _file_sha256(path))


def _file_sha256(path: Path) -> str:
    from .cache import file_sha256

    return file_sha256(path)


def load_ref(ref: DataRef, shape: tuple[int, ...], layout: str) -> LabeledImages:
    """A catalog data reference for a model input shape in ``layout``, as NCHW pixels; generated once per process."""
    return _load_cached(ref.dataset, ref.count, ref.seed, chw(shape, layout))


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, count: int | None, seed: int, shape: tuple[int, int, int]) -> LabeledImages:
    data = load_dataset(name, count=count, seed=seed, shape=shape)
    data.images.flags.writeable = False  # shared between callers: nobody may change it in place
    return data


def eval_file(entry: ModelEntry, shape: tuple[int, ...]) -> DataFile:
    data = load_ref(entry.eval, shape, entry.input.layout)
    written = write_npz({"clean": to_uint8(in_layout(data.images, entry.input.layout))})
    return DataFile(written.path, written.sha256, data.labels)


def latency_file(entry: ModelEntry, shape: tuple[int, ...]) -> DataFile:
    """One input image for the timed loop: the first eval image."""
    data = load_ref(entry.eval, shape, entry.input.layout)
    return write_npz({"latency": to_uint8(in_layout(data.images[:1], entry.input.layout))})


def calibration_inputs(entry: ModelEntry, shape: tuple[int, ...]) -> np.ndarray | None:
    if entry.calibration is None:
        return None
    images = load_ref(entry.calibration, shape, entry.input.layout).images
    return normalise(to_uint8(in_layout(images, entry.input.layout)), entry)


def corrupted_eval_file(entry: ModelEntry, shape: tuple[int, ...], *, seed: int = 0) -> DataFile:
    """The eval set under every corruption and severity, one npz key per ``<corruption>-<severity>``.

    Cached by content: the clean images, the corruption code and the seed name the file, so a second
    run (or a second variant) reuses it.
    """
    import inspect

    from ..measure import corruptions

    layout = entry.input.layout
    data = load_ref(entry.eval, shape, layout)
    clean_nchw = to_uint8(data.images)
    clean = in_layout(clean_nchw, layout)
    code = hashlib.sha256(inspect.getsource(corruptions).encode()).hexdigest()
    content = hashlib.sha256(clean.tobytes() + str(clean.shape).encode()).hexdigest()
    key = hashlib.sha256(f"{content}:{code}:{seed}".encode()).hexdigest()[:32]
    path = cache_dir() / "data" / f"corrupt-{key}.npz"
    if not path.exists():
        pixels = clean_nchw.astype(np.float32).transpose(0, 2, 3, 1) / 255.0  # the corruptions take NHWC in [0, 1]
        arrays = {"clean": clean}
        for name in corruptions.ALL_CORRUPTIONS:
            for severity in corruptions.SEVERITIES:
                out = to_uint8(corruptions.corrupt_batch(pixels, name, severity, seed))
                arrays[corruption_key(name, severity)] = out.transpose(0, 3, 1, 2) if layout == "NCHW" else out
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return DataFile(path, _file_sha256(path), data.labels)


def corruption_key(name: str, severity: int) -> str:
    return f"{name}-{severity}"
