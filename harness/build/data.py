"""Input files for the device: the latency input and eval sets as content-addressed uint8 npz.

Images travel as uint8 pixels (what a camera delivers, and a quarter of float32's size); the runner
normalises them with the catalog's mean and std outside the timed region.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import DataRef, ModelEntry
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
    """uint8 pixels -> the model's float input, exactly as the runner does it."""
    x = images_u8.astype(np.float32) / 255.0
    c = x.shape[1]
    mean = np.resize(np.asarray(entry.input.normalization.mean, np.float32), c).reshape(1, c, 1, 1)
    std = np.resize(np.asarray(entry.input.normalization.std, np.float32), c).reshape(1, c, 1, 1)
    return ((x - mean) / std).astype(np.float32)


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


def load_ref(ref: DataRef, shape: tuple[int, ...]) -> LabeledImages:
    """A catalog data reference at a model input shape (N, C, H, W); generated once per process."""
    return _load_cached(ref.dataset, ref.count, ref.seed, (shape[1], shape[2], shape[3]))


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, count: int | None, seed: int, shape: tuple[int, int, int]) -> LabeledImages:
    data = load_dataset(name, count=count, seed=seed, shape=shape)
    data.images.flags.writeable = False  # shared between callers: nobody may change it in place
    return data


def eval_file(entry: ModelEntry, shape: tuple[int, ...]) -> DataFile:
    data = load_ref(entry.eval, shape)
    written = write_npz({"clean": to_uint8(data.images)})
    return DataFile(written.path, written.sha256, data.labels)


def latency_file(entry: ModelEntry, shape: tuple[int, ...]) -> DataFile:
    """One input image for the timed loop: the first eval image."""
    data = load_ref(entry.eval, shape)
    return write_npz({"latency": to_uint8(data.images[:1])})


def calibration_inputs(entry: ModelEntry, shape: tuple[int, ...]) -> np.ndarray | None:
    if entry.calibration is None:
        return None
    return normalise(to_uint8(load_ref(entry.calibration, shape).images), entry)


def corrupted_eval_file(entry: ModelEntry, shape: tuple[int, ...], *, seed: int = 0) -> DataFile:
    """The eval set under every corruption and severity, one npz key per ``<corruption>-<severity>``.

    Cached by content: the clean images, the corruption code and the seed name the file, so a second
    run (or a second variant) reuses it.
    """
    import inspect

    from ..measure import corruptions

    data = load_ref(entry.eval, shape)
    clean = to_uint8(data.images)
    code = hashlib.sha256(inspect.getsource(corruptions).encode()).hexdigest()
    content = hashlib.sha256(clean.tobytes() + str(clean.shape).encode()).hexdigest()
    key = hashlib.sha256(f"{content}:{code}:{seed}".encode()).hexdigest()[:32]
    path = cache_dir() / "data" / f"corrupt-{key}.npz"
    if not path.exists():
        pixels = clean.astype(np.float32).transpose(0, 2, 3, 1) / 255.0  # NCHW -> NHWC in [0, 1]
        arrays = {"clean": clean}
        for name in corruptions.ALL_CORRUPTIONS:
            for severity in corruptions.SEVERITIES:
                out = corruptions.corrupt_batch(pixels, name, severity, seed)
                arrays[corruption_key(name, severity)] = to_uint8(out).transpose(0, 3, 1, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return DataFile(path, _file_sha256(path), data.labels)


def corruption_key(name: str, severity: int) -> str:
    return f"{name}-{severity}"
